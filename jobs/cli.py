"""`ddnm-batch`: run | demo | status | report | tasks | models.

Exit codes: 0 every image ok; 3 the job finished and some images failed (each one has a row naming
the file and the reason); 1 the job could not run (bad spec, unreachable storage, refused output),
with one line on stderr naming the problem.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from jobs.errors import EXIT_ERROR, EXIT_FAILED_IMAGES, EXIT_INTERRUPTED, EXIT_OK, JobError
from jobs.spec import JobSpec, parse_assignments

ASSETS = Path(__file__).resolve().parent / "assets"


def _log(msg: str) -> None:
    print(f"[ddnm-batch] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- parser

def _choices(field: str) -> list[str]:
    """The values a Literal field of the spec takes (the spec is where they are defined)."""
    return list(typing.get_args(JobSpec.model_fields[field].annotation))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddnm-batch", description="Zero-shot image restoration (DDNM) as a "
                                "distributed, resumable batch job over object storage.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a job; flags override the job file")
    r.add_argument("job", nargs="?", help="a YAML job file (optional)")
    r.add_argument("--input", help="folder/prefix URL (local, s3://, gs://) or a txt/csv/parquet manifest")
    r.add_argument("--output", help="output folder/prefix URL")
    r.add_argument("--task", help="task name (see `ddnm-batch tasks`) or pkg.module:OperatorClass")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="a task setting, repeatable")
    r.add_argument("--mode", choices=_choices("mode"))
    r.add_argument("--mask-url", help="a prefix holding one mask per image under the same key")
    r.add_argument("--model", help="model name (see `ddnm-batch models`)")
    r.add_argument("--checkpoint", help="checkpoint path/URL, or 'random' (random weights)")
    r.add_argument("--dtype", choices=_choices("dtype"))
    r.add_argument("--steps", type=int)
    r.add_argument("--eta", type=float)
    r.add_argument("--sigma-y", type=float, help="observation noise std on the [0, 1] scale")
    r.add_argument("--travel", metavar="L,S,R", help="time travel length, interval, repeats")
    r.add_argument("--samples", type=int, help="samples per image (mean and std are written)")
    r.add_argument("--shard-size", type=int)
    r.add_argument("--workers", type=int)
    r.add_argument("--gpus-per-worker", type=float)
    r.add_argument("--cpus-per-worker", type=float)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--threads", type=int, help="torch threads per worker")
    r.add_argument("--seed", type=int)
    r.add_argument("--panels", action="store_const", const=True, help="also write side-by-side panels")
    r.add_argument("--incremental", action="store_const", const=True,
                   help="process only input keys not in any committed shard")
    r.add_argument("--overwrite", action="store_const", const=True, help="replace a previous job's output")
    r.add_argument("--retry-failed", action="store_const", const=True,
                   help="run the images that failed in a previous run of this job again")
    r.add_argument("--address", help="join this Ray cluster (default: a local one on 127.0.0.1)")
    r.add_argument("--worker-start-timeout", type=float, metavar="SECONDS",
                   help="wait this long for the first worker (default 1800: GPU nodes scaling up)")
    r.add_argument("--wait-for-lease", action="store_const", const=True,
                   help="wait while another run holds the output (default: exit 1 naming it)")
    r.add_argument("--lease-ttl", type=float, metavar="SECONDS",
                   help="a holder silent this long is taken to be dead (default 120)")
    r.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, repeatable")
    r.add_argument("--canvas", choices=_choices("canvas"),
                   help="whole | tiled | maskshift; auto (default): whole at the model's native size, "
                   "else tiled")
    r.add_argument("--tile", type=int, help="tile / window side in px (default: the model's native size)")
    r.add_argument("--tile-overlap", type=int, help="px shared by neighbouring tiles (default tile/4)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")

    d = sub.add_parser("demo", help="restore the bundled sample images with the small prior")
    d.add_argument("--output", default="demo-out")
    d.add_argument("--tasks", default="sr_bicubic,colorize,inpaint", help="comma-separated")
    d.add_argument("--model", default="small-prior")
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--input", default=str(ASSETS / "samples"))

    for name, help_ in (("status", "shards done/pending/failed, images ok/failed"),
                        ("report", "a summary table per task")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("output")
        s.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
        if name == "status":
            s.add_argument("--json", action="store_true")
    for name in ("tasks", "models"):
        sub.add_parser(name, help=f"list {name}").add_argument("--json", action="store_true")
    return p


RUN_FLAG_FIELDS = {"set": "settings", "storage_option": "storage_options"}
"""`run` flags whose spec field has another name; every other flag's dest is its field's name."""
_NOT_SPEC = ("command", "job", "dry_run")


def spec_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed `run` flags that make the job spec (for ``JobSpec.build(args.job, **flags)``)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SPEC}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            spec = JobSpec.build(args.job, **spec_flags(args))
            return run_job(spec, dry_run=args.dry_run)
        if args.command == "demo":
            return demo(args)
        if args.command in ("status", "report"):
            from jobs import report as insp
            opts = _options_for(args.output, args.storage_option)
            if args.command == "status":
                return insp.status(args.output, opts, as_json=args.json)
            return insp.report(args.output, opts)
        from jobs import report as insp
        return insp.list_registry(args.command, as_json=args.json)
    except JobError as exc:
        print(f"ddnm-batch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # cluster.storage.StorageError and friends while the job ran
        print(f"ddnm-batch: error: storage failed ({exc}); committed shards are kept, run again to resume",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ddnm-batch: interrupted; committed shards are kept, run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _options_for(url: str, items: list[str] | None) -> dict[str, Any]:
    from jobs.spec import _with_endpoint, _yaml_scalar
    opts = _yaml_scalar(parse_assignments(items, field="--storage-option"))
    return _with_endpoint({"output": url, "storage_options": opts})["storage_options"]


# ------------------------------------------------------------------------------------------- run

def _cuda_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_workers(spec: JobSpec, gpus: float) -> tuple[int, float]:
    """(workers, gpus per worker): default one worker per GPU, one worker without GPUs."""
    gpw = spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = spec.workers or (max(1, int(gpus // gpw)) if gpw > 0 and gpus else 1)
    return workers, gpw


def _start_ray(spec: JobSpec) -> tuple[int, float, bool]:
    """Connect to (or start) Ray; -> (workers, gpus per worker, whether we started it)."""
    import ray

    from cluster.runtime import init_ray

    started = False
    if not ray.is_initialized():
        try:
            if spec.address is None:
                cuda = _cuda_count()
                workers, gpw = plan_workers(spec, cuda)
                logical = cuda or (math.ceil(workers * gpw) if gpw > 0 else 0)
                cpus = max(os.cpu_count() or 1, math.ceil(workers * spec.cpus_per_worker))
                init_ray(None, num_cpus=cpus, num_gpus=logical)
                return workers, gpw, True
            init_ray(spec.address)
        except RuntimeError as exc:
            raise JobError(str(exc)) from None
        started = True
    workers, gpw = plan_workers(spec, ray.cluster_resources().get("GPU", 0))
    return workers, gpw, started


def run_job(spec: JobSpec, *, dry_run: bool = False) -> int:
    """Plan, run the pending shards on Ray, commit each, write the final table and the manifest.

    A run holds the output's lease (jobs/lease.py) from before its first write to its last."""
    from jobs import plan as plan_mod
    from jobs.lease import Lease

    if dry_run:
        prepared = plan_mod.prepare(spec, dry_run=True)
        spec = prepared.spec
        workers = plan_workers(spec, _cuda_count())[0] if spec.address is None else (spec.workers or "auto")
        print(plan_mod.describe(prepared, workers=workers, model_calls=spec.model_calls()))
        return EXIT_OK
    lease = Lease(spec.output, spec.storage_options, ttl=spec.lease_ttl, log=_log)
    lease.acquire(wait=spec.wait_for_lease)
    try:
        return _run_held(spec, lease)
    finally:
        lease.release()


def _run_held(spec: JobSpec, lease) -> int:
    from jobs import layout, results
    from jobs import plan as plan_mod
    from jobs.progress import Progress

    prepared = plan_mod.prepare(spec, guard=lease.check)
    spec = prepared.spec
    opts, out = spec.storage_options, spec.output
    t0 = time.time()
    ran = {"ok": 0, "failed": 0}
    started = False
    if prepared.pending:
        workers, gpw, started = _start_ray(spec)
        workers = min(workers, len(prepared.pending))
        _log(f"{spec.task} on {prepared.pending_images} images in {len(prepared.pending)} shards "
             f"({len(prepared.committed)} shards already committed), {workers} workers x {gpw:g} GPU")
        progress = Progress(prepared.total_images, done=prepared.total_images - prepared.pending_images,
                            cost_total=prepared.total_cost,
                            cost_done=prepared.total_cost - prepared.pending_cost)
        costs = {s["shard_id"]: plan_mod.shard_cost(s) for s in prepared.pending}

        def on_result(summary: dict[str, Any]) -> None:
            lease.check()
            table = results.commit_shard(out, summary, opts)
            c = results.counts(table)
            ran["ok"] += c["ok"]
            ran["failed"] += c["failed"]
            progress.update(c["ok"], c["failed"], costs.get(summary["shard_id"], 0))

        from cluster.dispatcher import Dispatcher, WorkerStartError
        try:
            # two shards queued per worker overlap reading with sampling; with fewer shards than
            # that, one each, so that every worker gets one
            in_flight = 2 if len(prepared.pending) >= 2 * workers else 1
            Dispatcher(prepared.config, num_workers=workers, gpus_per_worker=gpw, in_flight=in_flight,
                       cpus_per_worker=spec.cpus_per_worker, start_timeout=spec.worker_start_timeout,
                       on_wait=progress.waiting).run(prepared.pending, on_result)
        except WorkerStartError as exc:
            raise JobError(str(exc)) from None
        finally:
            progress.close()
            if started:
                import ray
                ray.shutdown()
    elif spec.incremental or spec.retry_failed:
        _log(f"nothing to run: {'no new images under ' + spec.input if spec.incremental else ''}"
             f"{'; ' if spec.incremental and spec.retry_failed else ''}"
             f"{'no failed images' if spec.retry_failed else ''}")
    seconds = time.time() - t0
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "seconds": round(seconds, 3),
           "images": ran["ok"] + ran["failed"], "ok": ran["ok"], "failed": ran["failed"],
           "images_per_second": round((ran["ok"] + ran["failed"]) / seconds, 4) if seconds > 0 else None,
           "incremental": spec.incremental, "new_keys": prepared.new_keys,
           "retry_failed": spec.retry_failed, "retried_keys": prepared.retried_keys}
    lease.check()
    table, manifest = results.finalize(out, opts, spec_hash=spec.spec_hash(), plan_shards=prepared.shards,
                                       run=run)
    c = manifest["counts"]
    _log(f"done: {c['images']} images ({c['ok']} ok, {c['failed']} failed); this run {run['images']} "
         f"images in {seconds:.1f} s -> {layout.METRICS_FILE} under {out}")
    if c["failed"]:
        errors = [e for e in table.column("error").to_pylist() if e][:5]
        for e in errors:
            _log(f"failed: {e}")
        return EXIT_FAILED_IMAGES
    return EXIT_OK


# ------------------------------------------------------------------------------------------ demo

DEMO_SETTINGS = {"sr_bicubic": {"scale": 4}, "colorize": {}, "inpaint": {}, "sr_avgpool": {"scale": 4},
                 "deblur_gauss": {}, "denoise": {}}


def demo(args: argparse.Namespace) -> int:
    """Restore the bundled samples for a few tasks in evaluate mode; print the metrics table."""
    from jobs import report as insp

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    codes = []
    import ray

    from cluster.runtime import init_ray
    started = not ray.is_initialized()
    if started:
        init_ray(None, num_cpus=os.cpu_count() or 1, num_gpus=_cuda_count())
    workers = args.workers or _cuda_count() or min(2, os.cpu_count() or 1)
    try:
        for task in tasks:
            settings = dict(DEMO_SETTINGS.get(task, {}))
            if task == "inpaint":
                settings["mask"] = _demo_mask(args.input)
            flags = {"input": args.input, "output": os.path.join(args.output, task), "task": task,
                     "settings": settings, "mode": "evaluate", "model": args.model,
                     "checkpoint": args.checkpoint, "steps": args.steps, "workers": workers,
                     "shard_size": 1, "panels": True, "overwrite": True}
            spec = JobSpec.build(**flags)
            _log(f"demo: {task} -> {spec.output}")
            codes.append(run_job(spec))
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    print()
    insp.report_many([os.path.join(args.output, t) for t in tasks], {})
    return max(codes) if codes else EXIT_OK


def _demo_mask(samples: str) -> str:
    """The bundled mask matching the samples' size (masks/mask-<H>x<W>.png), else a centre box."""
    from jobs.checks import probe_image
    from jobs.inputs import list_inputs
    root, keys = list_inputs(samples, {})
    image = probe_image(root, keys, {})
    if image is not None:
        path = ASSETS / "masks" / f"mask-{image.shape[1]}x{image.shape[2]}.png"
        if path.exists():
            return str(path)
    return "center"


if __name__ == "__main__":
    sys.exit(main())

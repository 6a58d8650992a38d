"""`ddnm-batch`: run | demo | status | report | tasks | models.

Exit codes: 0 every image ok; 3 the job finished and some images failed (each one has a row naming
the file and the reason); 1 the job could not run (bad spec, unreachable storage, refused output),
with one line on stderr naming the problem.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any

from cluster.storage import StorageError
from jobs import errors
from jobs.errors import EXIT_ERROR, EXIT_FAILED_IMAGES, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, JobError
from jobs.spec import JobSpec, parse_assignments

ASSETS = Path(__file__).resolve().parent / "assets"


def _log(msg: str) -> None:
    print(f"[ddnm-batch] {msg}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Kubernetes, cron) arrived: unwinds like Ctrl-C, through the same cleanup.

    Ray may turn it into a plain KeyboardInterrupt on the way up (a signal seen inside ``ray.wait``
    comes back as one), so `_sigterm_seen` says which signal it was."""


_sigterm_seen = threading.Event()


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    _sigterm_seen.set()
    raise Terminated()


def _catch_sigterm() -> None:
    """SIGTERM -> `Terminated` in the main thread. Installed again after Ray starts, whose driver
    replaces the handler with one that dumps a stack trace and exits 134."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _stop_ray() -> None:
    """After an interruption: disconnect from Ray (stopping a local cluster started here)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


# ---------------------------------------------------------------------------------------- parser

def _choices(field: str) -> list[str]:
    """The values a Literal field of the spec takes (the spec is where they are defined)."""
    return list(typing.get_args(JobSpec.model_fields[field].annotation))


RUN_EXAMPLES = """examples:
  ddnm-batch run --input photos/ --output restored/ --task sr_bicubic --set scale=4
  ddnm-batch run examples/s3-eval.yaml --steps 50 --dry-run
  ddnm-batch run --input s3://b/in/ --output s3://b/out/ --task inpaint --set mask=center --incremental"""


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list | dict):
        return ",".join(map(str, value))
    return str(value)


def spec_help(field: str, flag_help: str | None = None) -> str:
    """A run flag's help from its JobSpec field: the description and the field's default, so that the
    defaults live in jobs/spec.py only. A description '...; None = X' reads '... (default: X)'."""
    info = JobSpec.model_fields[field]
    text = flag_help or info.description or field.replace("_", " ")
    if info.is_required():
        return f"{text} (required, here or in the job file)"
    if info.default_factory is not None:
        return f"{text} (default: {_default_text(info.default_factory()) or 'none'})"
    if info.default is None:
        text, _, meaning = text.partition("; None = ")
        return f"{text} (default: {meaning or 'none'})"
    return f"{text} (default: {_default_text(info.default)})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddnm-batch", description="Zero-shot image restoration (DDNM) as a "
                                "distributed, resumable batch job over object storage.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (or resume) a job; flags override the job file", epilog=RUN_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("job", nargs="?",
                   help="a YAML job file; every flag has a field of the same name (optional)")
    flag = {"input": {}, "output": {},
            "task": {"help": "a task (see `ddnm-batch tasks`) or pkg.module:Class"},
            "set": {"action": "append", "metavar": "KEY=VALUE", "field": "settings",
                    "help": "a task setting, repeatable; unset ones take the task's defaults"},
            "mode": {"choices": _choices("mode"),
                     "help": "evaluate: inputs are ground truth, degraded here; restore: inputs are "
                             "observed"},
            "mask-url": {}, "model": {"help": "model name (see `ddnm-batch models`)"}, "checkpoint": {},
            "dtype": {"choices": _choices("dtype")}, "steps": {"type": int}, "eta": {"type": float},
            "sigma-y": {"type": float}, "travel": {"metavar": "L,S,R"}, "samples": {"type": int},
            "shard-size": {"type": int}, "workers": {"type": int}, "gpus-per-worker": {"type": float},
            "cpus-per-worker": {"type": float}, "batch-size": {"type": int}, "threads": {"type": int},
            "max-pixels": {"type": int, "metavar": "N"},
            "seed": {"type": int}, "panels": {"action": "store_const", "const": True},
            "incremental": {"action": "store_const", "const": True},
            "overwrite": {"action": "store_const", "const": True},
            "retry-failed": {"action": "store_const", "const": True},
            "address": {"help": "join this Ray cluster (auto, HOST:PORT, ray://...); None = a private local "
                                "Ray on 127.0.0.1"},
            "worker-start-timeout": {"type": float, "metavar": "SECONDS"},
            "wait-for-lease": {"action": "store_const", "const": True},
            "lease-ttl": {"type": float, "metavar": "SECONDS"},
            "lpips-weights": {"metavar": "PATH|URL"}, "lpips-net": {"choices": _choices("lpips_net")},
            "inception-weights": {"metavar": "PATH|URL"},
            "canvas": {"choices": _choices("canvas"),
                       "help": "whole | tiled | maskshift; auto: whole at the model's native size, "
                               "else tiled"},
            "tile": {"type": int, "help": "tile / window side in px; None = the model's native size"},
            "tile-overlap": {"type": int, "help": "px shared by neighbouring tiles; None = tile/4"},
            "solver": {"help": "a solver (see `ddnm-batch solvers`) or pkg.module:NAME; None = ddnm, "
                               "or ddnm+ when sigma_y > 0"},
            "set-solver": {"action": "append", "metavar": "KEY=VALUE", "field": "solver_settings",
                           "help": "a solver setting, repeatable; unset ones take the solver's defaults"},
            "storage-option": {"action": "append", "metavar": "KEY=VALUE", "field": "storage_options",
                               "help": "an fsspec storage option (e.g. endpoint_url=...), repeatable"}}
    for name, kw in flag.items():
        field = kw.pop("field", name.replace("-", "_"))
        kw["help"] = spec_help(field, kw.get("help"))
        r.add_argument(f"--{name}", **kw)
    r.add_argument("--dry-run", action="store_true", help="print the plan and run nothing (default: off)")

    d = sub.add_parser("demo", help="restore the bundled sample images with the small prior",
                       description="Restore the bundled sample photos for a few tasks in evaluate mode "
                       "on a local Ray and print the metrics table.")
    d.add_argument("--output", default="demo-out", help="output folder, one subfolder per task "
                   "(default: %(default)s)")
    d.add_argument("--tasks", default="sr_bicubic,colorize,inpaint",
                   help="comma-separated tasks (default: %(default)s)")
    d.add_argument("--model", default=JobSpec.model_fields["model"].default,
                   help="model name (default: %(default)s)")
    d.add_argument("--checkpoint", default=None, help=spec_help("checkpoint"))
    d.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    d.add_argument("--workers", type=int, default=None,
                   help="Ray actors (default: one per GPU, else up to 2)")
    d.add_argument("--input", default=str(ASSETS / "samples"),
                   help="folder of images (default: the bundled samples)")

    for name, help_ in (("status", "shards done/pending/failed, images ok/failed"),
                        ("report", "a summary table per task")):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("output", help="the job's output folder/prefix URL")
        s.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                       help="an fsspec storage option, repeatable")
        if name == "status":
            s.add_argument("--json", action="store_true", help="print the counts as JSON (default: off)")
        else:
            s.add_argument("--html", action="store_true",
                           help="also write OUTPUT/report.html (a static page with thumbnails under report/)")
    c = sub.add_parser("compare", help="runs over the same keys: paired differences, FID/KID side by side",
                       description="Runs over the same keys, joined per key: paired differences of every "
                       "metric with 95% bootstrap intervals, FID/KID side by side.")
    c.add_argument("outputs", nargs="+", metavar="OUTPUT", help="two or more job outputs")
    c.add_argument("--html", metavar="PATH", help="also write a static comparison page at PATH")
    c.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                   help="an fsspec storage option, repeatable")
    for name in ("tasks", "models", "solvers"):
        sub.add_parser(name, help=f"list {name}").add_argument(
            "--json", action="store_true", help="print JSON (default: off)")
    return p


RUN_FLAG_FIELDS = {"set": "settings", "storage_option": "storage_options", "set_solver": "solver_settings"}
"""`run` flags whose spec field has another name; every other flag's dest is its field's name."""
_NOT_SPEC = ("command", "job", "dry_run")


def spec_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed `run` flags that make the job spec (for ``JobSpec.build(args.job, **flags)``)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SPEC}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _catch_sigterm()
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
            if args.html:
                from jobs.html_report import write_report
                _log(f"wrote {write_report(args.output, opts)}")
            return insp.report(args.output, opts)
        if args.command == "compare":
            from jobs.compare import compare
            return compare(args.outputs, _options_for(args.outputs[0], args.storage_option),
                           html_path=args.html)
        from jobs import report as insp
        return insp.list_registry(args.command, as_json=args.json)
    except JobError as exc:
        print(f"ddnm-batch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except StorageError as exc:  # while the job ran, after cluster.storage's retries
        print(f"ddnm-batch: error: {errors.storage_failed(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # anything else the system refused
        print(f"ddnm-batch: error: storage failed ({exc}); committed shards are kept, run again to resume",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        _stop_ray()
        term = isinstance(exc, Terminated) or _sigterm_seen.is_set()
        why = "terminated (SIGTERM)" if term else "interrupted"
        print(f"ddnm-batch: {why}; committed shards are kept, run again to resume", file=sys.stderr)
        return EXIT_TERMINATED if term else EXIT_INTERRUPTED


def _options_for(url: str, items: list[str] | None) -> dict[str, Any]:
    from jobs.spec import _with_endpoint, _yaml_scalar
    opts = _yaml_scalar(parse_assignments(items, field="--storage-option"))
    return _with_endpoint({"output": url, "storage_options": opts})["storage_options"]


# ------------------------------------------------------------------------------------------- run

def _cuda_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


CPU_WORKERS_MAX = 4
"""Without GPUs, one worker per CPU up to this many (each one loads the model and takes a CPU)."""


def plan_workers(spec: JobSpec, gpus: float, cpus: float | None = None) -> tuple[int, float]:
    """(workers, gpus per worker): default one worker per GPU; without GPUs one per `cpus_per_worker`
    CPUs of the machine (or cluster), at most CPU_WORKERS_MAX."""
    gpw = spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if spec.workers:
        return spec.workers, gpw
    if gpw > 0 and gpus:
        return max(1, int(gpus // gpw)), gpw
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return max(1, min(CPU_WORKERS_MAX, int(cpus // spec.cpus_per_worker))), gpw


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
                _catch_sigterm()
                return workers, gpw, True
            init_ray(spec.address)
            _catch_sigterm()
        except RuntimeError as exc:
            raise JobError(str(exc)) from None
        started = True
    res = ray.cluster_resources()
    workers, gpw = plan_workers(spec, res.get("GPU", 0), res.get("CPU", 1))
    return workers, gpw, started


def _expected_workers(spec: JobSpec) -> int | None:
    """How many workers the run will have, when that is known before Ray starts (a local Ray, or
    --workers); None when joining a cluster that decides."""
    if spec.workers:
        return spec.workers
    return plan_workers(spec, _cuda_count())[0] if spec.address is None else None


def run_job(spec: JobSpec, *, dry_run: bool = False) -> int:
    """Plan, run the pending shards on Ray, commit each, write the final table and the manifest.

    A run holds the output's lease (jobs/lease.py) from before its first write to its last."""
    from jobs import plan as plan_mod
    from jobs.lease import Lease

    if dry_run:
        workers = _expected_workers(spec)
        prepared = plan_mod.prepare(spec, dry_run=True, workers=workers)
        spec = prepared.spec
        workers = workers or "auto"
        print(plan_mod.describe(prepared, workers=workers, model_calls=spec.model_calls()))
        return EXIT_OK
    plan_mod.check_apart(spec.input, spec.output)  # before the lease writes into the output
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

    prepared = plan_mod.prepare(spec, guard=lease.check, workers=_expected_workers(spec))
    spec = prepared.spec
    for line in prepared.repairs:
        _log(line)
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
        from cluster.outputs import remove_outputs
        from cluster.storage import StorageUnwritable

        try:
            # two shards queued per worker overlap reading with sampling; with fewer shards than
            # that, one each, so that every worker gets one
            in_flight = 2 if len(prepared.pending) >= 2 * workers else 1
            dispatcher = Dispatcher(prepared.config, num_workers=workers, gpus_per_worker=gpw,
                                    in_flight=in_flight, cpus_per_worker=spec.cpus_per_worker,
                                    start_timeout=spec.worker_start_timeout, on_wait=progress.waiting,
                                    on_progress=progress.running)
            dispatcher.run(prepared.pending, on_result)
        except WorkerStartError as exc:
            raise JobError(str(exc)) from None
        except StorageUnwritable:  # full or read-only: the uncommitted shards' images go with their rows
            # (not for an unreachable storage, where each delete would wait out the retries: the rerun
            # overwrites them under the same names)
            remove_outputs(out, [k for s in dispatcher.unsettled.values() for k in s["keys"]], opts)
            raise
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
        _catch_sigterm()
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
    from jobs.html_report import write_report
    pages = [write_report(os.path.join(args.output, t), {}) for t in tasks]
    print("\nreports (open in a browser, no server needed):\n" + "\n".join(f"  {p}" for p in pages))
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

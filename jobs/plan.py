"""The shard plan: list once, cut into shards, write OUTPUT/_plan.json, resume, incremental runs.

Output layout (all under the output URL):
  _spec.json     the resolved spec, its hash, code version, checkpoint hash (written before work)
  _plan.json     the shards {shard_id, keys} (a resumed job reuses it instead of listing again)
  shards/shard-<id:06d>.parquet   one per committed shard, written in one write
  metrics.parquet, _manifest.json the final table, and the manifest written last
A shard is committed when its Parquet file exists; resume runs the plan's other shards.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import io as cio
from cluster.checkpoints import is_remote, remote_fingerprint
from cluster.outputs import output_name
from jobs import storage
from jobs.spec import JobError, JobSpec

PLAN_FILE = "_plan.json"
SPEC_FILE = "_spec.json"
MANIFEST_FILE = "_manifest.json"
METRICS_FILE = "metrics.parquet"
SHARDS_DIR = "shards"
OUTPUT_DIRS = ("images", "panels", "std", SHARDS_DIR)
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.parquet$")


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.parquet"


def make_shards(keys: list[str], shard_size: int, *, first_id: int = 0) -> list[dict[str, Any]]:
    """Sorted keys -> [{"shard_id", "keys"}] of at most `shard_size` keys, ids from `first_id`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    keys = sorted(keys)
    return [{"shard_id": first_id + i, "keys": keys[start:start + shard_size]}
            for i, start in enumerate(range(0, len(keys), shard_size))]


def committed_ids(output: str, options: dict[str, Any]) -> set[int]:
    """Ids of the shards whose Parquet file exists under OUTPUT/shards/."""
    names = storage.list_names(cio.join(output, SHARDS_DIR), options)
    return {int(m.group(1)) for m in map(_SHARD_RE.match, names) if m}


def code_version() -> dict[str, Any]:
    """{"package": version, "git": commit or None, "dirty": bool or None} of the running code."""
    try:
        version = importlib.metadata.version("ddnm-batch")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=5, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": version, "git": commit, "dirty": dirty}


def checkpoint_hash(spec: JobSpec) -> str:
    """sha256 of the checkpoint file; 'random'; 'bundled:<model>' (the bundled weights)."""
    ckpt = spec.checkpoint
    if ckpt is None:
        try:  # the bundled weights of the small prior
            from ddnm.models.small_prior import WEIGHTS
        except ImportError:
            WEIGHTS = None
        if spec.model == "small-prior" and WEIGHTS is not None and Path(WEIGHTS).is_file():
            from ddnm.models import checkpoint_hash as sha
            return f"sha256:{sha(WEIGHTS)} (bundled)"
        return f"bundled:{spec.model}"
    if ckpt == "random":
        return "random"
    if is_remote(ckpt):  # hashing a 2 GB object on the driver is a download: record its ETag
        try:
            return remote_fingerprint(ckpt, spec.storage_options)
        except Exception as exc:
            return f"unknown ({type(exc).__name__}): {ckpt}"
    path = ckpt.removeprefix("file://")
    if not Path(path).is_file():  # on a remote cluster the driver may not see the workers' path
        return f"unknown (not readable on the driver): {ckpt}"
    from ddnm.models import checkpoint_hash as sha
    return "sha256:" + sha(path)


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """Everything the driver needs to run: the plan, what is done, what to run, the worker config."""

    spec: JobSpec
    input_root: str
    shards: list[dict[str, Any]]          # the whole plan
    committed: set[int]                   # shard ids with a Parquet file
    pending: list[dict[str, Any]]         # shards to run now, with "attempt": 0
    new_keys: int = 0                     # keys appended by --incremental
    retried_keys: int = 0                 # failed keys given new shards by --retry-failed
    resumed: bool = False                 # a previous plan was reused
    previous_spec: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.spec.to_worker_config(input_url=self.input_root)

    @property
    def total_images(self) -> int:
        """Distinct keys in the plan (a key retried by --retry-failed sits in two shards)."""
        return len({k for s in self.shards for k in s["keys"]})

    @property
    def pending_images(self) -> int:
        return sum(len(s["keys"]) for s in self.pending)


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """['steps: 100 -> 50', ...] over the result fields of two specs' JSON dumps."""
    diffs = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def prepare(spec: JobSpec, *, dry_run: bool = False) -> Prepared:
    """Check the spec against the storage and the output, plan, and (unless dry_run) write the
    spec and plan files. Raises JobError naming the problem before any work."""
    opts = spec.storage_options
    out = spec.output
    if storage.is_file_not_folder(out, opts):
        raise JobError(f"output {out} is a file, not a folder; give a folder (or prefix) for --output")
    previous = _read_previous_spec(out, opts)
    if previous is not None and not spec.overwrite:
        old = previous.get("result_fields", {})
        diffs = spec_differences(old, spec.result_fields())
        if diffs:
            raise JobError(f"output {out} holds a job with a different spec ({'; '.join(diffs)}); "
                           "use --overwrite to replace it, or another --output")
    reuse = previous is not None and not spec.overwrite
    plan = storage.read_json(cio.join(out, PLAN_FILE), opts) if reuse else None
    notes: list[str] = []
    new_keys = 0
    if plan is not None and plan.get("input") == spec.input:
        root, shards = plan["input_root"], plan["shards"]
        if spec.incremental:
            root_now, keys = storage.list_inputs(spec.input, opts, exclude=_excluded(spec))
            if root_now != root:
                raise JobError(f"input {spec.input}: resolves to {root_now}, the plan has {root}")
            planned = {k for s in shards for k in s["keys"]}
            fresh = [k for k in keys if k not in planned]
            first = max((s["shard_id"] for s in shards), default=-1) + 1
            shards = shards + make_shards(fresh, spec.shard_size, first_id=first)
            new_keys = len(fresh)
    else:
        plan = None
        root, keys = storage.list_inputs(spec.input, opts, exclude=_excluded(spec))
        if not keys:
            raise JobError(f"input {spec.input}: no images found "
                           f"({', '.join(e[1:] for e in storage.IMAGE_EXTENSIONS)})")
        shards = make_shards(keys, spec.shard_size)
    _check_output_names(shards)
    spec = _check_against_data(spec, root, shards, notes)
    committed = committed_ids(out, opts) if reuse else set()
    retried = 0
    if spec.retry_failed and committed:
        queued = {k for sh in shards if sh["shard_id"] not in committed for k in sh["keys"]}
        failed = [k for k in _failed_keys(out, opts, committed) if k not in queued]  # not twice
        first = max((s["shard_id"] for s in shards), default=-1) + 1
        shards = shards + make_shards(failed, spec.shard_size, first_id=first)
        retried = len(failed)
    pending = [{**s, "attempt": 0} for s in shards if s["shard_id"] not in committed]
    prepared = Prepared(spec=spec, input_root=root, shards=shards, committed=committed, pending=pending,
                        new_keys=new_keys, retried_keys=retried, resumed=plan is not None,
                        previous_spec=previous, notes=notes)
    if not dry_run:
        _write_start(prepared, overwrite=spec.overwrite and previous is not None)
    return prepared


def _failed_keys(out: str, opts: dict[str, Any], committed: set[int]) -> list[str]:
    """Keys whose current row (each key once, the latest shard winning) has status "failed"."""
    from jobs import results  # results imports this module

    table = results.read_committed(out, opts, committed)
    return [k for k, st in zip(table.column("key").to_pylist(), table.column("status").to_pylist(),
                               strict=True) if st != "ok"]


def _check_output_names(shards: list[dict]) -> None:
    """Refuse two keys whose outputs would be one file (``p.jpg`` and ``p.jpg.png``, see
    `cluster.outputs.output_name`); every other pair of keys has outputs of its own."""
    seen: dict[str, str] = {}
    for key in sorted({k for s in shards for k in s["keys"]}):
        other = seen.setdefault(output_name(key), key)
        if other != key:
            raise JobError(f"inputs {other!r} and {key!r} would both be restored to images/"
                           f"{output_name(key)}; rename one of them")


def _excluded(spec: JobSpec) -> tuple[str | None, ...]:
    """Subtrees of the input that are not inputs: the output, and a folder of masks."""
    mask = spec.settings.get("mask")
    return (spec.output, spec.mask_url, mask if isinstance(mask, str) and _looks_like_path(mask) else None)


def _read_previous_spec(out: str, opts: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return storage.read_json(cio.join(out, SPEC_FILE), opts)
    except JobError as exc:
        raise JobError(f"output {out}: {exc}") from None
    except Exception as exc:
        raise JobError(f"output {out}: storage not reachable ({type(exc).__name__}: {exc})") from None


def _check_against_data(spec: JobSpec, root: str, shards: list[dict], notes: list[str]) -> JobSpec:
    """Checks that need the storage: mask and checkpoint present, the task fits the image size."""
    opts = spec.storage_options
    mask = spec.settings.get("mask")
    if isinstance(mask, str) and _looks_like_path(mask):
        if not storage.exists(mask, opts):
            raise JobError(f"--set mask={mask}: not found")
        if storage.isdir(mask, opts):  # a folder of masks, one per image under the same key
            settings = {k: v for k, v in spec.settings.items() if k != "mask"}
            spec = spec.model_copy(update={"settings": settings, "mask_url": mask.rstrip("/")})
    if spec.mask_url and not storage.exists(spec.mask_url, opts):
        raise JobError(f"mask_url={spec.mask_url}: not found")
    ckpt = spec.checkpoint
    if ckpt and is_remote(ckpt):  # fetched once per node by the workers (cluster/checkpoints.py)
        try:
            found = storage.exists(ckpt, opts)
        except Exception as exc:
            raise JobError(f"--checkpoint {ckpt}: cannot reach it ({exc})") from None
        if not found:
            raise JobError(f"--checkpoint {ckpt}: not found")
    elif ckpt and ckpt != "random" and spec.address is None and not storage.exists(ckpt, opts):
        raise JobError(f"--checkpoint {ckpt}: not found")
    keys = [k for s in shards for k in s["keys"]]
    shape = _probe_shape(root, keys, opts)
    if shape is None:
        if keys:
            notes.append("could not decode any of the first images to check the task against their size")
        return spec
    x_shape = _validate_task(spec, shape)
    _check_model_size(spec, x_shape)
    mask = spec.settings.get("mask")
    if spec.task == "inpaint" and x_shape and isinstance(mask, str) and _looks_like_path(mask):
        try:
            m = cio.decode_mask(cio.read_bytes(mask, opts), mask)
        except cio.BadInput as exc:
            raise JobError(f"--set mask={mask}: {exc.reason}") from None
        if tuple(m.shape[-2:]) != tuple(x_shape[1:]):
            raise JobError(f"--set mask={mask}: size {m.shape[-1]}x{m.shape[-2]} does not match the "
                           f"images ({x_shape[2]}x{x_shape[1]})")
    return spec


def _looks_like_path(value: str) -> bool:
    return "://" in value or "/" in value or value.lower().endswith(storage.IMAGE_EXTENSIONS)


def _probe_shape(root: str, keys: list[str], opts: dict[str, Any], tries: int = 3):
    """(C, H, W) of the first decodable image among the first `tries` keys, or None."""
    for key in keys[:tries]:
        try:
            image = cio.decode_image(cio.read_bytes(cio.join(root, key), opts), key)
        except Exception:
            continue
        return tuple(int(d) for d in image.shape)
    return None


def _check_model_size(spec: JobSpec, x_shape: tuple[int, int, int] | None) -> None:
    """A model with a fixed image size cannot restore images of another size: refuse up front."""
    from ddnm.models import REGISTRY
    size = getattr(REGISTRY.get(spec.model), "image_size", None)
    if size and x_shape is not None and tuple(x_shape[1:]) != (size, size):
        what = "restored images would be" if spec.mode == "restore" else "input images are"
        raise JobError(f"model {spec.model} restores {size}x{size} images; the {what} "
                       f"{x_shape[2]}x{x_shape[1]} (checked on the first decodable input)")


def _validate_task(spec: JobSpec, shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The task's own validation on the first image's size (SR scale divides it, ...) -> x_shape."""
    if ":" in spec.task:
        return None
    from ddnm.operators import TASKS
    info = TASKS[spec.task]
    settings = dict(spec.settings)
    if isinstance(settings.get("mask"), str) and _looks_like_path(settings["mask"]):
        settings.pop("mask")  # checked separately (it may live on object storage)
    try:
        if spec.mode == "restore":
            x_shape = info.x_shape_from_observation(shape, **settings)
        else:
            x_shape = (3, shape[1], shape[2])
        info.validate(x_shape, **settings)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise JobError(f"task {spec.task} on the input images ({shape[2]}x{shape[1]} px, "
                       f"mode {spec.mode}): {exc}") from None
    return tuple(x_shape)


def _write_start(prepared: Prepared, *, overwrite: bool) -> None:
    """--overwrite clears the old outputs; then _spec.json and _plan.json; a stale manifest goes."""
    spec, opts, out = prepared.spec, prepared.spec.storage_options, prepared.spec.output
    if overwrite:
        for name in (MANIFEST_FILE, METRICS_FILE, PLAN_FILE, SPEC_FILE, *OUTPUT_DIRS):
            storage.remove(cio.join(out, name), opts)
    if prepared.pending and prepared.previous_spec is not None and not overwrite:
        storage.remove(cio.join(out, MANIFEST_FILE), opts)  # the output is incomplete again
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    created = (prepared.previous_spec or {}).get("created") if not overwrite else None
    storage.write_json(cio.join(out, SPEC_FILE), {
        "spec": spec.public_dict(), "result_fields": spec.result_fields(), "spec_hash": spec.spec_hash(),
        "code_version": code_version(), "checkpoint_hash": checkpoint_hash(spec),
        "input_root": prepared.input_root, "created": created or now, "updated": now,
    }, opts)
    storage.write_json(cio.join(out, PLAN_FILE), {
        "input": spec.input, "input_root": prepared.input_root, "shard_size": spec.shard_size,
        "spec_hash": spec.spec_hash(), "updated": now,
        "shards": [{"shard_id": s["shard_id"], "keys": s["keys"]} for s in prepared.shards],
    }, opts)


def describe(prepared: Prepared, *, workers: int, model_calls: int) -> str:
    """The --dry-run text: images found, shards, workers, model calls per image, what is skipped."""
    spec = prepared.spec
    done = sum(len(s["keys"]) for s in prepared.shards if s["shard_id"] in prepared.committed)
    lines = [
        f"input:      {spec.input} (root {prepared.input_root})",
        f"output:     {spec.output}",
        f"task:       {spec.task} {spec.settings or ''} mode={spec.mode} model={spec.model}",
        f"images:     {prepared.total_images} in {len(prepared.shards)} shards of <= {spec.shard_size}"
        + (f" ({prepared.new_keys} new since the last run)" if spec.incremental else "")
        + (f" ({prepared.retried_keys} failed ones to run again)" if spec.retry_failed else ""),
        f"resume:     skips {len(prepared.committed)} committed shards ({done} images); "
        f"runs {len(prepared.pending)} shards ({prepared.pending_images} images)",
        f"workers:    {workers}",
        f"model calls per image: {model_calls} ({spec.steps} steps, travel {list(spec.travel)}, "
        f"x{spec.samples} samples = {model_calls * spec.samples})",
        f"spec hash:  {spec.spec_hash()}",
    ]
    return "\n".join(lines + [f"note:       {n}" for n in prepared.notes])

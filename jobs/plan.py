"""The shard plan: list once, cut into shards, write OUTPUT/_plan.json; resume, incremental runs and
retries of failed images. The file layout is jobs/layout.py, the checks against the data jobs/checks.py,
provenance jobs/provenance.py."""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster import storage
from cluster.config import WorkerConfig
from cluster.outputs import output_name
from ddnm.operators import is_mask_file
from jobs import inputs, layout, provenance, results, sizes, state
from jobs.checks import check_against_data
from jobs.errors import JobError
from jobs.inputs import unreachable
from jobs.spec import JobSpec


def make_shards(keys: list[str], shard_size: int, *, first_id: int = 0, costs: dict[str, int] | None = None,
                budget: int | None = None) -> list[dict[str, Any]]:
    """Sorted keys -> [{"shard_id", "keys"}] of at most `shard_size` keys, ids from `first_id`.

    With `costs` (key -> cost) and `budget`: [{"shard_id", "keys", "cost"}] packed in key order up to
    `budget` each; an image costing more than the budget is a shard alone."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    keys = sorted(keys)
    if costs is None:
        return [{"shard_id": first_id + i, "keys": keys[start:start + shard_size]}
                for i, start in enumerate(range(0, len(keys), shard_size))]
    if budget is None or budget < 1:
        raise ValueError(f"budget must be a positive cost with costs, got {budget!r}")
    groups: list[tuple[list[str], int]] = []
    cur: list[str] = []
    total = 0
    for k in keys:
        c = int(costs[k])
        if cur and total + c > budget:
            groups.append((cur, total))
            cur, total = [], 0
        cur.append(k)
        total += c
    if cur:
        groups.append((cur, total))
    return [{"shard_id": first_id + i, "keys": g, "cost": c} for i, (g, c) in enumerate(groups)]


def _costs(spec: JobSpec, root: str, keys: list[str]) -> dict[str, int]:
    """key -> cost (pixels x model calls, jobs/sizes.py) from the images' headers."""
    from ddnm.models import model_facts

    native = model_facts(spec.model).image_size
    return sizes.image_costs(sizes.image_sizes(root, keys, spec.storage_options),
                             tile=spec.tile or native, model_calls=spec.model_calls())


def _cut(spec: JobSpec, root: str, keys: list[str], *, first_id: int = 0, budget: int | None = None,
         workers: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Shards of `keys` by cost -> (shards, the budget: the given one, else from these keys).

    With `workers`, a batch of keys too small to give every worker a full shard is cut into
    `workers` shards or more, so that none idles from the start (the returned budget, which later
    --incremental runs reuse, is the full one)."""
    if not keys:
        return [], budget or 1
    costs = _costs(spec, root, keys)
    budget = budget or sizes.shard_budget(costs, spec.shard_size)
    cut = budget
    if workers and workers > 1:  # ceil(n / workers) images of the median cost per shard
        cut = min(budget, sizes.shard_budget(costs, -(-len(keys) // workers)))
    return make_shards(keys, spec.shard_size, first_id=first_id, costs=costs, budget=cut), budget


def shard_cost(shard: dict[str, Any]) -> int:
    """A shard's cost; a plan written before costs existed counts its images."""
    return int(shard.get("cost", len(shard["keys"])))


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
    budget: int = 0                       # the cost one shard holds (jobs/sizes.py)
    previous_spec: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # unreadable job files and what is done (state.py)
    unreadable: set[int] = field(default_factory=set)  # shard ids whose file does not parse: run again

    @property
    def config(self) -> WorkerConfig:
        return self.spec.to_worker_config(input_url=self.input_root)

    @property
    def total_images(self) -> int:
        """Distinct keys in the plan (a key retried by --retry-failed sits in two shards)."""
        return len({k for s in self.shards for k in s["keys"]})

    @property
    def pending_images(self) -> int:
        return sum(len(s["keys"]) for s in self.pending)

    @property
    def total_cost(self) -> int:
        """The plan's cost (pixels x model calls), each shard once (the unit of progress and ETA)."""
        return sum(shard_cost(s) for s in self.shards)

    @property
    def pending_cost(self) -> int:
        return sum(shard_cost(s) for s in self.pending)


def spec_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """['steps: 100 -> 50', ...] over the result fields of two specs' JSON dumps (fields added by later
    releases count as absent at their defaults on either side: ``jobs.spec.comparable_fields``)."""
    from jobs.spec import comparable_fields

    old, new = comparable_fields(old), comparable_fields(new)
    diffs = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def prepare(spec: JobSpec, *, dry_run: bool = False, guard: Callable[[], None] | None = None,
            workers: int | None = None) -> Prepared:
    """Check the spec against the storage and the output, plan, and (unless dry_run) write the
    spec and plan files. Raises JobError naming the problem before any work. `guard()` runs before
    the first write (the lease check: it raises if this run no longer holds the output). `workers`:
    how many will run, when known, so that a small batch of new keys is spread over all of them."""
    opts = spec.storage_options
    out = spec.output
    if _read(storage.isfile, out, opts):
        raise JobError(f"output {out} is a file, not a folder; give a folder (or prefix) for --output")
    check_apart(spec.input, out)  # before the listing, which leaves the output out
    previous = _read_previous_spec(out, opts)
    if previous is not None and not spec.overwrite:
        old = previous.get("result_fields", {})
        diffs = spec_differences(old, spec.result_fields())
        if diffs:
            raise JobError(f"output {out} holds a job with a different spec ({'; '.join(diffs)}); "
                           "use --overwrite to replace it, or another --output")
    reuse = previous is not None and not spec.overwrite
    plan, broken = _read(state.read_json, storage.join(out, layout.PLAN_FILE), opts, needs=("shards",)) \
        if reuse else (None, None)
    committed = _read(layout.committed_ids, out, opts) if reuse else set()
    unreadable = _read(state.unreadable_shards, out, opts, committed)
    committed -= set(unreadable)
    repairs = [f"{layout.shard_url(out, i)} is unreadable ({why}): its shard runs again"
               for i, why in sorted(unreadable.items())]
    notes: list[str] = []
    new_keys = 0
    budget = 0
    if broken:
        root, shards, budget = _rebuild_plan(spec, committed, first_id=max(committed | set(unreadable),
                                                                           default=-1) + 1, workers=workers)
        added = shards[len(committed):]
        repairs.append(f"{storage.join(out, layout.PLAN_FILE)} is unreadable ({broken}): rebuilt from the "
                       f"{len(committed)} committed shards' rows and the listing of {spec.input} "
                       f"({sum(len(s['keys']) for s in added)} images in {len(added)} new shards)")
    elif plan is not None and plan.get("input") == spec.input:
        root, shards = plan["input_root"], plan["shards"]
        budget = int(plan.get("shard_cost") or 0)
        if spec.incremental:
            root_now, keys = inputs.list_inputs(spec.input, opts, exclude=_excluded(spec))
            if root_now != root:
                raise JobError(f"input {spec.input}: resolves to {root_now}, the plan has {root}")
            planned = {k for s in shards for k in s["keys"]}
            fresh = [k for k in keys if k not in planned]
            first = max((s["shard_id"] for s in shards), default=-1) + 1
            added, budget = _cut(spec, root, fresh, first_id=first, budget=budget or None, workers=workers)
            shards = shards + added
            new_keys = len(fresh)
    else:
        plan = None
        root, keys = inputs.list_inputs(spec.input, opts, exclude=_excluded(spec))
        if not keys:
            raise JobError(f"input {spec.input}: no images found ({inputs.describe_extensions()})")
        shards, budget = _cut(spec, root, keys, workers=workers)
    check_apart(root, out)  # a manifest's root is known now
    _check_output_names(shards)
    spec = check_against_data(spec, root, [k for s in shards for k in s["keys"]], notes)
    if reuse and _read(state.read_json, storage.join(out, layout.MANIFEST_FILE), opts)[1]:
        repairs.append(f"{storage.join(out, layout.MANIFEST_FILE)} is unreadable: it is written again at "
                       "the end of this run")
    retried = 0
    if spec.retry_failed and committed:
        queued = {k for sh in shards if sh["shard_id"] not in committed for k in sh["keys"]}
        failed = [k for k in _failed_keys(out, opts, committed) if k not in queued]  # not twice
        first = max((s["shard_id"] for s in shards), default=-1) + 1
        added, budget = _cut(spec, root, failed, first_id=first, budget=budget or None, workers=workers)
        shards = shards + added
        retried = len(failed)
    pending = [{**s, "attempt": 0} for s in shards if s["shard_id"] not in committed]
    prepared = Prepared(spec=spec, input_root=root, shards=shards, committed=committed, pending=pending,
                        new_keys=new_keys, retried_keys=retried, resumed=plan is not None or bool(broken),
                        previous_spec=previous, notes=notes, budget=budget, repairs=repairs,
                        unreadable=set(unreadable))
    if not dry_run:
        if guard is not None:
            guard()
        _write_start(prepared, overwrite=spec.overwrite and previous is not None)
    return prepared


def _rebuild_plan(spec: JobSpec, committed: set[int], *, first_id: int,
                  workers: int | None) -> tuple[str, list[dict[str, Any]], int]:
    """A plan in place of one that does not parse: the committed shards with the keys of their rows,
    then new shards from `first_id` for the input's other keys -> (root, shards, budget)."""
    root, keys = inputs.list_inputs(spec.input, spec.storage_options, exclude=_excluded(spec))
    shards = _read(state.shards_from_rows, spec.output, spec.storage_options, committed)
    have = {k for s in shards for k in s["keys"]}
    added, budget = _cut(spec, root, [k for k in keys if k not in have], first_id=first_id, workers=workers)
    return root, shards + added, budget


def _failed_keys(out: str, opts: dict[str, Any], committed: set[int]) -> list[str]:
    """Keys whose current row (each key once, the latest shard winning) has status "failed"."""
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


def check_apart(root: str, out: str) -> None:
    """`root`: the input folder (a manifest: its root once listed; the manifest file itself passes).
    Refuse an output that is the input folder or holds it (the job would write among the inputs,
    and --overwrite would delete them); an output inside the input is fine (it is not listed). Local
    paths are compared with links resolved."""
    if inputs.is_manifest(root):
        return  # its keys' root is checked once listed

    def canonical(url: str) -> str:
        url = url.rstrip("/")
        return os.path.realpath(url) if "://" not in url else url

    r, o = canonical(root), canonical(out)
    if r == o:
        raise JobError(f"output {out} is the input folder {root}: the restored images would be written "
                       "among the inputs; give another --output")
    if r.startswith(o + "/"):
        raise JobError(f"output {out} holds the input {root}: the job writes its images/ and files there "
                       "and --overwrite would delete them; give an --output outside the input")


def _excluded(spec: JobSpec) -> tuple[str | None, ...]:
    """Subtrees of the input that are not inputs: the output, and a folder of masks."""
    mask = spec.settings.get("mask")
    return (spec.output, spec.mask_url, mask if is_mask_file(mask) else None)


def _read_previous_spec(out: str, opts: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return storage.read_json(storage.join(out, layout.SPEC_FILE), opts)
    except storage.StorageError as exc:
        raise unreachable(exc) from None


def _read(fn, *args, **kwargs):
    """A read of the output's files before any work: a storage failure is the job's one-line error."""
    try:
        return fn(*args, **kwargs)
    except storage.StorageError as exc:
        raise unreachable(exc) from None


def _write_start(prepared: Prepared, *, overwrite: bool) -> None:
    """--overwrite clears the old outputs; then _spec.json and _plan.json; a stale manifest goes."""
    spec, opts, out = prepared.spec, prepared.spec.storage_options, prepared.spec.output
    weights = provenance.weights_hashes(spec)  # before anything is removed: a missing file stops here
    if overwrite:
        for name in (layout.MANIFEST_FILE, layout.METRICS_FILE, layout.PLAN_FILE, layout.SPEC_FILE,
                     *layout.OUTPUT_DIRS):
            storage.remove(storage.join(out, name), opts)
    if prepared.pending and prepared.previous_spec is not None and not overwrite:
        storage.remove(storage.join(out, layout.MANIFEST_FILE), opts)  # the output is incomplete again
    for shard_id in prepared.unreadable:  # not a commit: gone before its shard runs again
        storage.remove(layout.shard_url(out, shard_id), opts)
    for folder in (layout.SHARDS_DIR, layout.FEATURES_DIR):  # a killed run's half-written commits
        storage.remove_partial_writes(storage.join(out, folder), opts)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    created = (prepared.previous_spec or {}).get("created") if not overwrite else None
    storage.write_json(storage.join(out, layout.SPEC_FILE), {
        "spec": spec.public_dict(), "result_fields": spec.result_fields(), "spec_hash": spec.spec_hash(),
        "code_version": provenance.code_version(), "checkpoint_hash": provenance.checkpoint_hash(spec),
        "weights_hashes": weights,
        "input_root": prepared.input_root, "created": created or now, "updated": now,
    }, opts)
    storage.write_json(storage.join(out, layout.PLAN_FILE), {
        "input": spec.input, "input_root": prepared.input_root, "shard_size": spec.shard_size,
        "spec_hash": spec.spec_hash(), "updated": now, "shard_cost": prepared.budget,
        "shards": [{"shard_id": s["shard_id"], "keys": s["keys"],
                    **({"cost": s["cost"]} if "cost" in s else {})} for s in prepared.shards],
    }, opts)


def describe(prepared: Prepared, *, workers: int, model_calls: int) -> str:
    """The --dry-run text: images found, shards, workers, model calls per image, what is skipped."""
    spec = prepared.spec
    done = sum(len(s["keys"]) for s in prepared.shards if s["shard_id"] in prepared.committed)
    lines = [
        f"input:      {spec.input} (root {prepared.input_root})",
        f"output:     {spec.output}",
        f"task:       {spec.task} {spec.settings or ''} mode={spec.mode} model={spec.model}",
        f"images:     {prepared.total_images} in {len(prepared.shards)} shards of <= {spec.shard_size} "
        f"median-size images' cost"
        + (f" ({prepared.new_keys} new since the last run)" if spec.incremental else "")
        + (f" ({prepared.retried_keys} failed ones to run again)" if spec.retry_failed else ""),
        f"resume:     skips {len(prepared.committed)} committed shards ({done} images); "
        f"runs {len(prepared.pending)} shards ({prepared.pending_images} images)",
        f"workers:    {workers}",
        f"model calls per image: {model_calls} ({spec.steps} steps, travel {list(spec.travel)}, "
        f"x{spec.samples} samples = {model_calls * spec.samples})",
        f"spec hash:  {spec.spec_hash()}",
    ]
    return "\n".join(lines + [f"note:       {n}" for n in prepared.notes + prepared.repairs])

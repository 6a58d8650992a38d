"""The column table: one row per input image, its fields, and what a failed row clears.

`COLUMNS` is the one definition of the per-image table. The worker's rows (`Row`), the nulls of a failed
row (`fail`) and the Parquet schema of the driver (``jobs.results.SCHEMA``) all derive from it; README's
table lists the same names in the same order (a test checks). A row key outside the table is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.images import BadInput


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """"string", "float64" or "int64"."""
    doc: str
    required: bool = False
    """Never null."""
    result: bool = False
    """Set when the image is restored; cleared (null) when its row fails."""


COLUMNS: tuple[Column, ...] = (
    Column("key", "string", "the input's key relative to the input root", required=True),
    Column("status", "string", "`ok` or `failed`", required=True),
    Column("error", "string", "null, or `name: reason`"),
    Column("task", "string", "the task"),
    Column("mode", "string", "`evaluate` / `restore`"),
    Column("psnr", "float64", "dB vs the input image (evaluate mode only), on [0, 1] images", result=True),
    Column("ssim", "float64", "vs the input image (evaluate mode only)", result=True),
    Column("lpips", "float64", "LPIPS vs the input image (evaluate mode, with `lpips_weights`), of the PNG "
           "as written", result=True),
    Column("consistency", "float64", "`||A x0 - y||_2` per image on the [-1, 1] scale, x0 before clamping",
           result=True),
    Column("consistency_clamped", "float64", "the same after clamping x0 to [-1, 1]", result=True),
    Column("in_height", "int64", "size of the input"),
    Column("in_width", "int64", "size of the input"),
    Column("out_height", "int64", "size of the restored image", result=True),
    Column("out_width", "int64", "size of the restored image", result=True),
    Column("solver", "string", "the solver (`ddnm-batch solvers`): `ddnm`, `ddnm+`, ..."),
    Column("solver_settings", "string", "the solver's settings with defaults filled in, JSON with sorted "
           "keys"),
    Column("steps", "int64", "sampling steps"),
    Column("model_calls", "int64", "model calls per sample", result=True),
    Column("samples", "int64", "samples per image"),
    Column("seed", "int64", "the job's seed"),
    Column("seconds", "float64", "the image's share of the sampling time, plus its read and write"),
    Column("worker", "string", "the Ray actor that restored it"),
    Column("node", "string", "the Ray node that restored it"),
    Column("shard_id", "int64", "its shard"),
    Column("attempt", "int64", "the attempt that produced the row"),
    Column("output", "string", "the restored PNG's URL, or null", result=True),
    Column("busy_seconds", "float64", "the shard's compute time in the worker"),
    Column("shard_seconds", "float64", "the shard's wall time in the worker"),
    Column("canvas", "string", "how the model met the image: `whole`, `tiled` or `maskshift`", result=True),
    Column("tiles", "int64", "model inputs per step: 1 whole, else tiles (mask-shift: windows)", result=True),
    Column("modcrop", "string", "evaluate mode: the ground truth's top-left crop to the task's scale, "
           "`WxH -> wxh`, or null"),
    Column("padded", "string", "evaluate mode: the canvas an operator of special sizes was built at "
           "(block / Walsh CS), `WxH -> W'xH'` (padded by reflection, cropped back), or null"),
    Column("bit_depth", "int64", "bits per sample of the input (8 or 16); 16-bit inputs give 16-bit PNGs"),
    Column("icc_profile", "string", "the input's embedded colour profile (converted to sRGB), or null"),
)
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
_NAMES = frozenset(NAMES)
_RESULT = tuple(c.name for c in COLUMNS if c.result)


class Row(dict):
    """One image's row: a dict whose keys are exactly the column names (others raise KeyError)."""

    def __init__(self, **values: Any) -> None:
        super().__init__(dict.fromkeys(NAMES))
        self.update(values)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in _NAMES:
            raise KeyError(f"{key!r} is not a column of the per-image table (cluster/rows.py COLUMNS)")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __reduce__(self):
        return (_rebuild, (dict(self),))


def _rebuild(values: dict) -> Row:
    return Row(**values)


def new_row(key: str, *, task: str, mode: str, steps: int, samples: int, seed: int, worker: str, node: str,
            shard_id: int, attempt: int, solver: str | None = None,
            solver_settings: str | None = None) -> Row:
    """A failed-until-restored row of image `key` with the job's and the shard's fields filled."""
    return Row(key=key, status="failed", task=task, mode=mode, solver=solver, solver_settings=solver_settings,
               steps=int(steps), samples=int(samples),
               seed=int(seed), worker=worker, node=node, shard_id=int(shard_id), attempt=int(attempt),
               seconds=0.0)


def fail(row: Row, error: BaseException | str) -> Row:
    """Mark `row` failed with ``error = "name: reason"`` (the key when the error names no file), and
    clear every result column."""
    if isinstance(error, BadInput):
        msg = str(error)
    elif isinstance(error, BaseException):
        msg = f"{row['key']}: {type(error).__name__}: {error}"
    else:
        msg = f"{row['key']}: {error}"
    row.update(dict.fromkeys(_RESULT), status="failed", error=msg)
    return row

"""The worker configuration: what a restore actor needs to know about its job, typed and frozen.

The driver (jobs/) builds one from the job spec and sends it once to every actor; nothing else of the
job crosses the Ray boundary but shards (``Shard``) one way and summaries the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddnm.restoration import MODES, Task
from ddnm.solvers import Sampling


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """One job's settings as a worker uses them (plain values and one frozen Sampling)."""

    input_url: str
    """The root the shard keys are relative to (the resolved input folder, or a manifest's root)."""
    output_url: str
    """The job's output folder; images go under images/, panels/, std/."""
    task: str
    """A task name, or ``package.module:Class``."""
    task_settings: dict[str, Any] = field(default_factory=dict)
    """The task's settings; ``mask`` may name one mask file (any fsspec URL) for every image."""
    mode: str = "evaluate"
    """``evaluate`` (inputs are ground truth, degraded here) or ``restore`` (inputs are observations)."""
    mask_url: str | None = None
    """A folder holding one mask per image under the same key (.png or .npy)."""
    model: str = "small-prior"
    """A model registry name."""
    checkpoint: str | None = None
    """A local path or object-storage URL of the weights, "random", or None (bundled)."""
    sampling: Sampling = field(default_factory=Sampling)
    """The solver, its settings, steps, eta, sigma_y, travel, samples, seed, the model's compute dtype
    and the canvas (``ddnm.solvers.Sampling``, validated once by the driver; passed unchanged to
    ``ddnm.restoration.restore_batch``)."""
    batch_size: int | None = None
    """Images per sampler call; None: automatic (from free accelerator memory)."""
    panels: bool = False
    """Also write side-by-side panels (observation | restored | ground truth)."""
    threads: int | None = None
    """torch threads in the worker; None: torch's default."""
    lpips_weights: str | None = None
    """LPIPS backbone weights (local path or URL, fetched once per node); None: no ``lpips`` column."""
    lpips_net: str = "alex"
    """The LPIPS backbone the weights are for: ``alex`` or ``vgg``."""
    inception_weights: str | None = None
    """FID Inception weights (local path or URL); None: no features, no FID / KID."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_pixels: int | None = None
    """Images larger than this (width x height, from the header) are refused before decoding."""
    """fsspec options for every URL above."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lpips_net not in ("alex", "vgg"):
            raise ValueError(f"lpips_net must be alex or vgg, got {self.lpips_net!r}")
        if not isinstance(self.sampling, Sampling):
            raise ValueError(f"sampling must be a ddnm.solvers.Sampling, got {type(self.sampling).__name__}")

    @classmethod
    def flat(cls, **fields: Any) -> WorkerConfig:
        """A config from one flat set of keywords, the sampling ones (steps, eta, sigma_y, travel,
        samples, seed, dtype, canvas, tile, tile_overlap, solver, solver_settings) gathered into the
        Sampling (for scripts and tests; the driver builds its Sampling from the job spec)."""
        from ddnm.canvas import Canvas

        names = ("solver", "solver_settings", "steps", "eta", "sigma_y", "travel", "samples", "seed",
                 "dtype")
        given = {k: fields.pop(k) for k in names if k in fields}
        if "travel" in given:
            given["travel"] = tuple(given["travel"])
        canvas = {k: fields.pop(k) for k in ("canvas", "tile", "tile_overlap") if k in fields}
        if canvas:
            given["canvas"] = Canvas(kind=canvas.get("canvas", "auto"), tile=canvas.get("tile"),
                                     overlap=canvas.get("tile_overlap"))
        return cls(sampling=Sampling(**given), **fields)

    @property
    def dtype(self) -> str:
        """The model's compute dtype (fp32, bf16, fp16, fp64)."""
        return self.sampling.dtype or "fp32"

    @property
    def task_spec(self) -> Task:
        """The task with its settings, less a mask file (read by the worker and passed as masks)."""
        from ddnm.operators import is_mask_file

        settings = {k: v for k, v in self.task_settings.items() if not (k == "mask" and is_mask_file(v))}
        return Task.of(self.task, settings)

    @property
    def mask_file(self) -> str | None:
        """The ``mask`` setting when it names one mask file for every image, else None."""
        from ddnm.operators import is_mask_file

        mask = self.task_settings.get("mask")
        return mask if is_mask_file(mask) and not self.mask_url else None

"""The worker configuration: what a restore actor needs to know about its job, typed and frozen.

The driver (jobs/) builds one from the job spec and sends it once to every actor; nothing else of the
job crosses the Ray boundary but shards (``Shard``) one way and summaries the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ddnm.canvas import Canvas
from ddnm.restoration import MODES, Task


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """One job's settings as a worker uses them (all JSON-able)."""

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
    dtype: str = "fp32"
    """The model's compute dtype (fp32, bf16, fp16)."""
    steps: int = 100
    eta: float = 0.85
    sigma_y: float = 0.0
    """Observation noise std on the [0, 1] scale (x2 inside ddnm)."""
    travel: tuple[int, int, int] = (1, 1, 1)
    samples: int = 1
    batch_size: int | None = None
    """Images per sampler call; None: automatic (from free accelerator memory)."""
    seed: int = 0
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
    """fsspec options for every URL above."""
    canvas: str = "auto"
    """How images meet the model: auto, whole, tiled, maskshift (``ddnm.canvas.Canvas``)."""
    tile: int | None = None
    """Tile / window side; None: the model's native size."""
    tile_overlap: int | None = None
    """Pixels shared by neighbouring tiles; None: tile // 4 (tiled), tile // 2 (mask-shift)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lpips_net not in ("alex", "vgg"):
            raise ValueError(f"lpips_net must be alex or vgg, got {self.lpips_net!r}")
        object.__setattr__(self, "travel", tuple(int(v) for v in self.travel))

    @property
    def canvas_spec(self) -> Canvas:
        """The canvas setting (the worker adapts ``tile_batch`` to its device's memory)."""
        return Canvas(kind=self.canvas, tile=self.tile, overlap=self.tile_overlap)

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

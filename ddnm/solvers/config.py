"""The one frozen description of how a batch is sampled: :class:`Sampling`.

Built and validated once -- from the job spec (``jobs.spec.JobSpec.sampling``) or from
``ddnm.restore``'s arguments -- and passed unchanged through the worker configuration, the worker's
``BatchRestorer`` and ``ddnm.restoration.restore_batch`` to the solver's ``run``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ddnm.canvas import Canvas
from ddnm.solvers.base import Solver
from ddnm.solvers.registry import default_solver, get_solver


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Solver, its settings and the shared sampling settings of one run (validated on construction;
    every error names the field and the bad value)."""

    solver: str | Solver | None = None
    """A registered name (``ddnm-batch solvers``), a ``"package.module:NAME"`` path, or a Solver. None:
    ``ddnm``, or ``ddnm+`` when ``sigma_y > 0`` (:func:`ddnm.solvers.default_solver`), decided from
    ``sigma_y`` whenever it is read, so ``replace(sigma_y=...)`` keeps the default a default."""
    solver_settings: Mapping[str, Any] = field(default_factory=dict)
    """The solver's settings as given (typed); :attr:`settings` adds the defaults."""
    steps: int = 100
    """Sampling steps (at most the model's T)."""
    eta: float = 0.85
    """DDIM eta, in [0, 1] (solvers that have one; ``Solver.eta``)."""
    sigma_y: float = 0.0
    """Observation noise std on the ``[0, 1]`` image scale (the solvers get :attr:`noise_std`)."""
    travel: tuple[int, int, int] = (1, 1, 1)
    """Time travel (L, s, r); (1, 1, 1) = none (solvers that support it; ``Solver.travel``)."""
    samples: int = 1
    """Samples per image (their mean and std are the result)."""
    seed: int = 0
    """The run's seed; image ``key``'s noise comes from (seed, key)."""
    dtype: str | None = None
    """The model's compute dtype (fp32, bf16, fp16, fp64); the sampler state is float64 with fp64 (or
    float64 observations), else float32. None: fp32."""
    canvas: Canvas = field(default_factory=Canvas)
    """How images of any size meet the model (whole, tiled, mask-shift)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.canvas, str):
            set_(self, "canvas", Canvas(kind=self.canvas))
        if not isinstance(self.canvas, Canvas):
            raise ValueError(f"canvas must be a Canvas or one of its kinds, got {self.canvas!r}")
        _int("steps", self.steps, 1)
        _int("samples", self.samples, 1)
        _int("seed", self.seed, 0)
        if isinstance(self.eta, bool) or not isinstance(self.eta, int | float) or not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be a number in [0, 1], got {self.eta!r}")
        if isinstance(self.sigma_y, bool) or not isinstance(self.sigma_y, int | float) \
                or not self.sigma_y >= 0:
            raise ValueError(f"sigma_y must be a number >= 0, got {self.sigma_y!r}")
        travel = tuple(self.travel) if isinstance(self.travel, list | tuple) else None
        if travel is None or len(travel) != 3 or any(isinstance(v, bool) or not isinstance(v, int)
                                                     or v < 1 for v in travel):
            raise ValueError(f"travel must be three integers (L, s, r) >= 1, got {self.travel!r}")
        set_(self, "travel", travel)
        set_(self, "eta", float(self.eta))
        set_(self, "sigma_y", float(self.sigma_y))
        if self.dtype is not None:
            from ddnm.models import resolve_dtype

            resolve_dtype(self.dtype)
        info = self.info
        if not isinstance(self.solver_settings, Mapping):
            raise ValueError(f"solver_settings must be a mapping, got {self.solver_settings!r}")
        typed = info.resolve(self.solver_settings)
        set_(self, "solver_settings", {k: typed[k] for k in self.solver_settings})
        if travel != (1, 1, 1) and not info.travel:
            raise ValueError(f"travel={','.join(map(str, travel))}: solver {info.name} has no time travel "
                             "(use travel 1,1,1)")
        if self.canvas.kind == "maskshift" and not info.maskshift:
            raise ValueError(f"canvas=maskshift: solver {info.name} does not run in mask-shift windows "
                             "(use canvas tiled)")

    @property
    def info(self) -> Solver:
        """The solver's registry entry (the default one for ``sigma_y`` when ``solver`` is None)."""
        return get_solver(default_solver(self.sigma_y) if self.solver is None else self.solver)

    @property
    def name(self) -> str:
        """The solver's name (what the rows record)."""
        return self.info.name

    @property
    def settings(self) -> dict[str, Any]:
        """The solver's settings: its defaults updated by :attr:`solver_settings`."""
        return self.info.resolve(self.solver_settings)

    def settings_json(self) -> str:
        """:attr:`settings` as compact JSON with sorted keys (the rows' ``solver_settings``)."""
        return json.dumps(self.settings, sort_keys=True, separators=(",", ":"), default=repr)

    @property
    def noise_std(self) -> float:
        """The observation noise std on the ``[-1, 1]`` scale the solvers work on: ``2 * sigma_y``."""
        return 2.0 * self.sigma_y

    def state_dtype(self, y: torch.Tensor) -> torch.dtype:
        """The sampler state's dtype: float64 when the model computes in fp64 or y is float64."""
        from ddnm.models import resolve_dtype

        wide = y.dtype == torch.float64 or (self.dtype is not None and resolve_dtype(self.dtype)
                                            == torch.float64)
        return torch.float64 if wide else torch.float32

    def model_calls(self, T: int) -> int:
        """Model calls per sample of one image for a model of ``T`` diffusion steps; ValueError when the
        steps or the travel do not fit ``T``."""
        if self.steps > T:
            raise ValueError(f"steps={self.steps}: the model has {T} diffusion steps; give at most {T}")
        return int(self.info.calls(self.steps, T, self.travel, self.settings))

    def replace(self, **changes: Any) -> Sampling:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

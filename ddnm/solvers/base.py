"""What a solver is: one registry entry with its settings table, its needs and one ``run`` function.

Every solver restores ``x`` from ``y = A x + n`` with the same diffusion prior ``eps = model(x_t, t)``
and the same exact operators (``ddnm.operators``). The contract (docs/INTERFACES.md)::

    run(eps, y, op, alpha_bar, generators, sampling, callback) -> SampleOutput

* ``eps``: the model, or the tiled wrapper of it (``ddnm.sampling.TiledEps``): the canvas is not the
  solver's business; mask-shift calls ``run`` window by window.
* ``y``: (B, ...) observations on the ``[-1, 1]`` scale, in the sampler state's dtype; ``op`` the
  operator built for the B images; ``alpha_bar`` the model's (T,) schedule; ``generators`` one per
  image (all noise is drawn from them, so a result depends neither on the batch nor on the worker).
* ``sampling``: the frozen :class:`ddnm.solvers.Sampling` (steps, eta, sigma_y, travel, and
  ``sampling.settings``: this solver's settings with defaults filled in and types checked).
* ``callback(step_index, t, x0_hat)`` after every model step, or None.

``run`` is called under ``torch.no_grad()``; a solver that needs gradients through the network
(``grad=True``) enables them itself around the calls that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddnm.operators import coerce

Settings = dict[str, tuple[Any, type, str]]
"""``{name: (default, type, help)}``, as a task's settings; a help text ends with the default's source."""

NEEDS = {
    "svd": "an SVD view (V, Vt, singulars): sr_avgpool, sr_bicubic, colorize, inpaint, deblur_*, "
           "cs_*, denoise, old_photo have one",
}


def steps_calls(steps: int, T: int, travel: tuple[int, int, int], settings: Mapping[str, Any]) -> int:
    """Model calls per image of a solver that calls the model once per step."""
    return int(steps)


@dataclass(frozen=True, kw_only=True)
class Solver:
    """One registered solver (``ddnm.solvers.SOLVERS``)."""

    name: str
    """Registry name (``--solver NAME``)."""
    description: str
    """One line for the ``solvers`` listing."""
    paper: str
    """Authors, title, venue and year of the method."""
    run: Callable[..., Any]
    """``run(eps, y, op, alpha_bar, generators, sampling, callback) -> SampleOutput`` (module docs)."""
    settings: Settings = field(default_factory=dict)
    """The solver's own settings (``--set-solver k=v``), beyond steps / eta / sigma_y / travel."""
    needs: frozenset[str] = frozenset()
    """What it needs from the operator beyond ``A`` and ``A_pinv``: names of :data:`NEEDS`."""
    grad: bool = False
    """Whether it needs gradients through the network (vector-Jacobian products, DPS-style steps)."""
    travel: bool = False
    """Whether it supports time travel (``travel`` other than (1, 1, 1))."""
    eta: bool = False
    """Whether it reads the shared ``eta`` (DDIM's); solvers that do not ignore it."""
    maskshift: bool = True
    """Whether it can run in mask-shift windows (whose operator has an identity pseudo-inverse)."""
    calls: Callable[[int, int, tuple[int, int, int], Mapping[str, Any]], int] = steps_calls
    """``calls(steps, T, travel, settings)``: model calls per image."""
    paper_steps: int | None = None
    """The number of steps (``--steps``) its paper ran for 256 px SR, deblurring and inpainting: a
    reference for the listing and the bench (a run's steps are always ``Sampling.steps``)."""
    check: Callable[[Mapping[str, Any]], None] | None = None
    """``check(settings)`` raises ValueError on a bad combination of settings (after typing)."""
    memory: float = 1.0
    """Accelerator memory per image relative to one forward pass without gradients (a backward pass
    through the network costs several): the worker's automatic batch size divides by it."""

    def resolve(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``given``, typed by :func:`ddnm.operators.coerce`; ValueError naming an
        unknown setting or a bad value."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.settings))
        if unknown:
            known = ", ".join(sorted(self.settings)) or "(none)"
            raise ValueError(f"solver {self.name!r} has no setting {unknown[0]!r}; its settings: {known}")
        out = {k: v[0] for k, v in self.settings.items()}
        for k, v in given.items():
            out[k] = coerce(v, self.settings[k][1], name=k)
        if self.check is not None:
            self.check(out)
        return out

    def refusal(self, op, *, task: str | None = None) -> str | None:
        """Why this solver cannot run on the operator ``op`` (named ``task``), or None."""
        task = task or getattr(op, "name", None) or type(op).__name__
        if "svd" in self.needs and not getattr(op, "has_svd", False):
            return f"solver {self.name} needs an SVD of the operator, and task {task} has none"
        return None

    def listing(self) -> dict[str, Any]:
        """A JSON-ready row for ``ddnm-batch solvers --json``."""
        return {
            "name": self.name,
            "description": self.description,
            "paper": self.paper,
            "settings": {k: {"default": d, "type": t.__name__, "help": h}
                         for k, (d, t, h) in self.settings.items()},
            "needs": sorted(self.needs),
            "grad": self.grad,
            "travel": self.travel,
            "eta": self.eta,
            "maskshift": self.maskshift,
            "paper_steps": self.paper_steps,
            "memory": self.memory,
        }

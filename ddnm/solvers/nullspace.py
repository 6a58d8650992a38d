"""DDNM and DDNM+ (Wang, Yu, Zhang, ICLR 2023) as the registry's first entries.

Both run :func:`ddnm.sampling.sampler.ddnm_loop` (its docstring has the equations):

* ``ddnm``: the range-null-space projection ``x0 = x0_t - A^+(A x0_t - y)`` at every step (paper
  eq. 13), whatever the noise in ``y`` (on noisy ``y`` the noise passes into the result's range space:
  the paper's baseline for its noisy experiments);
* ``ddnm+``: the noise-aware update of paper eq. 17-19 (per singular value where the operator has an
  SVD, else the scalar form); at ``sigma_y = 0`` it is ``ddnm``.

A run that names no solver gets ``ddnm``, or ``ddnm+`` when ``sigma_y > 0``: what every release before
the registry ran, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ddnm.sampling.sampler import ddnm_loop
from ddnm.sampling.schedule import model_calls, travel_steps
from ddnm.solvers.base import Solver

PAPER = "Wang, Yu, Zhang: Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model, ICLR 2023"


def travel_calls(steps: int, T: int, travel: tuple[int, int, int], settings: Mapping[str, Any]) -> int:
    """Model calls per image of a step list with time travel (:func:`ddnm.sampling.travel_steps`)."""
    return model_calls(travel_steps(steps, T, *travel))


def _run(eps, y, op, alpha_bar, generators, sampling, callback=None, *, plus: bool):
    return ddnm_loop(eps, y, op, alpha_bar, steps=sampling.steps, eta=sampling.eta,
                     sigma_y=sampling.noise_std if plus else 0.0, travel=sampling.travel,
                     generators=generators, callback=callback)


def run_ddnm(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DDNM: the noiseless projection at every step."""
    return _run(eps, y, op, alpha_bar, generators, sampling, callback, plus=False)


def run_ddnm_plus(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DDNM+: the noise-aware update (the projection when sigma_y = 0)."""
    return _run(eps, y, op, alpha_bar, generators, sampling, callback, plus=True)


_COMMON = dict(paper=PAPER, travel=True, eta=True, calls=travel_calls, paper_steps=100)
DDNM = Solver(name="ddnm", run=run_ddnm, description="range-null-space projection every step (paper "
              "eq. 13), with time travel", **_COMMON)
DDNM_PLUS = Solver(name="ddnm+", run=run_ddnm_plus, description="DDNM with the noise-aware update for "
                   "sigma_y > 0 (paper eq. 17-19; per singular value where the operator has an SVD)",
                   **_COMMON)

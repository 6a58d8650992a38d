"""DPS (Chung, Kim, Mccann, Klasky, Ye: Diffusion Posterior Sampling for General Noisy Inverse
Problems, ICLR 2023).

An ancestral (DDPM) step from Tweedie's ``x0``, then a step down the gradient of the measurement error
through the network (paper Algorithm 1):

    x_next = sqrt(abar_next) x0 + c1 z + c2 eps - zeta grad_{x_t} ||y - A x0(x_t)||

with DDIM's ``c1, c2`` at eta = 1 (the DDPM posterior for adjacent steps). The norm (not its square)
is the paper's choice, so ``zeta`` is a step relative to the current error; it is taken per image, so a
result does not depend on the batch. ``x0`` is clipped to [-1, 1] for the ancestral step, as DPS's
code does (``clip_denoised``); the gradient is taken of the unclipped ``x0`` (DPS's code differentiates
the clipped one, so it has no gradient where ``x0`` is clipped).

Two steps agree with deepinv 0.5.0's ``DPS`` to 3e-7 (its denoiser runs in float32; inpainting, x2 SR)
with its ``lambda`` set per step to ``2 zeta / (s_t s_next sigma_t^2 (1 - sigma_next^2 / sigma_t^2))``
(its weight enters the score, which its solver scales) and ``x0`` inside [-1, 1]
(tests/unit/test_vs_deepinv.py).
"""

from __future__ import annotations

import math

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import abar_at, ddim_coefficients, noise, step_pairs, x0_with_grad

PAPER = ("Chung, Kim, Mccann, Klasky, Ye: Diffusion Posterior Sampling for General Noisy Inverse "
         "Problems, ICLR 2023")


def run_dps(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DPS's sampler (module docs)."""
    zeta = sampling.settings["zeta"]
    dtype, shape = y.dtype, tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = step_pairs(sampling.steps, len(abar))
    x = noise(generators, shape, y)
    x0 = x
    for k, (t, t_next) in enumerate(pairs):
        ab, ab_next = abar[t], abar_at(abar, t_next)
        leaf, e, x0_g = x0_with_grad(eps, x, t, ab, shape[0])
        with torch.enable_grad():
            resid = (y - op.A(x0_g).to(dtype)).flatten(1)
            norm = resid.pow(2).sum(1).clamp_min(1e-30).sqrt()
            (grad,) = torch.autograd.grad(norm.sum(), leaf)
        x0 = x0_g.detach().clamp(-1.0, 1.0)
        e = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        del leaf, x0_g, resid, norm
        c1, c2 = ddim_coefficients(ab, ab_next, 1.0)
        z = noise(generators, shape, y)
        x = math.sqrt(ab_next) * x0 + c1 * z + c2 * e - zeta * grad
        if t_next < 0:
            x0 = x
        if callback is not None:
            callback(k, t, x0)
    return SampleOutput(x=x0, model_calls=len(pairs))


DPS = Solver(
    name="dps",
    description="ancestral sampling with the gradient of ||y - A x0|| through the network",
    paper=PAPER,
    run=run_dps,
    settings={
        "zeta": (1.0, float, "step size on the gradient of the error norm (RED-diff repo "
                             "_configs/algo/dps.yaml, their DPS runs: 1.0 for SR x4, 0.1 for inpainting)"),
    },
    grad=True,
    maskshift=False,
    paper_steps=1000,
    memory=3.0,
)

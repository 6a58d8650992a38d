"""PiGDM (Song, Vahdat, Mardani, Kautz: Pseudoinverse-Guided Diffusion Models for Inverse Problems,
ICLR 2023).

A DDIM step from Tweedie's ``x0`` plus a guidance term, a vector-Jacobian product through the network:

    g      = (v^T d x0 / d x_t)^T,  v = r_t^2 A^T (r_t^2 A A^T + sigma_y^2 I)^-1 (y - A x0),
    r_t^2  = 1 - abar_t
    x_next = sqrt(abar_next) x0 + c1 z + c2 eps + w sqrt(abar_next) sqrt(abar_t) g

(paper eq. 7-8 and Algorithm 1; the coefficient of ``g`` is the one of NVIDIA's code, RED-diff repo
algos/pgdm.py). Noiseless, ``v = A^+ (y - A x0)`` (exact pseudo-inverse); noisy, ``v`` is computed per
singular value where the operator has an SVD and by conjugate gradient in y-space otherwise (``A^T`` by
autograd through the operator). The start is ``sqrt(abar_T) A^+ y + sqrt(1 - abar_T) z``, as that code's.
"""

from __future__ import annotations

import math

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import (
    abar_at,
    adjoint,
    cg,
    ddim_coefficients,
    noise,
    step_pairs,
    svd_parts,
    vjp,
    x0_with_grad,
)

PAPER = ("Song, Vahdat, Mardani, Kautz: Pseudoinverse-Guided Diffusion Models for Inverse Problems, "
         "ICLR 2023")


def guidance_vector(op, y, x0, r2: float, sy: float, *, cg_iters: int, cg_tol: float):
    """``v = r2 A^T (r2 A A^T + sy^2 I)^-1 (y - A x0)`` (``A^+ (y - A x0)`` when ``sy = 0``)."""
    shape = (x0.shape[0], *op.x_shape)
    if sy <= 0:
        return op.A_pinv(y - op.A(x0).to(y.dtype)).to(x0.dtype).reshape(shape)
    if getattr(op, "has_svd", False):
        s, _, uty = svd_parts(op, y, x0.dtype)
        c = (r2 * s / (r2 * s * s + sy * sy)) * (uty - s * op.Vt(x0).to(x0.dtype))
        return op.V(c).to(x0.dtype).reshape(shape)
    resid = y - op.A(x0).to(y.dtype)
    u = cg(lambda w: r2 * op.A(adjoint(op, w)).to(w.dtype) + (sy * sy) * w, resid, torch.zeros_like(resid),
           iters=cg_iters, tol=cg_tol)
    return r2 * adjoint(op, u).to(x0.dtype)


def run_pigdm(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """PiGDM's sampler (module docs)."""
    st = sampling.settings
    w, eta, sy = st["weight"], st["ddim_eta"], sampling.noise_std
    dtype, shape = y.dtype, tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = step_pairs(sampling.steps, len(abar))
    ab_T = abar[pairs[0][0]]
    start = op.A_pinv(y).to(dtype).reshape(y.shape[0], *shape)
    x = math.sqrt(ab_T) * start + math.sqrt(1.0 - ab_T) * noise(generators, shape, y)
    x0 = x
    for k, (t, t_next) in enumerate(pairs):
        ab, ab_next = abar[t], abar_at(abar, t_next)
        leaf, e, x0_g = x0_with_grad(eps, x, t, ab, shape[0])
        x0, e = x0_g.detach(), e.detach()
        v = guidance_vector(op, y, x0, 1.0 - ab, sy, cg_iters=st["cg_iters"], cg_tol=st["cg_tol"])
        g = vjp(x0_g, leaf, v)
        del leaf, x0_g
        c1, c2 = ddim_coefficients(ab, ab_next, eta)
        z = noise(generators, shape, y)
        x = math.sqrt(ab_next) * x0 + c1 * z + c2 * e + (w * math.sqrt(ab_next) * math.sqrt(ab)) * g
        if t_next < 0:
            x0 = x
        if callback is not None:
            callback(k, t, x0)
    return SampleOutput(x=x0, model_calls=len(pairs))


PIGDM = Solver(
    name="pigdm",
    description="DDIM with pseudo-inverse guidance (a vector-Jacobian product through the network)",
    paper=PAPER,
    run=run_pigdm,
    settings={
        "weight": (1.0, float, "guidance weight w (RED-diff repo _configs/algo/pgdm.yaml: "
                               "grad_term_weight 1)"),
        "ddim_eta": (0.0, float, "DDIM eta of the unguided step (RED-diff repo "
                                 "_configs/algo/pgdm.yaml: eta 0.0)"),
        "cg_iters": (50, int, "conjugate-gradient iterations for noisy y on operators without an SVD "
                              "(ours)"),
        "cg_tol": (1e-6, float, "relative residual at which conjugate gradient stops (ours)"),
    },
    grad=True,
    maskshift=False,
    paper_steps=100,
    memory=3.0,
)

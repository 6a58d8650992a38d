"""DiffPIR (Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool: Denoising Diffusion Models for
Plug-and-Play Image Restoration, CVPR Workshops 2023).

Half-quadratic splitting with the diffusion model as the denoiser. Per step (paper Algorithm 1):

    x0     = Tweedie's estimate from x_t (one model call)
    x0_hat = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2,     rho_t = lambda sigma_n^2 / sigma_t^2
    eps    = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) (sqrt(1 - zeta) eps + sqrt(zeta) z)

with ``sigma_t = sqrt((1 - abar_t) / abar_t)`` and ``sigma_n = max(sigma_floor, sigma_y)`` on the
``[0, 1]`` scale, as DiffPIR's code has it (its data step runs on ``[0, 1]`` images; the minimiser
does not change with the scale). The data step is closed form per singular value where the operator
has an SVD, ``(s^2 + rho) c = s (U^T y) + rho (V^T x0)``, and conjugate gradient on
``(A^T A + rho I) x = A^T y + rho x0`` otherwise. The time steps are evenly spaced (DiffPIR's code
spaces them quadratically: ``skip_type quad``).

On deepinv 0.5.0's three time steps its ``DiffPIR`` agrees state for state to 4e-7 (its schedule is
float32; inpainting, x2 SR) at ``lambda`` twice deepinv's, whose proximal step weighs ``2 rho_t``
(tests/unit/test_vs_deepinv.py). There, as in DiffPIR's code (``clip_denoised=True``), the model's
``x0`` is clipped to [-1, 1] before the data step; here it is not.
"""

from __future__ import annotations

import math

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import abar_at, adjoint, cg, eps_of, noise, step_pairs, svd_parts, tweedie

PAPER = ("Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool: Denoising Diffusion Models for Plug-and-Play "
         "Image Restoration, CVPR Workshops 2023")


def data_step(op, y, x0, rho: float, *, cg_iters: int, cg_tol: float, svd=None):
    """``argmin_x ||y - A x||^2 + rho ||x - x0||^2`` (module docs)."""
    shape = (x0.shape[0], *op.x_shape)
    if svd is not None:
        s, _, uty = svd
        c = (s * uty + rho * op.Vt(x0).to(x0.dtype)) / (s * s + rho)
        return op.V(c).to(x0.dtype).reshape(shape)
    b = adjoint(op, y).to(x0.dtype) + rho * x0
    return cg(lambda v: adjoint(op, op.A(v).to(y.dtype)).to(v.dtype) + rho * v, b, x0,
              iters=cg_iters, tol=cg_tol)


def run_diffpir(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DiffPIR's sampler (module docs)."""
    st = sampling.settings
    lam, zeta = st["lambda"], st["zeta"]
    sigma_n = max(st["sigma_floor"], sampling.sigma_y)
    dtype, shape = y.dtype, tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = step_pairs(sampling.steps, len(abar))
    svd = svd_parts(op, y, dtype) if getattr(op, "has_svd", False) else None
    x = noise(generators, shape, y)
    x0 = x
    for k, (t, t_next) in enumerate(pairs):
        ab, ab_next = abar[t], abar_at(abar, t_next)
        e = eps_of(eps, x, t, shape[0])
        x0 = tweedie(x, e, ab)
        rho = lam * sigma_n * sigma_n * ab / (1.0 - ab)
        x0 = data_step(op, y, x0, rho, cg_iters=st["cg_iters"], cg_tol=st["cg_tol"], svd=svd)
        if t_next >= 0:
            e_hat = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
            z = noise(generators, shape, y)
            x = math.sqrt(ab_next) * x0 + math.sqrt(1.0 - ab_next) * (
                math.sqrt(1.0 - zeta) * e_hat + math.sqrt(zeta) * z)
        if callback is not None:
            callback(k, t, x0)
    return SampleOutput(x=x0, model_calls=len(pairs))


def _check(settings) -> None:
    if not 0.0 <= settings["zeta"] <= 1.0:
        raise ValueError(f"diffpir zeta={settings['zeta']!r}: give a number in [0, 1]")
    if settings["lambda"] <= 0 or settings["sigma_floor"] <= 0:
        raise ValueError("diffpir lambda and sigma_floor must be > 0")


DIFFPIR = Solver(
    name="diffpir",
    description="plug-and-play: a closed-form (SVD) or conjugate-gradient data step after every denoising",
    paper=PAPER,
    run=run_diffpir,
    settings={
        "lambda": (1.0, float, "data-step weight in rho_t = lambda sigma_n^2 / sigma_t^2 (DiffPIR "
                               "repo configs/sisr.yaml, deblur.yaml and inpaint.yaml: 1)"),
        "zeta": (0.1, float, "share of fresh noise in each step (DiffPIR repo configs/sisr.yaml and "
                             "deblur.yaml: 0.1; inpaint.yaml: 1.0)"),
        "sigma_floor": (0.001, float, "smallest sigma_n on the [0, 1] scale, for noiseless y (DiffPIR repo "
                                      "main_ddpir_*.py: max(0.001, noise_level_img))"),
        "cg_iters": (50, int, "conjugate-gradient iterations on operators without an SVD (ours)"),
        "cg_tol": (1e-6, float, "relative residual at which conjugate gradient stops (ours)"),
    },
    maskshift=False,
    paper_steps=100,
    check=lambda settings: _check(settings),
)

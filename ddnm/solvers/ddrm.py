"""DDRM (Kawar, Elad, Ermon, Song: Denoising Diffusion Restoration Models, NeurIPS 2022).

DDRM works in the operator's SVD basis ``A = U diag(s_i) V^T``. With the VE noise levels
``sigma_t = sqrt((1 - abar_t) / abar_t)``, ``sigma_y`` the observation noise (``[-1, 1]`` scale),
``ybar_i = (U^T y)_i / s_i`` and ``x0_i, eps_i, z_i`` the coefficients of Tweedie's ``x0``, the model's
``eps`` and fresh noise, one step to ``sigma = sigma_next`` sets each coefficient (paper eq. 7-8):

* null space (``s_i = 0``): ``x0_i + sigma sqrt(1 - eta^2) eps_i + sigma eta z_i``;
* ``s_i sigma < sigma_y`` (the sample is less noisy than y there):
  ``x0_i + sigma sqrt(1 - eta^2) (ybar_i - x0_i) s_i / sigma_y + sigma eta z_i``;
* ``s_i sigma >= sigma_y``:
  ``eta_b ybar_i + (1 - eta_b) x0_i + sqrt(sigma^2 - eta_b^2 sigma_y^2 / s_i^2) z_i``,

and ``x_next = sqrt(abar_next) V(c)``. The start (``init = "y"``) draws ``x_T`` from DDRM's
``q(x_T | y)``: ``ybar`` plus the rest of the noise budget on the large singular values, pure noise
elsewhere; ``init = "noise"`` starts from pure noise as DDNM does. All fresh noise is ``V^T z`` of one
pixel-space draw per step from the image's generator, the draw DDNM makes: so with
``eta = eta_b = 1``, ``sigma_y = 0`` and ``init = "noise"`` DDRM is DDNM sample for sample (DDNM
paper, sec. 3.4), which tests/unit/test_solver_math.py checks to float tolerance.

Against the public code (bahjat-kawar/ddrm, ``efficient_generalized_steps``, run here on CPU in
float64 with its noise and ours switched off, on our operators and the random-weight ``tiny`` model,
10 steps, sigma_y 0 / 0.05 / 0.1, eta 0.85 / 0.5, eta_b 1 / 0.7, SR, deblurring, inpainting): every
step's ``x0`` agrees to 1e-13 once two choices of that code are set aside. It scales ``x_T`` by
``1 / sigma_T`` where the VP process has ``sqrt(abar_T)`` (a factor ``1 / sqrt(1 - abar_T)`` larger,
6e-5 at t = 900); and with sigma_y = 0 its strict inequalities put the last step's range coefficients
in no branch, so it returns the last ``x0`` unprojected, where the paper's rule (``>=``, used here)
puts ``ybar`` there and the result is consistent.

Four steps agree state for state with deepinv 0.5.0's ``DDRM`` to 4e-14 in float64 (inpainting, x2 SR)
once its ``randn / sqrt(2)`` noise and its null-space start centred on 0 in [0, 1] are set aside
(tests/unit/test_vs_deepinv.py).
"""

from __future__ import annotations

import math

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import abar_at, eps_of, noise, step_pairs, svd_parts, tweedie

PAPER = "Kawar, Elad, Ermon, Song: Denoising Diffusion Restoration Models, NeurIPS 2022"


def run_ddrm(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DDRM's sampler (module docs); ``sampling.eta`` is DDRM's eta (0.85 in the paper)."""
    settings, eta = sampling.settings, sampling.eta
    eta_b, sy = settings["eta_b"], sampling.noise_std
    dtype = y.dtype
    shape = tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = step_pairs(sampling.steps, len(abar))
    s, rng, uty = svd_parts(op, y, dtype)
    inv = torch.where(rng, 1.0 / torch.where(rng, s, 1.0), 0.0)
    ybar = uty * inv
    c_eps = math.sqrt(1.0 - eta * eta)

    def V(c):
        return op.V(c).to(dtype).reshape(c.shape[0], *shape)

    def Vt(x):
        return op.Vt(x).to(dtype)

    z = Vt(noise(generators, shape, y))
    ab_T = abar[pairs[0][0]]
    if settings["init"] == "y":
        sig = math.sqrt((1.0 - ab_T) / ab_T)
        large = rng & (s * sig > sy)
        rest = torch.sqrt(torch.clamp(sig * sig - (sy * inv) ** 2, min=0.0))
        c = torch.where(large, ybar + rest * z, sig * z)
        x = math.sqrt(ab_T) * V(c)
    else:
        x = V(z)
    x0 = x
    for k, (t, t_next) in enumerate(pairs):
        ab, ab_next = abar[t], abar_at(abar, t_next)
        e = eps_of(eps, x, t, shape[0])
        x0 = tweedie(x, e, ab)
        sig = math.sqrt((1.0 - ab_next) / ab_next)
        c0, ce, cz = Vt(x0), Vt(e), Vt(noise(generators, shape, y))
        null = c0 + (sig * c_eps) * ce + (sig * eta) * cz
        if sy > 0:
            after = c0 + (sig * c_eps / sy) * s * (ybar - c0) + (sig * eta) * cz
        else:
            after = null
        before = eta_b * ybar + (1.0 - eta_b) * c0 + torch.sqrt(
            torch.clamp(sig * sig - (eta_b * sy * inv) ** 2, min=0.0)) * cz
        c = torch.where(~rng, null, torch.where(s * sig >= sy, before, after))
        x = math.sqrt(ab_next) * V(c)
        if t_next < 0:
            x0 = x
        if callback is not None:
            callback(k, t, x0)
    return SampleOutput(x=x0, model_calls=len(pairs))


DDRM = Solver(
    name="ddrm",
    description="SVD-space variational sampler with eta (shared --eta) and eta_b; needs the operator's SVD",
    paper=PAPER,
    run=run_ddrm,
    settings={
        "eta_b": (1.0, float, "weight of y's coefficients where the sample is noisier than y "
                              "(DDRM paper sec. 5 and its configs: 1.0)"),
        "init": ("y", str, "'y': x_T from q(x_T | y) as in DDRM's code; 'noise': pure noise, as DDNM "
                           "(DDRM repo, functions/denoising.py)"),
    },
    needs=frozenset({"svd"}),
    eta=True,
    maskshift=False,
    paper_steps=20,
    check=lambda settings: _check(settings),
)


def _check(settings) -> None:
    if settings["init"] not in ("y", "noise"):
        raise ValueError(f"ddrm init={settings['init']!r}: give 'y' or 'noise'")
    if not 0.0 <= settings["eta_b"] <= 1.0:
        raise ValueError(f"ddrm eta_b={settings['eta_b']!r}: give a number in [0, 1]")

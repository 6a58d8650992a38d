"""The DDNM / DDNM+ sampler loop (Wang, Yu, Zhang, ICLR 2023), with time travel.

One step from ``t`` to ``t_prev`` (``a = sqrt(alpha_bar_{t_prev})``, ``s = sqrt(1 - alpha_bar_{t_prev})``):

    x0_t   = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)                      (paper eq. 12)
    x0_hat = x0_t - A_pinv(A x0_t - y)                                                  (eq. 13)
    x_prev = a x0_hat + s eta z + s sqrt(1 - eta^2) eps                       (DDIM-style, eta = 0.85)

DDNM+ (``sigma_y > 0``, noise std of ``y`` on the ``[-1, 1]`` image scale) scales the correction per
singular value in the SVD basis ``A = U diag(s_i) V^T`` (paper eq. 17-19 and appendix, after DDRM):

* ``s >= a sigma_y / s_i``: ``lambda_i = 1``; the rest ``r_i = sqrt(s^2 - a^2 sigma_y^2 / s_i^2)`` of the
  noise budget is fresh noise ``eta r_i`` plus ``sqrt(1 - eta^2) r_i`` of ``eps``;
* otherwise: ``lambda_i = s_i s sqrt(1 - eta^2) / (a sigma_y)``, fresh noise ``s eta``, no ``eps``;
* null space (``s_i = 0``): the noiseless rule.

The reference code puts no ``eps`` in the first branch; splitting the rest like the noiseless rule
keeps the variance ``s^2`` and makes every intermediate ``x0_hat`` of DDNM+ equal DDNM's, sample by
sample, as ``sigma_y -> 0``. The final image differs: at the last step DDNM+ skips the projection
(1.2e-2 apart at ``sigma_y = 1e-9`` on the tiny random model, 10 steps, 2x SR).
At the last step (``s = 0``) DDNM+ keeps ``x0_t`` (``lambda = 0``), as the reference does.
Operators without an SVD use the paper's scalar form: ``lambda = min(1, s / (a sigma_y))``,
``gamma = s^2 - (a lambda sigma_y)^2`` and ``x_prev = a x0_hat + sqrt(gamma) (eta z + sqrt(1-eta^2) eps)``.

Time travel (paper sec. 3.3): a travel back from ``t`` to ``t + L*skip`` re-noises the last step's
``x0_hat`` (the projected estimate, so the known part of the image survives; the reference code
re-noises ``x0_t``) with fresh noise and no model call.

A ``[0, 1]``-scale noise level (the paper's and the job files' ``sigma_y``) is ``2 *`` this one;
``ddnm.api`` converts at the boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddnm.sampling.schedule import model_calls, travel_steps


@dataclass(frozen=True, kw_only=True)
class SampleOutput:
    """Result of :func:`ddnm_sample`."""

    x: torch.Tensor
    """(B, C, H, W) final ``x0_hat`` on the ``[-1, 1]`` scale, before any clamping."""
    model_calls: int
    """Model calls per image (each call evaluates the whole batch once)."""


def image_generator(
    seed: int, key: str, device: torch.device | str = "cpu", *extra: object
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by ``sha256(json([seed, key, *extra]))``.

    The same (seed, key, extra) always gives the same noise, whatever the batch, shard or worker.
    """
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    blob = json.dumps([seed, str(key), *[str(e) for e in extra]]).encode()
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1))
    return g


def _noise(generators: Sequence[torch.Generator], shape, like: torch.Tensor) -> torch.Tensor:
    """(B, *shape) standard normal noise, image b drawn from its own generator."""
    return torch.stack([torch.randn(shape, generator=g, device=like.device, dtype=like.dtype)
                        for g in generators])


@torch.no_grad()
def ddnm_sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    op,
    alpha_bar: torch.Tensor,
    *,
    steps: int = 100,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    travel: tuple[int, int, int] = (1, 1, 1),
    generators: Sequence[torch.Generator],
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> SampleOutput:
    """Sample ``x0`` with ``A x0 ~= y`` by DDNM (``sigma_y == 0``) or DDNM+ (``sigma_y > 0``).

    model: ``eps = model(x_t, t)``, x_t (B, C, H, W), t (B,) int64; extra output channels (learned
    sigma) are dropped. y: observations, leading dim B, on the device everything runs on (the model's
    and the operator's). op: an ``Operator`` (``A``, ``A_pinv``, ``x_shape``; ``has_svd``, ``Vt``,
    ``V``, ``singulars`` for DDNM+). alpha_bar: (T,) schedule. travel: (L, s, r), see
    :func:`ddnm.sampling.schedule.travel_steps`. generators: one per image, on y's device.
    callback(step_index, t, x0_hat) is called after every model step. The state is float64 when y is,
    else float32; no host synchronisation happens inside the loop.
    """
    _validate(y, op, alpha_bar, steps, eta, sigma_y, travel, generators)
    return ddnm_loop(model, y, op, alpha_bar, steps=steps, eta=eta, sigma_y=sigma_y, travel=travel,
                     generators=generators, callback=callback)


def ddnm_loop(model, y, op, alpha_bar, *, steps, eta, sigma_y, travel, generators,
              callback=None) -> SampleOutput:
    """:func:`ddnm_sample` without its argument checks (the solver registry's ``ddnm`` and ``ddnm+``
    entries call it with settings that ``ddnm.solvers.Sampling`` has validated)."""
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    y = y.to(dtype)
    B, shape = y.shape[0], tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = travel_steps(steps, len(abar), *travel)
    plus = _SvdPlus(op, dtype, y.device) if sigma_y > 0 and getattr(op, "has_svd", False) else None

    x = _noise(generators, shape, y)
    x0 = x
    k = 0
    for t, t_next in pairs:
        ab_next = 1.0 if t_next < 0 else abar[t_next]
        a, s = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        if t_next > t:  # travel back: re-noise the last x0_hat to level t_next, no model call
            x = a * x0 + s * _noise(generators, shape, x)
            continue
        tt = torch.full((B,), t, dtype=torch.long, device=x.device)
        eps = model(x, tt)[:, : shape[0]].to(dtype)
        x0_t = (x - math.sqrt(1.0 - abar[t]) * eps) / math.sqrt(abar[t])
        z = _noise(generators, shape, x)
        if sigma_y <= 0:
            x0 = x0_t - op.A_pinv(op.A(x0_t) - y).to(dtype)
            x = a * x0 + (s * eta) * z + (s * math.sqrt(1.0 - eta**2)) * eps
        elif plus is not None:
            x0, x = plus.step(x0_t, y, z, eps, a, s, eta, sigma_y)
        else:
            x0, x = _scalar_plus_step(op, x0_t, y, z, eps, a, s, eta, sigma_y)
        if callback is not None:
            callback(k, t, x0)
        k += 1
    assert k == model_calls(pairs)
    return SampleOutput(x=x0, model_calls=k)


def _scalar_plus_step(op, x0_t, y, z, eps, a, s, eta, sigma_y):
    """DDNM+ with one lambda_t and gamma_t for the whole image (paper eq. 17, 19)."""
    lam = 1.0 if s >= a * sigma_y else s / (a * sigma_y)
    gamma = max(s * s - (a * lam * sigma_y) ** 2, 0.0)
    x0 = x0_t - lam * op.A_pinv(op.A(x0_t) - y).to(x0_t.dtype)
    g = math.sqrt(gamma)
    return x0, a * x0 + (g * eta) * z + (g * math.sqrt(1.0 - eta**2)) * eps


class _SvdPlus:
    """DDNM+ per singular value: holds ``s_i`` and ``1/s_i`` (0 on the null space) on the device."""

    def __init__(self, op, dtype, device):
        self.op = op
        sv = op.singulars().to(device=device, dtype=dtype)
        self.sv = sv if sv.dim() == 2 else sv.unsqueeze(0)
        self.range = self.sv > 0
        self.inv = torch.where(self.range, 1.0 / torch.where(self.range, self.sv, 1.0), 0.0)

    def step(self, x0_t, y, z, eps, a, s, eta, sigma_y):
        op, dtype = self.op, x0_t.dtype
        resid = op.Vt(op.A_pinv(op.A(x0_t) - y).to(dtype)).to(dtype)  # (B, D): x0_t_i - ybar_i on the range
        data_std = (a * sigma_y) * self.inv  # std of a * ybar_i
        full = self.range & (data_std <= s)
        c = math.sqrt(1.0 - eta**2)
        if a * sigma_y > 0:
            lam = torch.where(full, 1.0, (s * c / (a * sigma_y)) * self.sv)
        else:
            lam = torch.ones_like(self.sv)
        rest = torch.sqrt(torch.clamp(s * s - data_std * data_std, min=0.0))
        d1 = torch.where(full, eta * rest, s * eta)
        d2 = torch.where(full, c * rest, torch.where(self.range, 0.0, s * c))
        x0 = x0_t - op.V(lam * resid).to(dtype)
        noise = op.V(d1 * op.Vt(z).to(dtype) + d2 * op.Vt(eps).to(dtype)).to(dtype)
        return x0, a * x0 + noise


def _validate(y, op, alpha_bar, steps, eta, sigma_y, travel, generators):
    if not isinstance(y, torch.Tensor) or y.dim() < 1:
        raise ValueError(f"y must be a tensor with a leading batch dim, got {type(y).__name__}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if not float(sigma_y) >= 0.0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y!r}")
    if not isinstance(alpha_bar, torch.Tensor) or alpha_bar.dim() != 1:
        raise ValueError("alpha_bar must be a (T,) tensor")
    if not (isinstance(travel, (tuple, list)) and len(travel) == 3):
        raise ValueError(f"travel must be (L, s, r), got {travel!r}")
    if len(generators) != y.shape[0]:
        raise ValueError(f"generators must hold one generator per image: got {len(generators)} "
                         f"for a batch of {y.shape[0]}")
    if len(tuple(op.x_shape)) != 3:
        raise ValueError(f"op.x_shape must be (C, H, W), got {op.x_shape!r}")

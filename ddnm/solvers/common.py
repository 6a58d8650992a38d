"""What the solvers share: the step grid, noise, Tweedie's x0, vector-Jacobian products, A^T, CG.

Every helper works on a batch of B images and keeps images independent (per-image norms, per-image
conjugate gradient), so a result depends neither on the batch nor on the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ddnm.sampling.sampler import _noise
from ddnm.sampling.schedule import travel_steps


def step_pairs(steps: int, T: int) -> list[tuple[int, int]]:
    """``[(t, t_next), ...]``: ``steps`` evenly spaced model steps from T-1 down, the last to -1."""
    return travel_steps(steps, T, 1, 1, 1)


def abar_at(abar: Sequence[float], t: int) -> float:
    """alpha_bar at ``t``; 1 at ``t = -1`` (the clean image)."""
    return 1.0 if t < 0 else float(abar[t])


def noise(generators, shape, like: torch.Tensor) -> torch.Tensor:
    """(B, *shape) standard normal noise, image b from its own generator (as the DDNM sampler draws)."""
    return _noise(generators, shape, like)


def eps_of(model, x: torch.Tensor, t: int, channels: int) -> torch.Tensor:
    """``model(x, t)`` with the extra output channels (learned sigma) dropped, in x's dtype."""
    tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    return model(x, tt)[:, :channels].to(x.dtype)


def tweedie(x: torch.Tensor, eps: torch.Tensor, ab: float) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    return (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)


def ddim_coefficients(ab: float, ab_next: float, eta: float) -> tuple[float, float]:
    """DDIM's (c1, c2) for ``x_next = sqrt(ab_next) x0 + c1 z + c2 eps`` (Song et al. 2021, eq. 12)."""
    if ab_next >= 1.0:
        return 0.0, 0.0
    c1 = eta * math.sqrt(max((1.0 - ab / ab_next) * (1.0 - ab_next) / (1.0 - ab), 0.0))
    return c1, math.sqrt(max(1.0 - ab_next - c1 * c1, 0.0))


def x0_with_grad(model, x: torch.Tensor, t: int, ab: float, channels: int):
    """(x_t leaf requiring grad, eps, x0) with autograd on, for a vector-Jacobian product d x0 / d x_t."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        eps = eps_of(model, leaf, t, channels)
        return leaf, eps, tweedie(leaf, eps, ab)


def vjp(output: torch.Tensor, leaf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(v^T d output / d leaf)^T``; frees the graph."""
    with torch.enable_grad():
        (g,) = torch.autograd.grad(output, leaf, grad_outputs=v.to(output.dtype))
    return g.detach()


def adjoint(op, v: torch.Tensor) -> torch.Tensor:
    """``A^T v`` for any operator whose ``A`` is written in differentiable torch (all built-in ones):
    the gradient of ``<A x, v>``, exact for a linear ``A``."""
    with torch.enable_grad():
        x = torch.zeros((v.shape[0], *op.x_shape), dtype=v.dtype, device=v.device, requires_grad=True)
        (g,) = torch.autograd.grad(op.A(x), x, grad_outputs=v)
    return g.detach()


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) inner products over everything but the batch dim."""
    return (a * b).flatten(1).sum(1)


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor, *,
       iters: int, tol: float) -> torch.Tensor:
    """Conjugate gradient for ``apply(x) = b`` (apply symmetric positive definite), each image on its
    own; stops after ``iters`` or when every image's residual is below ``tol`` relative to ``b``."""
    r = b - apply(x)
    p = r.clone()
    rr = batch_dot(r, r)
    stop = (tol * tol) * batch_dot(b, b).clamp_min(1e-30)
    shape = (-1,) + (1,) * (b.dim() - 1)
    for _ in range(int(iters)):
        if bool((rr <= stop).all()):
            break
        ap = apply(p)
        alpha = torch.where(rr > stop, rr / batch_dot(p, ap).clamp_min(1e-30), 0.0)
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * ap
        rr_new = batch_dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-30)).view(shape) * p
        rr = rr_new
    return x


def svd_parts(op, y: torch.Tensor, dtype: torch.dtype):
    """(s, range mask, Ut y) of an SVD operator, s as (1 or B, D) on y's device."""
    s = op.singulars().to(device=y.device, dtype=dtype)
    s = s if s.dim() == 2 else s.unsqueeze(0)
    return s, s > 0, op.Ut(y).to(dtype)

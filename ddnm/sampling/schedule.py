"""Noise schedules and the step lists of the DDNM sampler (pure functions, no torch state).

Conventions: timesteps ``t`` are integers in ``[0, T)``; ``t = -1`` stands for the clean image, with
``alpha_bar_{-1} = 1``. A schedule is the ``(T,)`` float64 tensor
``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.
"""

from __future__ import annotations

import math

import torch


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``alpha_bar`` of the linear beta schedule of DDPM (every public checkpoint here uses it).

    ``beta_t = beta_start + (beta_end - beta_start) * t / (T - 1)``; returns ``(T,)`` float64.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T!r}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, "
                         f"beta_end={beta_end!r}")
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """``alpha_bar`` of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), ``(T,)`` float64.

    ``f(u) = cos^2((u + s) / (1 + s) * pi / 2)``, ``beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta)``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T!r}")

    def f(u: float) -> float:
        return math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = torch.tensor([min(1.0 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)],
                         dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def schedule_alpha_bar(name: str, T: int) -> torch.Tensor:
    """``alpha_bar`` of the named schedule ("linear" or "cosine") over ``T`` steps."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](T)


def model_alpha_bar(model) -> torch.Tensor:
    """The schedule that travels with ``model`` (``model.alpha_bar()``); a bare callable ``eps(x, t)``
    without one gets the linear schedule of T = 1000 (DDPM's, used by every public checkpoint here)."""
    own = getattr(model, "alpha_bar", None)
    return own() if callable(own) else linear_schedule(1000)


def skip_steps(steps: int, T: int = 1000) -> list[int]:
    """Uniform skip, as the reference code: ``skip = T // steps``, ``t = (steps-1)*skip, ..., skip, 0, -1``.

    100 steps of T = 1000: ``[990, 980, ..., 10, 0, -1]`` (``steps + 1`` entries).
    """
    _check_steps(steps, T)
    skip = T // steps
    return [i * skip for i in range(steps - 1, -1, -1)] + [-1]


def travel_indices(steps: int, L: int = 1, s: int = 1, r: int = 1) -> list[int]:
    """Sequence of step indices in ``[-1, steps)`` with time travel (paper sec. 3.3, after RePaint).

    Walking down from ``steps - 1``; whenever the walk reaches an index ``j`` in
    ``range(0, steps - L, s)`` that still has travels left (``r - 1`` per index), it goes back up to
    ``j + L`` and walks down again. With ``s == L`` this is the reference code's ``get_schedule_jump``.
    """
    for name, value in (("L", L), ("s", s), ("r", r)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"travel setting {name} must be an int >= 1, got {value!r}")
    if r > 1 and L >= steps:
        raise ValueError(f"travel length L={L!r} must be smaller than steps={steps!r}")
    left = {j: r - 1 for j in range(0, steps - L, s)}
    seq = []
    i = steps
    while i >= 1:
        i -= 1
        seq.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            i += L
            seq.append(i)
    seq.append(-1)
    return seq


def travel_steps(
    steps: int = 100, T: int = 1000, L: int = 1, s: int = 1, r: int = 1
) -> list[tuple[int, int]]:
    """List of ``(t, t_next)`` timestep pairs of a DDNM run with time travel.

    A pair with ``t_next < t`` is one denoising step (one model call); a pair with ``t_next > t`` is a
    travel back: the stored ``x0`` of the last step is re-noised to level ``t_next = t + L*skip``
    without a model call. The last pair ends at ``t_next = -1`` (``alpha_bar = 1``).
    Settings: travel length ``L``, interval ``s`` (a travel starts every ``s`` steps), repeat ``r``
    (``r = 1``: no travel). The reference ties ``s = L``.
    """
    _check_steps(steps, T)
    skip = T // steps
    times = [i * skip if i >= 0 else -1 for i in travel_indices(steps, L, s, r)]
    return list(zip(times[:-1], times[1:], strict=True))


def model_calls(pairs: list[tuple[int, int]]) -> int:
    """Number of model calls per image of a step list from :func:`travel_steps`."""
    return sum(1 for t, t_next in pairs if t_next < t)


def _check_steps(steps: int, T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T={T}], got {steps!r}")

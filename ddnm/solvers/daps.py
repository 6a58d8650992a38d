"""DAPS (Zhang, Chu, Berner, Sun, Yue, Azizzadenesheli, Anandkumar: Improving Diffusion Inverse
Problem Solving with Decoupled Noise Annealing, CVPR 2025).

Annealing on the EDM noise scale ``sigma`` from ``sigma_max`` to ``sigma_min`` (``steps`` levels,
Karras' rho = 7 spacing). At each level (paper Algorithm 1):

1. ``x0_hat``: the probability-flow ODE from ``x_t`` at ``sigma`` down to 0, ``ode_steps`` Euler steps
   (the last lands on the denoiser's output; one model call each);
2. Langevin dynamics on ``p(x0 | x_t, y)`` approximated by
   ``exp(-||A x0 - y||^2 / (2 tau^2) - ||x0 - x0_hat||^2 / (2 sigma^2))``, ``langevin_steps`` steps of
   ``x0 += eta (grad log p) + sqrt(2 eta) n`` with ``eta = lr (1 + r (lr_min_ratio - 1))``, ``r`` the
   share of levels done (DAPS repo cores/mcmc.py); only ``A^T`` (autograd through the operator) is
   needed, no network gradient;
3. ``x_t = x0 + sigma_next n``.

The model is a VP epsilon model: the denoiser at ``sigma`` is
``D(x) = x - sigma_t eps(x / sqrt(1 + sigma_t^2), t)`` at the model step t whose
``sigma_t = sqrt((1 - abar_t) / abar_t)`` is nearest to ``sigma``. Model calls: ``steps * ode_steps``.
"""

from __future__ import annotations

import math

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import adjoint, eps_of, noise

PAPER = ("Zhang, Chu, Berner, Sun, Yue, Azizzadenesheli, Anandkumar: Improving Diffusion Inverse "
         "Problem Solving with Decoupled Noise Annealing, CVPR 2025")


def karras(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> list[float]:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, evenly spaced in ``sigma^(1/rho)``."""
    if n == 1:
        return [float(sigma_max)]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (n - 1) * (b - a)) ** rho for i in range(n)]


class VPDenoiser:
    """``D(x, sigma)`` of a VP epsilon model on the EDM scale (module docs)."""

    def __init__(self, eps, alpha_bar: torch.Tensor, channels: int):
        self.eps, self.channels = eps, channels
        ab = alpha_bar.double()
        self.sigmas = ((1 - ab) / ab).sqrt()

    def step_for(self, sigma: float) -> int:
        return int((self.sigmas - sigma).abs().argmin())

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = self.step_for(sigma)
        s = float(self.sigmas[t])
        return x - s * eps_of(self.eps, x / math.sqrt(1.0 + s * s), t, self.channels)


def run_daps(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """DAPS's sampler (module docs)."""
    st = sampling.settings
    dtype, shape = y.dtype, tuple(op.x_shape)
    den = VPDenoiser(eps, alpha_bar, shape[0])
    levels = karras(st["sigma_max"], st["sigma_min"], sampling.steps) + [0.0]
    tau2 = st["tau"] ** 2
    x = st["sigma_max"] * noise(generators, shape, y)
    x0 = x
    calls = 0
    for k in range(sampling.steps):
        sigma = levels[k]
        ode = karras(sigma, st["ode_sigma_min"], st["ode_steps"]) + [0.0]
        x0_hat = x
        for i in range(st["ode_steps"]):
            d = den(x0_hat, ode[i])
            calls += 1
            x0_hat = d if ode[i + 1] == 0 else x0_hat + (ode[i + 1] - ode[i]) * (x0_hat - d) / ode[i]
        lr = st["lr"] * (1.0 + (k / sampling.steps) * (st["lr_min_ratio"] - 1.0))
        x0 = x0_hat
        for _ in range(st["langevin_steps"]):
            score = -adjoint(op, op.A(x0).to(dtype) - y).to(dtype) / tau2 + (x0_hat - x0) / (sigma * sigma)
            x0 = x0 + lr * score + math.sqrt(2.0 * lr) * noise(generators, shape, y)
        x = x0 + levels[k + 1] * noise(generators, shape, y)
        if callback is not None:
            callback(k, den.step_for(sigma), x0)
    return SampleOutput(x=x0, model_calls=calls)


def _calls(steps, T, travel, settings) -> int:
    return int(steps) * int(settings["ode_steps"])


DAPS = Solver(
    name="daps",
    description="decoupled annealing: ODE to x0, Langevin on the measurement, re-noise (steps = levels)",
    paper=PAPER,
    run=run_daps,
    settings={
        "ode_steps": (5, int, "probability-flow ODE steps per level (DAPS repo "
                              "configs/sampler/edm_daps.yaml: diffusion_scheduler_config.num_steps 5)"),
        "ode_sigma_min": (0.01, float, "where each ODE's spacing ends before its last step to 0 "
                                       "(edm_daps.yaml: sigma_min 0.01)"),
        "sigma_max": (100.0, float, "first annealing level (edm_daps.yaml: sigma_max 100)"),
        "sigma_min": (0.1, float, "last annealing level (edm_daps.yaml: sigma_min 0.1)"),
        "langevin_steps": (100, int, "Langevin steps per level (DAPS repo configs/task/down_sampling.yaml: "
                                     "num_steps 100)"),
        "lr": (1e-4, float, "Langevin step size (down_sampling.yaml: lr 1e-4)"),
        "lr_min_ratio": (0.01, float, "step size at the last level relative to the first "
                                      "(down_sampling.yaml: lr_min_ratio 0.01)"),
        "tau": (0.01, float, "measurement std assumed by the likelihood, [-1, 1] scale "
                             "(down_sampling.yaml: tau 0.01)"),
    },
    maskshift=False,
    paper_steps=200,
    calls=_calls,
)

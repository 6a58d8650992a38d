"""RED-diff (Mardani, Song, Kautz, Vahdat: A Variational Perspective on Solving Inverse Problems with
Diffusion Models, ICLR 2024).

Variational: the estimate ``mu`` is the variable of an optimiser (Adam), the diffusion model a
regulariser evaluated at one noise level per step, from t = T down (paper Algorithm 1). Per step:

    x_t  = sqrt(abar_t) mu + sqrt(1 - abar_t) n,          n fresh noise
    loss = v ||y - A mu||^2 / (2 M) + lambda w_t <sg(eps(x_t) - n), mu> / D

with ``w_t = sqrt((1 - abar_t) / abar_t)`` (``denoise_term_weight: linear``), M and D the numbers of
measurements and pixels of one image (the code's ``.mean()``s, taken per image so a result does not
depend on the batch). No gradient flows through the network (``sg`` = stop-gradient), so the model
runs without autograd. ``mu`` starts at ``A^+ y``; Adam has betas (0.9, 0.99), as RED-diff's code.
"""

from __future__ import annotations

import math

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers.base import Solver
from ddnm.solvers.common import adjoint, eps_of, noise, step_pairs

PAPER = ("Mardani, Song, Kautz, Vahdat: A Variational Perspective on Solving Inverse Problems with "
         "Diffusion Models, ICLR 2024")
BETAS = (0.9, 0.99)


def run_reddiff(eps, y, op, alpha_bar, generators, sampling, callback=None):
    """RED-diff's optimiser (module docs)."""
    st = sampling.settings
    lam, v_obs, lr = st["lambda"], st["obs_weight"], st["lr"]
    dtype, shape = y.dtype, tuple(op.x_shape)
    abar = [float(v) for v in alpha_bar.tolist()]
    pairs = step_pairs(sampling.steps, len(abar))
    mu = op.A_pinv(y).to(dtype).reshape(y.shape[0], *shape)
    D, M = math.prod(shape), y[0].numel()
    m = torch.zeros_like(mu)
    v = torch.zeros_like(mu)
    b1, b2 = BETAS
    for k, (t, _) in enumerate(pairs):
        ab = abar[t]
        n = noise(generators, shape, y)
        x_t = math.sqrt(ab) * mu + math.sqrt(1.0 - ab) * n
        e = eps_of(eps, x_t, t, shape[0])
        w = lam * math.sqrt((1.0 - ab) / ab)
        grad = (w / D) * (e - n) + (v_obs / M) * adjoint(op, (op.A(mu).to(dtype) - y)).to(dtype)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        m_hat, v_hat = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
        mu = mu - lr * m_hat / (v_hat.sqrt() + 1e-8)
        if callback is not None:
            callback(k, t, mu)
    return SampleOutput(x=mu, model_calls=len(pairs))


REDDIFF = Solver(
    name="reddiff",
    description="variational: Adam on the estimate, the denoiser as a regulariser (no network gradients)",
    paper=PAPER,
    run=run_reddiff,
    settings={
        "lambda": (0.25, float, "regulariser weight (RED-diff repo _configs/algo/reddiff.yaml: "
                                "grad_term_weight 0.25)"),
        "obs_weight": (1.0, float, "weight of the measurement term (reddiff.yaml: obs_weight 1.0)"),
        "lr": (0.1, float, "Adam's learning rate (reddiff.yaml: lr 0.1)"),
    },
    maskshift=False,
    paper_steps=1000,
)

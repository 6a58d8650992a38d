"""A solver of the tests' own, defined outside ddnm/: what "a new solver is one file" means.

``TOY`` denoises the pseudo-inverse once with the model, then puts the observation back (the range
space from ``y``, the null space from the model, blended by ``blend``): one model call per image. It is
not a good solver; it exercises the registry contract (settings table, needs, calls, run) end to end,
in the notebook API and in a job (``--solver tests.unit.toy_solver:TOY``).
"""

from __future__ import annotations

import torch

from ddnm.sampling.sampler import SampleOutput
from ddnm.solvers import Solver


def run_toy(eps, y, op, alpha_bar, generators, sampling, callback=None):
    blend = sampling.settings["blend"]
    t = int(sampling.settings["t"])
    a = alpha_bar[t].to(y.dtype)
    x = op.A_pinv(y).reshape(y.shape[0], *op.x_shape)
    noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                         for g in generators])
    x_t = a.sqrt() * x + (1 - a).sqrt() * noise
    e = eps(x_t, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))[:, : x.shape[1]].to(x.dtype)
    x0 = (x_t - (1 - a).sqrt() * e) / a.sqrt()
    x0 = x0 - blend * op.A_pinv(op.A(x0) - y).reshape(x0.shape)
    if callback is not None:
        callback(0, t, x0)
    return SampleOutput(x=x0, model_calls=1)


TOY = Solver(
    name="toy",
    description="one denoising of A^+ y, then the range space put back (a test of the registry)",
    paper="none (tests/unit/toy_solver.py)",
    run=run_toy,
    settings={"blend": (1.0, float, "1 = the observation's range space exactly; 0 = the model's x0"),
              "t": (200, int, "the one noise level the model sees")},
    calls=lambda steps, T, travel, settings: 1,
)

"""Our DiffPIR's data step against DiffPIR's code (yuanzhi-zhu/DiffPIR), x2 average-pool SR (issue 18).

DiffPIR's samplers are scripts (main_ddpir_sisr.py: the whole loop sits in ``main()``), so only their
data step is run from the checkout: ``utils.utils_sisr.pre_calculate`` and ``data_solution`` (the
closed-form FFT solution of ``argmin_x ||y - S(k * x)||^2 + tau ||x - x0||^2``, used by
main_ddpir_sisr.py for ``sr_mode == 'blur'``, on [0, 1] images). Our x2 average pool is their
``S(k * x)`` with the 2x2 box kernel ``k = 1/4`` (``p2o`` centres it so that output pixel ``(i, j)``
averages the block at ``(2i, 2j)``): checked first on a random x with their ``p2o``.

* model: the random-weight ``ddnm.models.build("tiny", dtype=float64)``, read bounded (``x0 =
  tanh(net)``, as ``Recorded(bounded=True)`` in tests/unit/test_vs_deepinv.py).
* our solver runs 2 steps on the sub-schedule ``alpha_bar[[400, 800]]``; its data-consistent x0 of each
  step (callback) is compared with ``data_solution`` applied to Tweedie's x0 of the state our model was
  called with, at their ``tau = rhos[t] = lambda sigma^2 / sigma_k^2`` (``sigma = max(0.001,
  noise_level_img)`` on [0, 1], ``sigma_k = sqrt(1 - abar_t) / sqrt(abar_t)``: main_ddpir_sisr.py
  lines 49, 231, 235). Both our paths: the closed form (SVD) and conjugate gradient (the operator
  without its SVD view, tolerance 1e-12).
* the noise update (main_ddpir_sisr.py lines 367-372, ``eta = 0`` as there) is a script line, not a
  function: the state of our second step is checked against that equation, evaluated here on the
  test's side with our own draw ``z`` (their first ``randn_like`` is multiplied by ``eta_sigma = 0``).

Set aside explicitly: (1) scale: their data step runs on [0, 1] (``x0 / 2 + 0.5``, y on [0, 1]); ours on
[-1, 1] with ``y_ours = 2 y01 - A 1``: the same minimiser, mapped back. (2) clip: their ``model_fn``
clips x0 to [-1, 1] before the data step (``clip_denoised``), ours does not: the bounded model keeps
the clip idle. (3) float32: their script calls ``data_solution(x0_p.float(), ...)`` with
``rhos[t_i].float()``; the test calls it in float64. (4) schedule: their ``skip_type 'quad'`` spacing
is not reproduced (our steps are evenly spaced; here two chosen steps). Not covered: inpainting (their
inpainting data step is an inline line of main_ddpir_inpainting.py, no function to call).
Measured max |ours - theirs| (SVD and CG alike): data step 1.6e-11 at t = 800 (tau = 3.8e-6 there, and
``data_solution`` divides by tau: rounding times 1/tau) and 9e-14 at t = 400 (tau = 6e-4); next state
4e-16. Tolerance 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddnm import models
from ddnm.operators import build
from ddnm.solvers import Sampling
from ddnm.solvers.common import noise
from tests.public.conftest import load
from tests.twins import Recorded, Reindexed

pytestmark = pytest.mark.public_code

SHAPE = (3, 16, 16)
B = 2
SIGMA_Y = 0.05  # on [0, 1]
F64 = torch.float64
SUB = [400, 800]
LAM, ZETA = 1.0, 0.3
TOL = 1e-10


class NoSvd:
    """The operator without its SVD view, so our data step takes conjugate gradient."""

    has_svd = False

    def __init__(self, op):
        self.op, self.x_shape = op, op.x_shape

    def A(self, x):
        return self.op.A(x)


@pytest.fixture(scope="module")
def tiny():
    return models.build("tiny", dtype=F64)


@pytest.mark.parametrize("path", ["svd", "cg"])
def test_diffpir_data_step_agrees_with_diffpir_code(tiny, path):
    sr = load("diffpir", "utils.utils_sisr")
    op = build("sr_avgpool", x_shape=SHAPE, dtype=F64, scale=2)
    k = torch.full((B, SHAPE[0], 2, 2), 0.25, dtype=F64)
    g = torch.Generator().manual_seed(7)

    # their S(k * x) is our average pool
    x = torch.randn((B, *SHAPE), generator=g, dtype=F64)
    fb = sr.p2o(k, SHAPE[1:])
    theirs_a = torch.real(torch.fft.ifftn(fb * torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1)))[..., ::2, ::2]
    assert (theirs_a - op.A(x)).abs().max().item() < 1e-14

    x01 = torch.rand((B, *SHAPE), generator=g, dtype=F64)
    clean = op.A(x01)
    y01 = clean + SIGMA_Y * torch.randn(clean.shape, generator=g, dtype=F64)
    y = 2 * y01 - op.A(torch.ones_like(x01))
    FB, FBC, F2B, FBFy = sr.pre_calculate(y01, k, 2)

    abar = tiny.alpha_bar()
    gens = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    twin = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    zs = [noise(twin, SHAPE, y) for _ in range(2)]  # x_T, the noise to the second step
    eps = Recorded(tiny, abar, bounded=True)
    data_x0 = []
    sampling = Sampling(solver="diffpir", steps=2, sigma_y=SIGMA_Y,
                        solver_settings={"lambda": LAM, "zeta": ZETA, "cg_iters": 200, "cg_tol": 1e-13})
    sampling.info.run(Reindexed(eps, SUB), y, op if path == "svd" else NoSvd(op), abar[SUB], gens,
                      sampling, lambda k, t, x0: data_x0.append(x0.clone()))
    assert [t for t, _ in eps.calls] == SUB[::-1]
    assert (eps.calls[0][1] - zs[0]).abs().max() == 0

    sigma = max(0.001, SIGMA_Y)
    for (t, xt), ours in zip(eps.calls, data_x0, strict=True):
        ab = float(abar[t])
        with torch.no_grad():
            e = Recorded(tiny, abar, bounded=True)(xt, t)
        x0 = (xt - math.sqrt(1 - ab) * e) / math.sqrt(ab)
        assert x0.abs().max() < 1  # their clip is idle
        tau = LAM * sigma**2 / ((1 - ab) / ab)
        theirs = 2 * sr.data_solution(x0 / 2 + 0.5, FB, FBC, F2B, FBFy, tau, 2) - 1
        err = (ours - theirs).abs().max().item()
        assert err < TOL, f"data step at t={t}: max |ours - DiffPIR code| = {err:.3g}"
        assert (theirs - x0).abs().max() > 1e-3  # the data step moved x0

    # the noise update to the second step (main_ddpir_sisr.py l. 367-372, eta = 0)
    t, xt = eps.calls[0]
    ab, ab_next = float(abar[t]), float(abar[SUB[0]])
    x0 = data_x0[0]
    e_hat = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    nxt = math.sqrt(ab_next) * x0 + math.sqrt(1 - ZETA) * math.sqrt(1 - ab_next) * e_hat \
        + math.sqrt(ZETA) * math.sqrt(1 - ab_next) * zs[1]
    err = (eps.calls[1][1] - nxt).abs().max().item()
    assert err < TOL, f"next state: max |ours - DiffPIR's update| = {err:.3g}"

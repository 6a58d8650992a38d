"""Our DPS against DPS's own code (DPS2022/diffusion-posterior-sampling), step for step (issue 18).

Their sampler is run unchanged: ``guided_diffusion.gaussian_diffusion.DDPM`` (a ``SpacedDiffusion``)
and its ``p_sample_loop``, conditioned by ``guided_diffusion.condition_methods.PosteriorSampling``
(``conditioning`` / ``grad_and_value``: ``x_t -= scale * grad_{x_prev} ||y - A x0_hat||``).

* model: the random-weight ``ddnm.models.build("tiny", dtype=float64)``, read bounded
  (``Recorded(bounded=True)`` of tests/unit/test_vs_deepinv.py: ``x0 = tanh(net)``), so x0 stays in
  (-1, 1) and DPS's ``clip_denoised`` never acts (see "set aside").
* schedule: their ``DDPM`` built from our ``alpha_bar`` (``betas = 1 - abar_t / abar_{t-1}``) with
  ``use_timesteps`` = the 4 steps ``SUB``; ours runs on the sub-schedule ``alpha_bar[SUB]`` through
  :class:`Reindexed`, so both visit the same 4 time steps (their respacing recomputes the betas
  between kept steps exactly as DDIM eta = 1 between our steps). ``model_var_type = "fixed_small"``
  (the DDPM posterior variance, which is what our c1 is; their config's ``learned_range`` needs a
  learned-sigma output our tiny model does not have).
* operator: ours (``Inpaint`` with a fixed mask, ``sr_avgpool`` x2) wrapped in their operator
  interface ``forward(data, **kwargs)``; their noiser is only asked its ``__name__`` ("gaussian").
* noise: our per-image draws pre-drawn from twin generators are fed to their ``torch.randn_like``
  (x_T is passed as ``x_start``; one draw per ``p_sample``, the last unused at t = 0 on both sides);
  ``q_sample`` (the noisy measurement, unused by ``ps``) is replaced by the identity.
* compared: every x_t the model is called with and the result, two 3x16x16 images, both tasks.

Set aside explicitly (conventions, none absorbed by a tolerance):
(1) precision: their ``extract_and_expand`` casts every schedule coefficient to float32
    (``.float()``); it is patched (in both of their modules) to cast to the state's dtype, float64.
(2) batch: their ``grad_and_value`` takes ``torch.linalg.norm`` of the whole batch's residual (one
    norm for all images, so a step depends on the batch) and ``p_sample``'s ``if t != 0`` needs a
    batch of one; ours takes the norm per image. Their loop is run once per image.
(3) clip: DPS's code clamps x0 to [-1, 1] (``clip_denoised: True``) and differentiates through the
    clamp (zero gradient where it acts); ours clamps only for the ancestral step and differentiates
    the unclamped x0 (documented in ddnm/solvers/dps.py). The bounded model keeps the clamp idle.
(4) imports: ``util.img_utils`` imports ``motionblur`` (not installed, unused here): stubbed in
    ``sys.modules``. tqdm/matplotlib/scipy come from the shared venv.

The step size: their ``scale`` multiplies the gradient of the norm ``||y - A x0||`` (not squared),
as our ``zeta`` does: the test runs both with the same value 0.3 and they agree.
Measured max |ours - theirs| (both tasks): x_t 9e-15, result 5e-13 (tolerance 1e-10).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from ddnm import models
from ddnm.operators import build
from ddnm.operators.inpaint import Inpaint
from ddnm.solvers import Sampling
from ddnm.solvers.common import noise
from tests.public.conftest import load
from tests.twins import Recorded, Reindexed

pytestmark = pytest.mark.public_code

SHAPE = (3, 16, 16)
B = 2
SIGMA_Y = 0.05
F64 = torch.float64
SUB = [0, 333, 666, 999]  # their space_timesteps(1000, [4])
ZETA = 0.3
TOL = 1e-10


class TheirOperator:
    """Our operator in DPS's operator interface (``forward(data, **kwargs)``)."""

    def __init__(self, op):
        self.op = op

    def forward(self, data, **kwargs):
        return self.op.A(data)


def gaussian_noiser():
    def gaussian(x):  # only its __name__ is read on the ``ps`` path
        raise AssertionError("not called")
    return gaussian


@pytest.fixture(scope="module")
def tiny():
    return models.build("tiny", dtype=F64)


@pytest.fixture
def dps_code(monkeypatch):
    """(gaussian_diffusion, condition_methods) of the checkout, motionblur stubbed, float64 coefficients."""
    stub = types.ModuleType("motionblur.motionblur")
    stub.Kernel = object
    monkeypatch.setitem(sys.modules, "motionblur", types.ModuleType("motionblur"))
    monkeypatch.setitem(sys.modules, "motionblur.motionblur", stub)
    gd = load("dps", "guided_diffusion.gaussian_diffusion")
    pmv = gd.get_mean_processor.__globals__  # posterior_mean_variance's globals (load drops the module)
    cm = load("dps", "guided_diffusion.condition_methods")

    def extract_and_expand(array, time, target):  # theirs, less the cast to float32 (docs (1))
        array = torch.from_numpy(array).to(target.device)[time].to(target.dtype)
        while array.ndim < target.ndim:
            array = array.unsqueeze(-1)
        return array.expand_as(target)

    monkeypatch.setattr(gd, "extract_and_expand", extract_and_expand)
    monkeypatch.setitem(pmv, "extract_and_expand", extract_and_expand)
    return gd, cm


def problem(task):
    g = torch.Generator().manual_seed(7)
    x = 2 * torch.rand((B, *SHAPE), generator=g, dtype=F64) - 1
    if task == "inpaint":
        op = Inpaint(SHAPE, (torch.rand((1, *SHAPE), generator=g) < 0.6).to(F64))
    else:
        op = build("sr_avgpool", x_shape=SHAPE, dtype=F64, scale=2)
    clean = op.A(x)
    return op, clean + SIGMA_Y * torch.randn(clean.shape, generator=g, dtype=F64)


def run_theirs(gd, cm, eps, op, y, abar, zs, monkeypatch):
    """Their p_sample_loop, one image at a time (docs (2)); ``zs``: our draws (x_T, then one per step)."""
    ab = abar.numpy().astype(np.float64)
    betas = 1.0 - ab / np.append(1.0, ab[:-1])
    sampler = gd.DDPM(use_timesteps=SUB, betas=betas, model_mean_type="epsilon",
                      model_var_type="fixed_small", dynamic_threshold=False, clip_denoised=True,
                      rescale_timesteps=False)
    assert sampler.timestep_map == SUB
    monkeypatch.setattr(sampler, "q_sample", lambda x_start, t: x_start)  # unused by ``ps``
    cond = cm.PosteriorSampling(operator=TheirOperator(op), noiser=gaussian_noiser(), scale=ZETA)
    out = []
    for b in range(y.shape[0]):
        left = [z[b : b + 1] for z in zs[1:]]

        def randn_like(like, *args, left=left, **kwargs):
            return left.pop(0).to(like)

        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch, "randn_like", randn_like)
            img = sampler.p_sample_loop(model=eps, x_start=zs[0][b : b + 1].clone(),
                                        measurement=y[b : b + 1], measurement_cond_fn=cond.conditioning,
                                        record=False, save_root=None)
        assert not left, "their loop drew a different number of noises"
        out.append(img.detach())
    return torch.cat(out)


@pytest.mark.parametrize("task", ["inpaint", "sr_avgpool"])
def test_dps_steps_agree_with_dps_code(tiny, dps_code, task, monkeypatch):
    """4 DPS steps (t = 999, 666, 333, 0; zeta = their scale = 0.3): every x_t and the result agree
    with DPS's code to 1e-10 (module docs: what is set aside)."""
    gd, cm = dps_code
    op, y = problem(task)
    abar = tiny.alpha_bar()
    gens = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    twin = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    zs = [noise(twin, SHAPE, y) for _ in range(len(SUB) + 1)]

    ours_eps = Recorded(tiny, abar, bounded=True)
    sampling = Sampling(solver="dps", steps=len(SUB), solver_settings={"zeta": ZETA})
    ours = sampling.info.run(Reindexed(ours_eps, SUB), y, op, abar[SUB], gens, sampling, None).x

    theirs_eps = Recorded(tiny, abar, bounded=True)
    theirs = run_theirs(gd, cm, theirs_eps, op, y, abar, zs, monkeypatch)

    # theirs runs image by image: regroup its calls per step to compare with our batched ones
    per_step = [theirs_eps.calls[k :: len(SUB)] for k in range(len(SUB))]
    assert [t for t, _ in ours_eps.calls] == [c[0][0] for c in per_step] == SUB[::-1]
    errs = []
    for (t, a), calls in zip(ours_eps.calls, per_step, strict=True):
        b = torch.cat([x for _, x in calls])
        errs.append((a - b).abs().max().item())
        assert errs[-1] < TOL, f"x_t at t={t}: max |ours - DPS code| = {errs[-1]:.3g}"
    err = (ours - theirs).abs().max().item()
    assert err < TOL, f"result: max |ours - DPS code| = {err:.3g}"
    # the data term is not negligible here, so the agreement checks zeta's scaling (norm, not squared)
    no_data = Sampling(solver="dps", steps=len(SUB), solver_settings={"zeta": 0.0})
    gens = [torch.Generator().manual_seed(100 + i) for i in range(B)]
    bare = Reindexed(Recorded(tiny, abar, bounded=True), SUB)
    plain = no_data.info.run(bare, y, op, abar[SUB], gens, no_data, None).x
    assert (plain - ours).abs().max().item() > 1e-2

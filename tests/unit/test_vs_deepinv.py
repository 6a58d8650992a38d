"""Our DDRM, DiffPIR and DPS against deepinv 0.5.0's samplers, step for step (issue 18).

Both sides get the same random-weight eps model (``ddnm.models.build("tiny")``), the same operator,
the same measurement and the same noise, and what each computes at every step is compared:

* model: our ``eps = model(x_t, t)`` on ``[-1, 1]``. deepinv's samplers call a denoiser
  ``D(x, sigma) -> x0`` on ``[0, 1]`` with the variance-exploding state ``x = (x_t / sqrt(abar) + 1) / 2``
  and ``sigma = sqrt((1 - abar) / abar) / 2`` (DDRM: its ``sigmas``; DiffPIR: ``model(x_aux,
  sigma_cur / 2)``; DPS: ``MinusOneOneDenoiserWrapper`` for the prior, the raw denoiser for the data
  term). :class:`Denoiser` inverts that map, finds ``t`` from ``sigma`` (asserting an exact match) and
  returns Tweedie's ``x0`` of our model, mapped to ``[0, 1]``.
* operator: deepinv's own ``Inpainting`` with our fixed mask, or our ``sr_avgpool`` (x2) handed to
  deepinv as a ``LinearPhysics`` (its adjoint by deepinv's ``adjoint_function``) or, for DDRM, as a
  ``DecomposablePhysics`` built from our SVD view. Measurements: ``y_dinv = A x01 + sigma_y n`` on
  ``[0, 1]`` and ``y_ours = 2 y_dinv - A 1`` (the same measurement on ``[-1, 1]``).
* noise: our solver draws from its per-image generators as always; the same draws, pre-drawn from
  twin generators, replace deepinv's ``torch.randn_like`` (DDRM, DiffPIR) or its solver's
  ``randn_like`` (DPS) for that call.
* compared: every state ``x_t`` the model is called with (recorded by :class:`Recorded`), each step's
  data-consistent ``x0`` where the sampler exposes one, and the result; two 16 px RGB images.

What differs in the conventions (schedule spacing, how sigma_y and the step sizes are scaled) is set
aside explicitly in each test and said in its docstring; no tolerance absorbs it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddnm import models
from ddnm.operators import build
from ddnm.operators.inpaint import Inpaint
from ddnm.perceptual import import_torchvision
from ddnm.solvers import Sampling
from ddnm.solvers.common import noise
from tests.twins import Recorded, Reindexed

try:  # deepinv imports torchvision first; beside a CPU torch its wheel needs this (ddnm.perceptual)
    import_torchvision()
except ImportError:
    pass
dinv = pytest.importorskip("deepinv")

SHAPE = (3, 16, 16)
B = 2
SIGMA_Y = 0.05  # on [0, 1], deepinv's GaussianNoise(sigma) and our Sampling(sigma_y) alike
F64 = torch.float64


@pytest.fixture(scope="module")
def tiny():
    return models.build("tiny", dtype=F64)


class Denoiser(torch.nn.Module):
    """deepinv's ``D(x, sigma)`` on [0, 1] from our eps model (module docs)."""

    def __init__(self, eps, alpha_bar):
        super().__init__()
        self.eps, self.abar = eps, alpha_bar
        self.sig = ((1 - alpha_bar) / alpha_bar).sqrt()

    def forward(self, x, sigma, *args, **kwargs):
        s = 2 * float(torch.as_tensor(sigma).flatten()[0])
        t = int((self.sig - s).abs().argmin())
        assert abs(float(self.sig[t]) - s) <= 1e-4 * s, f"no time step has sigma {s}"  # float32 sigmas
        ab = float(self.abar[t])
        xt = math.sqrt(ab) * (2 * x.to(F64) - 1)
        x0 = (xt - math.sqrt(1 - ab) * self.eps(xt, t)) / math.sqrt(ab)
        return ((x0 + 1) / 2).to(x.dtype)


def twins(n=B):
    """Two identical sets of per-image generators: one for our solver, one to pre-draw its noise."""
    def make():
        return [torch.Generator().manual_seed(100 + i) for i in range(n)]
    return make(), make()


def draws(gens, k, like):
    return [noise(gens, SHAPE, like) for _ in range(k)]


def inject(values, transform=lambda v, like: v.to(like)):
    """A stand-in for ``randn_like(like)`` returning ``values`` in order; ``left`` counts the rest."""
    values = list(values)

    def fake(like, *args, **kwargs):
        return transform(values.pop(0), like)

    fake.left = lambda: len(values)
    return fake


def problem(task):
    """(our operator, deepinv physics, y_ours, y_dinv) for a fixed image batch."""
    g = torch.Generator().manual_seed(7)
    x01 = torch.rand((B, *SHAPE), generator=g, dtype=F64)
    gauss = dinv.physics.GaussianNoise(sigma=torch.tensor(SIGMA_Y, dtype=F64))  # float32 by default
    if task == "inpaint":
        mask = (torch.rand((1, *SHAPE), generator=g) < 0.6).to(F64)
        op = Inpaint(SHAPE, mask)
        physics = dinv.physics.Inpainting(img_size=SHAPE, mask=mask, noise_model=gauss)
    else:
        op = build("sr_avgpool", x_shape=SHAPE, dtype=F64, scale=2)
        physics = dinv.physics.LinearPhysics(
            A=lambda x, **kw: op.A(x),
            A_adjoint=dinv.physics.adjoint_function(op.A, (B, *SHAPE), dtype=F64),
            noise_model=gauss, max_iter=100, tol=1e-12)
    clean = op.A(x01)
    y_dinv = clean + SIGMA_Y * torch.randn(clean.shape, generator=g, dtype=F64)
    y_ours = 2 * y_dinv - op.A(torch.ones_like(x01))
    return op, physics, y_ours, y_dinv


def assert_close(ours, theirs, tol, what):
    err = (ours - theirs).abs().max().item()
    assert err < tol, f"{what}: max |ours - deepinv| = {err:.3g} (tolerance {tol})"
    return err


def assert_same_states(ours: Recorded, theirs: Recorded, tol):
    assert [t for t, _ in ours.calls] == [t for t, _ in theirs.calls]
    for (t, a), (_, b) in zip(ours.calls, theirs.calls, strict=True):
        assert_close(a, b, tol, f"x_t at t={t}")


# -- DDRM ----------------------------------------------------------------------------------------------
def decomposable(op):
    """Our SVD operator as deepinv's DecomposablePhysics (its coefficients: our (B, D) vectors)."""
    return dinv.physics.DecomposablePhysics(
        U=op.U, U_adjoint=op.Ut, V=op.V, V_adjoint=op.Vt,
        mask=op.singulars().to(F64).reshape(1, -1),
        noise_model=dinv.physics.GaussianNoise(torch.tensor(SIGMA_Y, dtype=F64)))


@pytest.mark.parametrize("task", ["inpaint", "sr_avgpool"])
def test_ddrm_steps_agree_with_deepinv(tiny, task, monkeypatch):
    """4 steps of DDRM (t = 750, 500, 250, 0; eta 0.85, eta_b 0.7, sigma_y 0.05; init from q(x_T | y)):
    every x_t and the result agree to 1e-11 (float64; measured 4e-14). Inpainting runs on deepinv's
    Inpainting; x2 average-pool SR (singular values 1/2 and 0) on our SVD as a DecomposablePhysics.
    Along the run all three of DDRM's cases occur: null space; s sigma_t >= sigma_y (t = 500, 250);
    s sigma_0 < sigma_y (the update to t = 0).

    Set aside: (1) scale. deepinv runs DDRM on [0, 1] with the VE levels given as ``sigmas``: here
    ``sqrt((1 - abar_t) / abar_t) / 2`` at our time steps, the same process as ours on [-1, 1] with the
    state ``sqrt(abar_t) (2 x - 1)``. (2) deepinv draws every noise as ``randn / sqrt(2)``, so its
    state carries noise ``sigma / sqrt(2)`` while its denoiser is told ``sigma`` (and its eps estimate
    ``(x_bar_prev - x_bar) / sigma_prev`` divides by the full ``sigma``): DDRM's paper and code draw
    ``sigma z``. The test feeds it ``sqrt(2) z`` so both draw the paper's noise. (3) deepinv divides by
    ``s + eps`` (eps = 1e-6 by default); the test sets its ``eps = 0``. (4) deepinv counts a singular
    value ``s <= sigma_y`` as null space, ours as range: here every ``s`` is 0, 1/2 or 1. (5) The start
    on the null space: deepinv draws ``sigma_T z`` there on [0, 1], i.e. centred at -1 on [-1, 1]; DDRM's
    code and ours centre it at 0 (the scale change is affine, and this is the one term that is not): the
    test shifts deepinv's first draw there by ``(V^T 1) / sigma_T`` (its [0, 1] sigma is half of ours).
    Only inpainting has the constant image outside the range, so only it is shifted.
    """
    op, physics, y_ours, y_dinv = problem(task)
    if task != "inpaint":
        physics = decomposable(op)
    abar = tiny.alpha_bar()
    eta, eta_b = 0.85, 0.7
    sampling = Sampling(solver="ddrm", steps=4, eta=eta, sigma_y=SIGMA_Y, solver_settings={"eta_b": eta_b})
    gens, twin = twins()
    zs = draws(twin, 5, y_ours)  # x_T's, then one per step (the last, to t = -1, is scaled by 0)
    ours_eps = Recorded(tiny, abar, bounded=False)
    ours = sampling.info.run(ours_eps, y_ours, op, abar, gens, sampling, None).x

    times = [750, 500, 250, 0]
    sig = ((1 - abar) / abar).sqrt()
    theirs_eps = Recorded(tiny, abar, bounded=False)
    ddrm = dinv.sampling.DDRM(Denoiser(theirs_eps, abar), sigmas=[float(sig[t]) / 2 for t in times],
                              eta=eta, etab=eta_b, eps=0.0)
    # deepinv's draws: sqrt(2) z (2), the first shifted on its null space by (5)
    null = (op.singulars().to(F64) <= SIGMA_Y).reshape(1, -1)
    shift = null * op.Vt(torch.ones((1, *SHAPE), dtype=F64)) / float(sig[times[0]])
    coeffs = [op.Vt(z) for z in zs[:4]]
    coeffs[0] = coeffs[0] + shift
    fake = inject([math.sqrt(2.0) * c for c in coeffs], lambda c, like: c.reshape(like.shape))
    with monkeypatch.context() as m:
        m.setattr(torch, "randn_like", fake)
        theirs = 2 * ddrm(y_dinv, physics) - 1
    assert fake.left() == 0
    assert [t for t, _ in ours_eps.calls] == times
    assert_same_states(ours_eps, theirs_eps, 1e-11)
    assert_close(ours, theirs, 1e-11, "DDRM result")


# -- DiffPIR -------------------------------------------------------------------------------------------
class RecordedL2(dinv.optim.data_fidelity.L2):
    """deepinv's L2 data fidelity, recording what its proximal step returns."""

    def __init__(self):
        super().__init__()
        self.out: list[torch.Tensor] = []

    def prox(self, x, y, physics, *args, **kwargs):
        out = super().prox(x, y, physics, *args, **kwargs)
        self.out.append(out.detach().clone())
        return out


@pytest.mark.parametrize("task", ["inpaint", "sr_avgpool"])
def test_diffpir_steps_agree_with_deepinv(tiny, task, monkeypatch):
    """DiffPIR through deepinv's 3 time steps (t = 999, 292, 0; zeta 0.3, sigma_y 0.05): every x_t and
    each data step's x0 agree to 1e-5 (measured 4e-7: deepinv computes its schedule in float32).
    Inpainting runs on deepinv's Inpainting (its closed-form
    proximal step), x2 average-pool SR on our operator as a LinearPhysics (deepinv's conjugate
    gradient; ours: closed form per singular value).

    Set aside: (1) the time steps: deepinv spaces them quadratically (``sqrt(linspace(0, T^2, n))``, as
    DiffPIR's ``skip_type quad``), ours evenly: ours runs on the sub-schedule ``alpha_bar[[0, 292,
    999]]``, deepinv's own float32 schedule. (2) rho: deepinv's proximal step with ``gamma = 1 / (2
    rho_t)`` minimises ``||y - A x||^2 + 2 rho_t ||x - x0||^2``; DiffPIR's code (``data_solution(...,
    tau=rho_t)``, inpainting ``(M y + rho_t x0) / (M + rho_t)``) and ours minimise ``||y - A x||^2 +
    rho_t ||x - x0||^2``, both with ``rho_t = lambda sigma_n^2 / sigma_t^2``: deepinv's lambda is half
    of DiffPIR's, so ours runs at lambda 14 against deepinv's 7. (3) start: deepinv starts from
    ``sqrt(abar_T) (2 A^T y - 1 + ...)``, ours (as DiffPIR's code) from noise: deepinv is given our
    ``x_T`` as ``x_init`` with its start noise 0. (4) deepinv's last step (t = 0) only denoises and
    returns the state before it, ours takes the data step there and returns its x0: the state at
    t = 0 is compared, not the returns. (5) clip: deepinv (and DiffPIR's code, ``clip_denoised``) clip
    the denoiser's x0 to [-1, 1], ours does not; the model is bounded so that the clip never acts.
    """
    op, physics, y_ours, y_dinv = problem(task)
    lam, zeta = 7.0, 0.3
    fidelity = RecordedL2()
    dp = dinv.sampling.DiffPIR(None, fidelity, sigma=SIGMA_Y, max_iter=3, zeta=zeta, lambda_=lam)
    abar = torch.cumprod(1 - dp.betas, 0).to(F64)  # deepinv's float32 schedule, for both
    theirs_eps = Recorded(tiny, abar, bounded=True)
    dp.model = Denoiser(theirs_eps, abar)
    times = [999 - int(s) for s in dp.seq]
    assert times == [999, 292, 0]

    gens, twin = twins()
    zs = draws(twin, 3, y_ours)  # x_T, then the noise of the steps to t = 292 and t = 0
    ours_eps = Recorded(tiny, abar, bounded=True)
    sub = sorted(times)
    sampling = Sampling(solver="diffpir", steps=3, sigma_y=SIGMA_Y,
                        solver_settings={"lambda": 2 * lam, "zeta": zeta})
    x0s = []
    sampling.info.run(Reindexed(ours_eps, sub), y_ours, op, abar[sub], gens, sampling,
                      lambda k, t, x0: x0s.append(x0.clone()))

    root = float(dp.get_alpha_prod()[0][-1])  # deepinv's 1 / sqrt(abar_T)
    fake = inject([torch.zeros_like(zs[0]), zs[1], zs[2]])
    with monkeypatch.context() as m:
        m.setattr(torch, "randn_like", fake)
        theirs = 2 * dp(y_dinv, physics, x_init=(zs[0] * root + 1) / 2) - 1
    assert fake.left() == 0
    assert [t for t, _ in ours_eps.calls] == times
    assert_same_states(ours_eps, theirs_eps, 1e-5)
    for t, a, b in zip(times, x0s, fidelity.out, strict=False):
        assert_close(a, 2 * b - 1, 1e-5, f"data step's x0 at t={t}")
    assert len(fidelity.out) == 2
    assert_close(ours_eps.calls[-1][1], theirs, 1e-5, "state at t=0")


# -- DPS -----------------------------------------------------------------------------------------------
def vp_time(ab: float) -> float:
    """The time of deepinv's VP SDE (beta 0.1 .. 20) at which ``scale_t^2 = ab``: the root of
    ``0.1 t + 9.95 t^2 = -log(ab)``."""
    return (-0.1 + math.sqrt(0.01 + 4 * 9.95 * -math.log(ab))) / (2 * 9.95)


@pytest.mark.parametrize("task", ["inpaint", "sr_avgpool"])
def test_dps_steps_agree_with_deepinv(tiny, task, monkeypatch):
    """Two DPS steps (t = 700 -> 400 with fresh noise, then 400 -> clean; zeta 0.5): the state after
    each agrees with one step of deepinv's DPS (VP SDE, DDPM solver, "norm" guidance) to 1e-5
    (measured 3e-7: its denoiser and gradient run in float32). Inpainting on deepinv's Inpainting,
    x2 average-pool SR on our operator as a LinearPhysics.

    Set aside: (1) the step size. DPS's paper and code (and ours) step ``x_next = x'_next - zeta
    grad ||y - A x0(x_t)||``; deepinv puts ``lambda grad`` into the score, which its ancestral step
    multiplies by ``s_t s_next sigma_t^2 (1 - sigma_next^2 / sigma_t^2)`` (VE sigma, VP scale s), and
    measures the residual on [0, 1] (half ours). So each step is one deepinv call whose lambda is
    ``2 zeta`` over that factor. (2) times: deepinv's continuous VP time is solved for
    ``scale_t^2 = abar_t`` at our t = 700, 400, and ours runs on the sub-schedule
    ``alpha_bar[[400, 700]]``. (3) clip: DPS's code clips x0 to [-1, 1] (``clip_denoised``) and takes
    the gradient through the clip; ours clips only for the ancestral step and differentiates the
    unclipped x0; deepinv 0.5.0 clips its [0, 1]-scale x0 to [-1, 1] (i.e. [-3, 1] on the state's
    scale) for both. The model is bounded so that no clip acts.
    """
    op, physics, y_ours, y_dinv = problem(task)
    zeta = 0.5
    abar = tiny.alpha_bar()
    sub = [400, 700]
    gens, twin = twins()
    zs = draws(twin, 3, y_ours)  # x_700, the noise to t = 400, the (unused) noise of the last step
    ours_eps = Recorded(tiny, abar, bounded=True)
    sampling = Sampling(solver="dps", steps=2, solver_settings={"zeta": zeta})
    ours = sampling.info.run(Reindexed(ours_eps, sub), y_ours, op, abar[sub], gens, sampling, None).x
    assert [t for t, _ in ours_eps.calls] == [700, 400]

    theirs_eps = Recorded(tiny, abar, bounded=True)
    dps = dinv.sampling.DPS(Denoiser(theirs_eps, abar), num_steps=2)
    x = zs[0]
    for t, t_next, z in [(700, 400, zs[1]), (400, -1, None)]:
        ab, ab_next = float(abar[t]), 1.0 if t_next < 0 else float(abar[t_next])
        sig2, sig2_next = (1 - ab) / ab, (1 - ab_next) / ab_next
        factor = math.sqrt(ab * ab_next) * sig2 * (1 - sig2_next / sig2)
        dps.data_fidelity.weight = 2 * zeta / factor
        steps = torch.tensor([vp_time(ab), 0.0 if t_next < 0 else vp_time(ab_next)], dtype=F64)
        fake = inject([] if z is None else [z])
        with monkeypatch.context() as m:
            m.setattr(dps.solver, "randn_like", fake)
            x = 2 * dps(y_dinv, physics, x_init=x, timesteps=steps, denoise_output=False) - 1
        assert fake.left() == 0
        if t_next >= 0:
            assert_close(ours_eps.calls[1][1], x, 1e-5, f"state at t={t_next}")
    assert_close(ours, x, 1e-5, "DPS result")

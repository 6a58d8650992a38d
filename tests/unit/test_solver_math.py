"""The solvers of ddnm.solvers against what their papers say, on an exact Gaussian prior.

The prior (tests/unit/test_gaussian_prior.py) gives an exact eps model, so each solver's behaviour can
be checked without a trained network: DDRM at eta = eta_b = 1 is DDNM sample for sample; projection
solvers are consistent to float precision; DPS and DiffPIR pull the denoiser's estimate onto the
measurement step after step, where the same sampler without its data term does not; every solver's
sample mean lands nearer the exact posterior mean than A^+ y does. The noisy paths that have two
implementations (per singular value, conjugate gradient) agree with each other.
"""

import pytest
import torch

from ddnm.operators import Operator, build
from ddnm.sampling import image_generator
from ddnm.solvers import SOLVERS, Sampling
from ddnm.solvers.common import adjoint
from ddnm.solvers.diffpir import data_step
from ddnm.solvers.pigdm import guidance_vector
from tests.unit.test_gaussian_prior import ABAR, P, make_pool, make_prior

N = 4


@pytest.fixture(scope="module")
def prior():
    return make_prior()


@pytest.fixture(scope="module")
def pool():
    return make_pool()


class HiddenSVD(Operator):
    """The same A and A_pinv, no SVD view: what a user's own operator looks like to a solver."""

    def __init__(self, inner):
        super().__init__(inner.x_shape)
        self.inner = inner

    def A(self, x):
        return self.inner.A(x)

    def A_pinv(self, y):
        return self.inner.A_pinv(y)


def gens(n, k=1, seed=0):
    return [image_generator(seed, f"img{i}", "cpu", j) for i in range(n) for j in range(k)]


def observe(prior, op, n=N, sigma=0.0, k=1):
    x = prior.sample(n, torch.Generator().manual_seed(0)).view(n, 1, P, P)
    y = op.A(x)
    if sigma:
        y = y + 2 * sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return x, y.repeat_interleave(k, 0)


def run(name, prior, op, y, *, steps, k=1, callback=None, model=None, **kw):
    s = Sampling(solver=name, steps=steps, **kw)
    return s.info.run(model or prior, y, op, ABAR, gens(y.shape[0] // k, k), s, callback)


@pytest.mark.parametrize("task", ["sr_avgpool", "sr_bicubic", "inpaint", "cs_walsh"])
def test_ddrm_at_eta_one_is_ddnm_sample_for_sample(prior, task):
    """DDNM paper sec. 3.4: with eta = eta_b = 1 and sigma_y = 0 DDRM's update is DDNM's; both draw the
    same noise here, so the samples agree to float64 rounding. At eta = 0.85 they do not (the check can
    fail) on these tasks with a null space (on a full-rank blur both return A^+ y whatever eta)."""
    op = build(task, x_shape=(1, P, P), dtype=torch.float64)
    _, y = observe(prior, op)
    ddnm = run("ddnm", prior, op, y, steps=50, eta=1.0).x
    ddrm = run("ddrm", prior, op, y, steps=50, eta=1.0, solver_settings={"eta_b": 1.0, "init": "noise"}).x
    assert (ddrm - ddnm).abs().max().item() < 1e-9
    ddnm_85 = run("ddnm", prior, op, y, steps=50, eta=0.85).x
    ddrm_85 = run("ddrm", prior, op, y, steps=50, eta=0.85, solver_settings={"init": "noise"}).x
    assert (ddrm_85 - ddnm_85).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["ddnm", "ddrm"])
def test_projection_solvers_are_consistent_on_noiseless_y(prior, pool, name):
    op, _ = pool
    _, y = observe(prior, op)
    x = run(name, prior, op, y, steps=20).x
    assert (op.A(x) - y).flatten(1).norm(dim=1).max().item() < 1e-5


def _denoiser_residuals(prior, op, y):
    """A model that records ||A x0(x_t) - y|| per call (Tweedie's x0 of every x_t it is given)."""
    out = []

    def model(x, t):
        e = prior(x, t)
        ab = ABAR[t].to(x)[:, None, None, None]
        x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
        out.append((op.A(x0) - y).flatten(1).norm(dim=1).mean().item())
        return e

    return model, out


@pytest.mark.parametrize("name, steps, off", [("dps", 400, {"zeta": 0.0}),
                                             ("diffpir", 100, {"lambda": 1e12})])
@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_guided_solvers_pull_the_estimate_onto_the_measurement(prior, pool, name, steps, off, sigma):
    """The denoiser's residual ||A x0 - y||, averaged over quarters of the run, falls quarter after
    quarter, and ends below a quarter of where the same sampler without its data term ends (zeta = 0:
    DPS is plain ancestral sampling; lambda -> inf: DiffPIR's data step does nothing)."""
    op, _ = pool
    _, y = observe(prior, op, sigma=sigma)
    model, res = _denoiser_residuals(prior, op, y)
    run(name, prior, op, y, steps=steps, sigma_y=sigma, model=model)
    q = len(res) // 4
    quarters = [sum(res[i * q:(i + 1) * q]) / q for i in range(4)]
    assert all(b < a for a, b in zip(quarters, quarters[1:], strict=False)), quarters
    model_off, res_off = _denoiser_residuals(prior, op, y)
    run(name, prior, op, y, steps=steps, sigma_y=sigma, model=model_off, solver_settings=off)
    assert res[-1] < 0.25 * res_off[-1], (res[-1], res_off[-1])


STEPS = {"ddnm": 100, "ddnm+": 100, "ddrm": 20, "pigdm": 100, "dps": 400, "diffpir": 100, "reddiff": 500,
         "daps": 40}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_solver_lands_nearer_the_posterior_mean_than_the_pseudo_inverse(prior, pool, name):
    """16 samples of each of 4 images, 4x SR, noiseless: the mean of a solver's samples is nearer the
    exact posterior mean (RMSE on [0, 1]) than A^+ y is (0.032). Measured: ddnm 0.010, ddrm 0.011,
    pigdm 0.011, dps 0.029 (1000 steps), diffpir 0.013, reddiff 0.010, daps 0.015 (200 levels)."""
    op, A = pool
    K = 16
    x, y = observe(prior, op, k=K)
    settings = {"langevin_steps": 50} if name == "daps" else {}
    out = run(name, prior, op, y, steps=STEPS[name], k=K, solver_settings=settings)
    y1 = y[::K]
    post = prior.posterior_mean(A, y1.flatten(1))
    mean = out.x.view(N, K, -1).mean(1)
    rmse = ((mean - post) / 2).pow(2).mean().sqrt().item()
    pinv = ((op.A_pinv(y1).flatten(1) - post) / 2).pow(2).mean().sqrt().item()
    assert rmse < pinv, (rmse, pinv)
    assert torch.isfinite(out.x).all()
    expected = Sampling(solver=name, steps=STEPS[name], solver_settings=settings).model_calls(1000)
    assert out.model_calls == expected


@pytest.mark.parametrize("task", ["sr_avgpool", "deblur_gauss", "inpaint"])
def test_noisy_paths_agree_with_and_without_an_svd(prior, task):
    """PiGDM's guidance vector and DiffPIR's data step per singular value equal their conjugate-gradient
    forms on the same operator with its SVD hidden."""
    op = build(task, x_shape=(1, P, P), dtype=torch.float64)
    hidden = HiddenSVD(op)
    x, y = observe(prior, op, sigma=0.05)
    x0 = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    kw = dict(cg_iters=500, cg_tol=1e-12)
    a = guidance_vector(op, y, x0, 0.3, 0.1, **kw)
    b = guidance_vector(hidden, y, x0, 0.3, 0.1, **kw)
    assert (a - b).abs().max().item() < 1e-6 * max(1.0, a.abs().max().item())
    from ddnm.solvers.common import svd_parts

    c = data_step(op, y, x0, 0.05, svd=svd_parts(op, y, torch.float64), **kw)
    d = data_step(hidden, y, x0, 0.05, **kw)
    assert (c - d).abs().max().item() < 1e-6
    # the data step solves its normal equations: (A^T A + rho) x = A^T y + rho x0
    lhs = adjoint(op, op.A(c)) + 0.05 * c
    assert (lhs - adjoint(op, y) - 0.05 * x0).abs().max().item() < 1e-8


@pytest.mark.parametrize("task", ["sr_avgpool", "sr_bicubic", "deblur_aniso", "cs_walsh", "inpaint"])
def test_adjoint_is_the_transpose(task):
    op = build(task, x_shape=(1, P, P), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, P, P, generator=g, dtype=torch.float64)
    v = torch.randn(op.A(x).shape, generator=g, dtype=torch.float64)
    lhs = (op.A(x) * v).flatten(1).sum(1)
    rhs = (x * adjoint(op, v)).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["dps", "pigdm", "reddiff", "daps", "diffpir"])
def test_an_image_result_does_not_depend_on_its_batch(prior, pool, name):
    """Per-image norms, per-image conjugate gradient, per-image Adam: image 0 alone equals image 0 in a
    batch of 4 (what lets a job shard and batch freely)."""
    op, _ = pool
    _, y = observe(prior, op, sigma=0.02)
    settings = {"langevin_steps": 5} if name == "daps" else {}
    both = run(name, prior, op, y, steps=10, sigma_y=0.02, solver_settings=settings).x
    one = run(name, prior, op, y[:1], steps=10, sigma_y=0.02, solver_settings=settings).x
    assert (both[:1] - one).abs().max().item() < 1e-10


def test_ddrm_is_refused_on_an_operator_without_an_svd(prior, pool):
    from ddnm.restoration import sample_batch

    op, _ = pool
    _, y = observe(prior, op)
    with pytest.raises(ValueError, match="solver ddrm needs an SVD of the operator, and task custom "
                                         "has none"):
        sample_batch(prior, HiddenSVD(op), y, keys=[f"k{i}" for i in range(N)],
                     sampling=Sampling(solver="ddrm", steps=5), alpha_bar=ABAR)


@pytest.mark.parametrize("name, bad, match", [("ddrm", {"init": "zeros"}, "init='zeros'"),
                                              ("ddrm", {"eta_b": 2}, "eta_b=2"),
                                              ("diffpir", {"zeta": 1.5}, "zeta=1.5"),
                                              ("dps", {"step": 1}, "has no setting 'step'")])
def test_bad_solver_settings_are_refused_naming_them(name, bad, match):
    with pytest.raises(ValueError, match=match):
        Sampling(solver=name, solver_settings=bad)


def test_every_registered_solver_documents_its_defaults():
    """Each setting's help names where its default comes from; each solver names its paper and steps."""
    for solver in SOLVERS.values():
        assert solver.paper
        for key, (_, _, help_) in solver.settings.items():
            assert help_.rstrip().endswith(")"), (solver.name, key)
        if solver.name not in ("ddnm", "ddnm+"):
            assert solver.paper_steps, solver.name

"""Score-matching losses against closed forms on Gaussian data."""

import math

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.losses import (
    dsm_loss,
    dsm_optimum_gaussian,
    implicit_score_matching_loss,
    loss_weight,
    sample_time,
    sliced_score_matching_loss,
)

F64 = torch.float64
MU = torch.tensor([0.5, -1.0], dtype=F64)
COV = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=F64)


def _dsm_mc(sde, score_fn, weighting, n=200_000, seed=0, **kw):
    data = sg.analytic.Gaussian(MU, COV)
    x0 = data.sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    per = dsm_loss(score_fn, sde, x0, weighting=weighting, generator=torch.Generator().manual_seed(seed + 1), reduce=False, **kw)
    return float(per.mean()), float(per.std() / math.sqrt(n))


@pytest.mark.parametrize("sde", [sg.VPSDE(), sg.SubVPSDE(), sg.VESDE(sigma_max=10.0)], ids=repr)
@pytest.mark.parametrize("weighting", ["sigma2", "g2"])
def test_dsm_at_the_exact_score_equals_its_irreducible_constant(sde, weighting):
    """MC estimate of the DSM loss at the exact score vs the closed-form constant (quadrature).

    Budget: 5 Monte-Carlo standard errors of the 200k-sample mean (no bias: the estimator is
    unbiased). Control: the score of a Gaussian with the mean shifted by 1.0 gives a loss above
    the constant by more than that band (g^2 weighting without importance sampling is noisy, so
    the control needs a shift the estimator can resolve).
    """
    data = sg.analytic.Gaussian(MU, COV)
    const = dsm_optimum_gaussian(sde, COV, weighting=weighting)
    est, se = _dsm_mc(sde, data.score_fn(sde), weighting)
    assert abs(est - const) <= 5 * se, (est, const, se)
    wrong = sg.analytic.Gaussian(MU + 1.0, COV)
    est_w, se_w = _dsm_mc(sde, wrong.score_fn(sde), weighting)
    assert est_w - const > 5 * se_w


def test_importance_sampling_is_unbiased_and_reduces_variance():
    """g^2 weighting: IS estimate equals the uniform-t estimate (both unbiased, 5 SE band) and
    its per-sample spread is smaller (the point of IS)."""
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(MU, COV)
    const = dsm_optimum_gaussian(sde, COV, weighting="g2")
    est_u, se_u = _dsm_mc(sde, data.score_fn(sde), "g2")
    est_i, se_i = _dsm_mc(sde, data.score_fn(sde), "g2", importance_sampling=True)
    assert abs(est_i - const) <= 5 * se_i
    assert abs(est_u - const) <= 5 * se_u
    assert se_i < se_u


def test_importance_time_density_is_proportional_to_g2_over_sigma2():
    """Histogram of IS times vs p(t) = (g^2/sigma^2)/Z: chi-square-style check per bin (5 SE)."""
    sde = sg.VPSDE()
    n = 200_000
    t = sample_time(sde, n, importance=True, generator=torch.Generator().manual_seed(0))
    edges = torch.tensor([sde.eps, 0.01, 0.05, 0.2, 0.5, 1.0], dtype=F64)
    logsnr = sde.log_snr(edges)
    p_bin = (logsnr[:-1] - logsnr[1:]) / (logsnr[0] - logsnr[-1])  # exact bin probabilities
    counts = torch.histogram(t, bins=edges).hist / n
    se = torch.sqrt(p_bin * (1 - p_bin) / n)
    assert bool(((counts - p_bin).abs() <= 5 * se).all())
    u = sample_time(sde, n, generator=torch.Generator().manual_seed(0))
    cu = torch.histogram(u, bins=edges).hist / n
    assert bool(((cu - p_bin).abs() > 5 * se).any())  # control: uniform times are rejected


def test_weightings_match_their_formulas():
    sde = sg.VPSDE()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=F64)
    assert torch.allclose(loss_weight(sde, t, "sigma2"), sde.sigma(t) ** 2)
    assert torch.allclose(loss_weight(sde, t, "g2"), sde.g2(t))
    a, s = sde.alpha(t), sde.sigma(t)
    sb = s / a
    assert torch.allclose(loss_weight(sde, t, "edm", sigma_data=0.5), a**2 * sb**2 * (sb**2 + 0.25) / 0.25)
    assert torch.allclose(loss_weight(sde, t, lambda u: 2 * u), 2 * t)


def test_dsm_eps_model_equals_ddpm_mse():
    """With an eps network and sigma^2 weighting the DSM loss is exactly ||eps_hat - eps||^2."""
    sde = sg.VPSDE()

    def eps_net(x, t):
        return 0.3 * x

    model = sg.ScoreModel(eps_net, sde, "eps")
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.rand(64, dtype=F64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    loss = dsm_loss(model, sde, x0, t=t, generator=torch.Generator().manual_seed(2), reduce=False)
    noise = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    xt = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * noise
    assert torch.allclose(loss, (0.3 * xt - noise).pow(2).sum(1), rtol=1e-10)


def test_gradient_of_dsm_wrt_a_perturbation_is_nonzero():
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(MU, COV)
    delta = torch.zeros(2, dtype=F64, requires_grad=True)
    exact = data.score_fn(sde)
    x0 = data.sample(4096, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss = dsm_loss(lambda x, t: exact(x, t) + delta, sde, x0, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert float(delta.grad.abs().max()) > 0


def _linear_score(A, m):
    return lambda x: -(x - m) @ A.T


def test_ssm_and_ism_agree_with_the_fisher_divergence_closed_form():
    """For a linear score s(x) = -A (x - m) on N(mu, C):
    ISM = 1/2 E||s||^2 - tr A,  E||s||^2 = tr(A^T A (C + (mu - m)(mu - m)^T)).
    SSM (both forms) has the same expectation. Budget: 5 MC SE at N=100k; control: a different A.
    """
    A = torch.tensor([[1.5, 0.3], [0.1, 2.0]], dtype=F64)
    m = torch.tensor([0.2, -0.8], dtype=F64)
    d = (MU - m)[:, None]
    exact = 0.5 * float(torch.trace(A.T @ A @ (COV + d @ d.T))) - float(torch.trace(A))
    x = sg.analytic.Gaussian(MU, COV).sample(100_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    ism = implicit_score_matching_loss(_linear_score(A, m), x, reduce=False)
    for vr in (True, False):
        for proj in ("rademacher", "gaussian"):
            ssm = sliced_score_matching_loss(_linear_score(A, m), x, variance_reduced=vr, projection=proj,
                                             generator=torch.Generator().manual_seed(1), reduce=False)
            se = float(ssm.detach().std()) / math.sqrt(x.shape[0])
            assert abs(float(ssm.detach().mean()) - exact) <= 5 * se, (vr, proj)
    se = float(ism.detach().std()) / math.sqrt(x.shape[0])
    assert abs(float(ism.detach().mean()) - exact) <= 5 * se + 1e-12
    # control: the same check rejects a different linear score
    A2 = 2.0 * A
    ism2 = float(implicit_score_matching_loss(_linear_score(A2, m), x).detach())
    assert abs(ism2 - exact) > 5 * se


def test_ism_is_minimised_by_the_true_score():
    """ISM(true score) < ISM(perturbed): ISM = Fisher divergence + const."""
    prec = torch.linalg.inv(COV)
    x = sg.analytic.Gaussian(MU, COV).sample(20_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    best = float(implicit_score_matching_loss(_linear_score(prec, MU), x).detach())
    worse = float(implicit_score_matching_loss(_linear_score(prec * 1.3, MU), x).detach())
    assert best < worse


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: dsm_loss(lambda x, t: x, sg.VPSDE(), torch.zeros(4, 2), weighting="snr"), ValueError, "weighting"),
        (lambda: dsm_loss(lambda x, t: x, sg.VPSDE(), torch.zeros(4, 2), importance_sampling=True), ValueError, "importance_sampling"),
        (lambda: dsm_loss(lambda x, t: x[:, :1], sg.VPSDE(), torch.zeros(4, 2)), ValueError, "score_model returned shape"),
        (lambda: dsm_loss(lambda x, t: x, sg.VPSDE(), torch.zeros(4)), ValueError, "x0"),
        (lambda: sample_time(sg.VPSDE(), 4, eps=2.0), ValueError, "eps"),
        (lambda: sliced_score_matching_loss(lambda x: x, torch.zeros(4, 2), n_projections=0), ValueError, "n_projections"),
        (lambda: sliced_score_matching_loss(lambda x: x, torch.zeros(4, 2), projection="sphere"), ValueError, "projection"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

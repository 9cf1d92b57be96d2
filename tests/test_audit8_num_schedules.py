"""Audit 8 (numerics): value tests of the schedules, the analytic oracles, the parameterisations
and bits/dim, at non-default settings (T != 1, non-default beta/sigma, per-sample times).

Every oracle is written here independently of the library: closed forms typed from the papers,
scipy densities, diffusers' schedules, finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import PchipInterpolator
from scipy.stats import multivariate_normal

from sdesolve_gen.analytic import (
    Gaussian,
    GaussianMixture,
    analytic_classifier,
    analytic_conditional_score,
    gaussian_conditional,
)
from sdesolve_gen.bpd import bits_per_dim, dequantize
from sdesolve_gen.discrete import DiscreteVPSDE, betas_for_schedule
from sdesolve_gen.parameterisation import ScoreModel, convert, from_score, to_score
from sdesolve_gen.sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, LinearSDE, SubVPSDE

f64 = torch.float64
TS = torch.tensor([0.05, 0.3, 0.77, 1.4, 1.9], dtype=f64)  # times on [0, T = 2]


def _fd(fn, t, h=1e-6):
    return (fn(t + h) - fn(t - h)) / (2 * h)


# ----------------------------------------------------------------------------- closed-form schedules


def test_vp_closed_forms_nondefault_T_and_betas():
    b0, b1, T = 0.3, 7.0, 2.0
    sde = VPSDE(beta_min=b0, beta_max=b1, T=T, eps=2e-3)
    t = TS
    B = b0 * t + 0.5 * (b1 - b0) * t**2  # the library's convention: beta(t) = b0 + t (b1 - b0)
    assert torch.allclose(sde.alpha(t), torch.exp(-B / 2), rtol=1e-12, atol=0)
    assert torch.allclose(sde.sigma(t) ** 2, 1 - torch.exp(-B), rtol=1e-12, atol=0)
    assert torch.allclose(sde.g2(t), b0 + t * (b1 - b0), rtol=1e-12, atol=0)
    assert torch.allclose(sde.drift_coef(t), -0.5 * (b0 + t * (b1 - b0)), rtol=1e-12)
    assert torch.allclose(sde.dsigma2_dt(t), _fd(lambda s: 1 - torch.exp(-(b0 * s + 0.5 * (b1 - b0) * s**2)), t), rtol=1e-7)
    assert torch.allclose(sde.log_snr(t), torch.log(torch.exp(-B) / (1 - torch.exp(-B))), rtol=1e-10)
    assert torch.allclose(sde.half_log_snr(t), 0.5 * sde.log_snr(t), rtol=1e-12)
    assert torch.allclose(sde.t_of_lambda(sde.half_log_snr(t)), t, atol=1e-10)
    assert torch.allclose(sde.t_of_int_beta(B), t, atol=1e-12)
    assert sde.prior_std == 1.0 and sde.T == T and sde.eps == 2e-3


def test_subvp_closed_forms_nondefault():
    b0, b1, T = 0.2, 5.0, 2.0
    sde = SubVPSDE(beta_min=b0, beta_max=b1, T=T, eps=1e-2)
    t = TS
    B = b0 * t + 0.5 * (b1 - b0) * t**2
    beta = b0 + t * (b1 - b0)
    assert torch.allclose(sde.alpha(t), torch.exp(-B / 2), rtol=1e-12)
    assert torch.allclose(sde.sigma(t), 1 - torch.exp(-B), rtol=1e-12)
    assert torch.allclose(sde.g2(t), beta * (1 - torch.exp(-2 * B)), rtol=1e-12)
    assert torch.allclose(sde.dsigma2_dt(t), _fd(lambda s: (1 - torch.exp(-(b0 * s + 0.5 * (b1 - b0) * s**2))) ** 2, t), rtol=1e-7)
    assert torch.allclose(sde.drift_coef(t), -0.5 * beta, rtol=1e-12)
    assert torch.allclose(sde.t_of_lambda(sde.half_log_snr(t)), t, atol=1e-9)
    assert sde.prior_std == 1.0


def test_ve_closed_forms_T2():
    smin, smax, T = 0.05, 20.0, 2.0
    sde = VESDE(sigma_min=smin, sigma_max=smax, T=T, eps=1e-4)
    t = TS
    sig = smin * (smax / smin) ** (t / T)
    assert torch.allclose(sde.sigma(t), sig, rtol=1e-12)
    assert torch.allclose(sde.alpha(t), torch.ones_like(t))
    assert torch.allclose(sde.g2(t), 2 * sig**2 * math.log(smax / smin) / T, rtol=1e-12)
    assert torch.allclose(sde.drift_coef(t), torch.zeros_like(t))
    assert torch.allclose(sde.t_of_lambda(-torch.log(sig)), t, atol=1e-12)
    assert sde.prior_std == smax and sde.eps == 1e-4
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=f64)
    lp = sde.prior_log_prob(x)
    ref = torch.tensor(multivariate_normal(np.zeros(4), smax**2 * np.eye(4)).logpdf(x.numpy()))
    assert torch.allclose(lp, ref, rtol=1e-12)


def test_cosine_closed_forms_nondefault_s():
    s, T = 0.02, 0.9
    sde = CosineVPSDE(s=s, T=T, eps=1e-2)
    t = torch.tensor([0.0, 0.1, 0.45, 0.8, 0.9], dtype=f64)
    ph = lambda u: math.pi / 2 * (u + s) / (1 + s)  # noqa: E731
    a2 = torch.cos(ph(t)) ** 2 / math.cos(ph(0.0)) ** 2
    assert torch.allclose(sde.alpha(t) ** 2, a2, rtol=1e-12)
    assert torch.allclose(sde.sigma(t) ** 2, 1 - a2, atol=1e-14)
    assert torch.allclose(sde.g2(t[1:]), math.pi / (1 + s) * torch.tan(ph(t[1:])), rtol=1e-10)
    assert torch.allclose(sde.t_of_lambda(sde.half_log_snr(t[1:])), t[1:], atol=1e-9)
    assert sde.T == T


def test_edm_closed_forms():
    sde = EDMSDE(sigma_min=0.01, sigma_max=30.0)
    t = torch.tensor([0.01, 0.5, 3.0, 29.0], dtype=f64)
    assert sde.T == 30.0 and sde.eps == 0.01 and sde.prior_std == 30.0
    assert torch.allclose(sde.sigma(t), t)
    assert torch.allclose(sde.g2(t), 2 * t)
    assert torch.allclose(sde.t_of_lambda(-torch.log(t)), t, rtol=1e-12)


def test_custom_linear_sde_autograd_derivatives_and_prior():
    T = 1.5
    sde = LinearSDE(alpha=lambda t: torch.exp(-0.4 * t**2), sigma=lambda t: 0.1 + t, T=T, eps=1e-2)
    t = torch.tensor([0.1, 0.7, 1.3], dtype=f64)
    # g^2 = (sigma^2)' - 2 (log alpha)' sigma^2 = 2 (0.1 + t) + 1.6 t (0.1 + t)^2
    assert torch.allclose(sde.g2(t), 2 * (0.1 + t) + 1.6 * t * (0.1 + t) ** 2, rtol=1e-12)
    assert torch.allclose(sde.drift_coef(t), -0.8 * t, rtol=1e-12)
    assert math.isclose(sde.prior_std, 0.1 + T, rel_tol=1e-12)
    assert torch.allclose(sde.t_of_lambda(sde.half_log_snr(t)), t, atol=1e-10)
    sde2 = LinearSDE(alpha=lambda t: torch.exp(-0.4 * t**2), sigma=lambda t: 0.1 + t, T=T, prior_std=3.0)
    assert sde2.prior_std == 3.0
    x = torch.full((2, 3), 1.5, dtype=f64)
    assert torch.allclose(sde2.prior_log_prob(x), torch.full((2,), -1.5 * math.log(2 * math.pi * 9) - 0.5 * 3 * 2.25 / 9, dtype=f64))
    z = sde2.prior_sample((4000, 2), generator=torch.Generator().manual_seed(1), dtype=f64)
    assert z.dtype == f64
    # sample sd of 8000 N(0, 9) values: relative standard error 1/sqrt(2 * 8000) = 0.0079 -> 5 sd = 0.040
    assert abs(float(z.std()) / 3.0 - 1) < 0.04
    # negative control: the same check rejects a prior sd of 3.3 (10 % off, 12 sd)
    assert not abs(float(1.1 * z.std()) / 3.0 - 1) < 0.04


def test_marginal_perturb_per_sample_times_and_torchsde_interface():
    sde = VPSDE(beta_min=0.5, beta_max=4.0, T=2.0)
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [2.0, 0.0]], dtype=f64)
    t = torch.tensor([0.2, 1.0, 1.8], dtype=f64)
    B = 0.5 * t + 0.5 * 3.5 * t**2
    mean, std = sde.marginal(x0, t)
    assert torch.allclose(mean, torch.exp(-B / 2)[:, None] * x0, rtol=1e-12)
    assert torch.allclose(std.reshape(-1), torch.sqrt(1 - torch.exp(-B)), rtol=1e-12)
    g = torch.Generator().manual_seed(5)
    xt, noise = sde.perturb(x0, t, generator=g)
    ref_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=f64)
    assert torch.equal(noise, ref_noise)
    assert torch.allclose(xt, mean + std * noise, rtol=1e-14)
    tt = torch.tensor(1.2, dtype=f64)
    beta = 0.5 + 1.2 * 3.5
    assert torch.allclose(sde.f(tt, x0), -0.5 * beta * x0, rtol=1e-12)
    assert torch.allclose(sde.g(tt, x0), torch.full_like(x0, math.sqrt(beta)), rtol=1e-12)
    v = torch.ones_like(x0) * 2
    assert torch.allclose(sde.g_prod(tt, x0, v), 2 * math.sqrt(beta) * torch.ones_like(x0), rtol=1e-12)
    f, gv = sde.f_and_g_prod(tt, x0, v)
    assert torch.allclose(f, -0.5 * beta * x0) and torch.allclose(gv, sde.g_prod(tt, x0, v))
    with pytest.raises(ValueError):
        sde.time(2.1)
    assert float(sde.time(2.0)) == 2.0


def test_from_betas_forwards_every_argument():
    sde = LinearSDE.from_betas("linear", 50, 0.001, 0.05, eps=0.03)
    ref = torch.cumprod(1 - torch.linspace(0.001, 0.05, 50, dtype=f64), 0)
    assert torch.allclose(sde.alphas_cumprod, ref, rtol=1e-12)
    assert sde.eps == 0.03 and sde.num_train_timesteps == 50
    tb = torch.linspace(0.01, 0.2, 20, dtype=f64)
    sde2 = LinearSDE.from_betas(trained_betas=tb)
    assert torch.allclose(sde2.alphas_cumprod, torch.cumprod(1 - tb, 0), rtol=1e-12)
    assert sde2.eps == 1 / 20


# ----------------------------------------------------------------------------- discrete schedule


@pytest.mark.parametrize("schedule,start,end", [("linear", 2e-4, 0.03), ("scaled_linear", 0.00085, 0.012),
                                                ("squaredcos_cap_v2", 0.1, 0.2)])
def test_betas_match_diffusers(schedule, start, end):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=64, beta_schedule=schedule, beta_start=start, beta_end=end)
    ours = betas_for_schedule(schedule, 64, start, end)
    assert torch.allclose(ours.float(), sched.betas.float(), rtol=1e-5, atol=1e-7)


def test_discrete_vp_pchip_matches_scipy_and_knots():
    N = 40
    acp = torch.cumprod(1 - torch.linspace(5e-3, 0.2, N, dtype=f64), 0)
    sde = DiscreteVPSDE(acp)
    assert sde.eps == 1 / N
    knots_t = np.arange(N + 1) / N
    knots_B = np.concatenate([[0.0], -np.log(acp.numpy())])
    ref = PchipInterpolator(knots_t, knots_B)
    t = torch.tensor([0.013, 0.1123, 0.37, 0.5037, 0.81, 0.999], dtype=f64)
    assert torch.allclose(sde.int_beta(t), torch.tensor(ref(t.numpy())), rtol=1e-10, atol=1e-12)
    assert torch.allclose(sde.beta(t), torch.tensor(ref.derivative()(t.numpy())), rtol=1e-8, atol=1e-10)
    assert torch.allclose(sde.g2(t), sde.beta(t))
    assert torch.allclose(sde.alpha(torch.arange(1, N + 1, dtype=f64) / N) ** 2, acp, rtol=1e-12)
    assert torch.allclose(sde.sigma(t) ** 2, 1 - torch.exp(-sde.int_beta(t)), rtol=1e-12)
    assert torch.allclose(sde.dsigma2_dt(t), _fd(lambda s: -torch.expm1(-sde.int_beta(s)), t), rtol=1e-6)
    assert torch.allclose(sde.drift_coef(t), -0.5 * sde.beta(t))
    assert torch.allclose(sde.t_of_lambda(sde.half_log_snr(t)), t, atol=1e-12)
    assert torch.allclose(sde.timestep_of(torch.tensor([1 / N, 0.5, 1.0], dtype=f64)), torch.tensor([0.0, N / 2 - 1, N - 1.0], dtype=f64))
    assert torch.allclose(sde.time_of_timestep(torch.tensor([0.0, 9.0, 39.0])), torch.tensor([1 / N, 10 / N, 1.0], dtype=f64))


# ----------------------------------------------------------------------------- analytic mixture


def _mix():
    means = torch.tensor([[1.0, -0.5, 0.2], [-1.5, 1.0, 0.0]], dtype=f64)
    c0 = torch.tensor([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]], dtype=f64)
    c1 = torch.tensor([[0.2, -0.05, 0.0], [-0.05, 0.6, 0.1], [0.0, 0.1, 0.4]], dtype=f64)
    w = torch.tensor([0.3, 0.7], dtype=f64)
    return GaussianMixture(means, torch.stack([c0, c1]), w), means, torch.stack([c0, c1]), w


def _scipy_mix_logpdf(x, means, covs, w, a=1.0, s2=0.0):
    comps = [np.log(w[k]) + multivariate_normal(a * means[k], a * a * covs[k] + s2 * np.eye(means.shape[1])).logpdf(x)
             for k in range(len(w))]
    return np.logaddexp.reduce(np.stack(comps, 0), axis=0)


def test_mixture_log_prob_marginal_and_score_vs_scipy():
    gm, means, covs, w = _mix()
    sde = VPSDE(beta_min=0.2, beta_max=6.0, T=2.0)
    x = torch.tensor([[0.3, 0.1, -0.2], [-1.0, 0.8, 0.5], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=f64)
    m, c, ww = means.numpy(), covs.numpy(), w.numpy()
    assert np.allclose(gm.log_prob(x).numpy(), _scipy_mix_logpdf(x.numpy(), m, c, ww), rtol=1e-10)
    t = torch.tensor([0.1, 0.6, 1.2, 1.9], dtype=f64)
    a, s2 = sde.alpha(t).numpy(), (sde.sigma(t) ** 2).numpy()
    ref = np.array([_scipy_mix_logpdf(x[i].numpy(), m, c, ww, a[i], s2[i]) for i in range(4)])
    assert np.allclose(gm.log_prob_t(x, t, sde).numpy(), ref, rtol=1e-10)
    mg = gm.marginal(0.6, sde)
    assert np.allclose(mg.log_prob(x).numpy(), _scipy_mix_logpdf(x.numpy(), m, c, ww, float(sde.alpha(0.6)), float(sde.sigma(0.6)) ** 2))
    assert torch.allclose(gm.prior(sde).means, gm.marginal(2.0, sde).means)
    # score = gradient of log p_t (autograd of the scipy-checked density), per-sample times
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob_t(xg, t, sde).sum(), xg)
    assert torch.allclose(gm.score(x, t, sde), grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gm.score_fn(sde)(x, t), grad, rtol=1e-9, atol=1e-12)
    # responsibilities
    lr = gm.log_responsibilities(x, t, sde)
    comp0 = np.array([np.log(ww[0]) + multivariate_normal(a[i] * m[0], a[i] ** 2 * c[0] + s2[i] * np.eye(3)).logpdf(x[i].numpy())
                      for i in range(4)])
    assert np.allclose(lr[:, 0].numpy(), comp0 - ref, rtol=1e-9)
    assert torch.allclose(gm.mean, w @ means)
    cov_ref = sum(w[k] * (covs[k] + torch.outer(means[k], means[k])) for k in range(2)) - torch.outer(w @ means, w @ means)
    assert torch.allclose(gm.cov, cov_ref)


def test_mixture_sampling_statistics():
    gm, means, covs, w = _mix()
    x, lab = gm.sample_with_labels(20000, generator=torch.Generator().manual_seed(3), dtype=f64)
    # label frequency of component 1: p=0.7, sd sqrt(0.21/20000)=0.00324 -> 5 sd = 0.0162
    assert abs(float(lab.double().mean()) - 0.7) < 0.0162
    assert not abs(float((1 - lab).double().mean()) - 0.7) < 0.0162  # control: component 0's frequency 0.3
    x1 = x[lab == 1]
    n1 = x1.shape[0]
    assert n1 >= 13_600  # 0.7 * 20000 - 5 sd (sd 65) = 13676: the bounds below use n = 13600
    # per-coordinate mean of >= 13600 samples with var <= 0.6: sd sqrt(0.6/13600) = 0.0066 -> 5 sd = 0.033
    assert torch.allclose(x1.mean(0), means[1], atol=0.033, rtol=0)
    assert not torch.allclose(x1.mean(0), means[0], atol=0.033, rtol=0)  # control: the other component's mean
    # covariance entries: Var(sample cov_ij) = (C_ii C_jj + C_ij^2) / n <= 2 * 0.6^2 / 13600 (the largest
    # diagonal entry), sd 0.0073 -> 5 sd = 0.037
    assert torch.allclose(torch.cov(x1.T), covs[1], atol=0.037, rtol=0)
    # negative control: the other component's covariance is far away
    assert not torch.allclose(torch.cov(x1.T), covs[0], atol=0.037, rtol=0)


def test_gaussian_event_shape_and_conditional_oracles():
    g = Gaussian(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=f64), torch.diag(torch.tensor([1.0, 2.0, 0.5, 0.25], dtype=f64)), event_shape=(1, 2, 2))
    x = g.sample(5, generator=torch.Generator().manual_seed(0), dtype=f64)
    assert x.shape == (5, 1, 2, 2)
    ref = multivariate_normal([1, 2, 3, 4], np.diag([1.0, 2.0, 0.5, 0.25])).logpdf(x.reshape(5, 4).numpy())
    assert np.allclose(g.log_prob(x).numpy(), ref)

    gm, means, covs, w = _mix()
    sde = SubVPSDE(beta_min=0.1, beta_max=5.0, T=1.5)
    x = torch.tensor([[0.3, 0.1, -0.2], [-1.0, 0.8, 0.5], [2.0, -1.0, 0.0]], dtype=f64)
    t = torch.tensor([0.2, 0.7, 1.4], dtype=f64)
    y = torch.tensor([1, 0, 1])
    clf = analytic_classifier(gm, sde)
    lr = gm.log_responsibilities(x, t, sde)
    assert torch.allclose(clf(x, t, y), lr[torch.arange(3), y])
    assert torch.allclose(clf(x, t, 1), lr[:, 1])
    cs = analytic_conditional_score(gm, sde)
    a, s2 = sde.alpha(t), sde.sigma(t) ** 2
    for i in range(3):
        k = int(y[i])
        C = a[i] ** 2 * covs[k] + s2[i] * torch.eye(3, dtype=f64)
        ref_i = -torch.linalg.solve(C, x[i] - a[i] * means[k])
        assert torch.allclose(cs(x, t, y)[i], ref_i, rtol=1e-9)
        assert torch.allclose(cs(x, t, k)[i], ref_i, rtol=1e-9)

    mean = torch.tensor([0.5, -1.0, 2.0], dtype=f64)
    cov = covs[0] + 0.1 * torch.eye(3, dtype=f64)
    mask = torch.tensor([True, False, True])
    xk = torch.tensor([[1.0, 99.0, 0.0], [0.0, -5.0, 2.5]], dtype=f64)
    cm, cc = gaussian_conditional(mean, cov, mask, xk)
    Skk = cov[[0, 2]][:, [0, 2]]
    Suk = cov[[1]][:, [0, 2]]
    ref_m = mean[1] + (xk[:, [0, 2]] - mean[[0, 2]]) @ torch.linalg.inv(Skk) @ Suk.T
    assert torch.allclose(cm, ref_m, rtol=1e-12)
    assert torch.allclose(cc, cov[1:2, 1:2] - Suk @ torch.linalg.inv(Skk) @ Suk.T)


# ----------------------------------------------------------------------------- parameterisations


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.1, sigma_max=5.0, T=2.0), SubVPSDE(T=1.5)], ids=["ve", "subvp"])
def test_conversions_hand_formulas_per_sample_coefficients(sde):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, generator=gen, dtype=f64)
    s = torch.randn(3, 2, 2, generator=gen, dtype=f64)
    t = torch.tensor([0.3, 0.9, 1.4], dtype=f64)
    a, sg_ = sde.alpha(t), sde.sigma(t)
    A, S = a[:, None, None], sg_[:, None, None]
    eps = -S * s
    x0 = (x + S**2 * s) / A
    v = A * eps - S * x0
    for kind, pred in (("eps", eps), ("x0", x0), ("v", v), ("score", s)):
        assert torch.allclose(from_score(s, kind, x, a, sg_), pred, rtol=1e-12, atol=1e-12)
        assert torch.allclose(to_score(pred, kind, x, a, sg_), s, rtol=1e-10, atol=1e-10)
    assert torch.allclose(convert(eps, "eps", "v", x, a, sg_), v, rtol=1e-10, atol=1e-12)
    assert torch.allclose(convert(x0, "x0", "eps", x, a, sg_), eps, rtol=1e-10, atol=1e-12)
    # scalar coefficients
    assert torch.allclose(to_score(eps[:1], "eps", x[:1], float(a[0]), float(sg_[0])), s[:1], rtol=1e-12)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
def test_score_model_wraps_every_parameterisation(kind):
    sde = VPSDE(beta_min=0.3, beta_max=8.0, T=2.0)
    gm, *_ = _mix()
    true = gm.score_fn(sde)
    seen = {}

    def net(x, t, *, scale=1.0):
        seen["t"], seen["scale"] = t, scale
        tt = t.to(f64)
        a, sg_ = sde.alpha(tt), sde.sigma(tt)
        return from_score(true(x, tt), kind, x, a, sg_) * scale

    model = ScoreModel(net, sde, kind)
    x = torch.tensor([[0.3, 0.1, -0.2], [-1.0, 0.8, 0.5]], dtype=f64)
    t = torch.tensor([0.4, 1.7], dtype=f64)
    assert torch.allclose(model(x, t), true(x, t), rtol=1e-9, atol=1e-10)
    assert torch.allclose(seen["t"], t)
    out = model(x, 1.1)
    assert seen["t"].shape == (2,) and torch.allclose(out, true(x, torch.tensor(1.1, dtype=f64)), rtol=1e-9)
    # kwargs reach the net
    model(x, t, scale=2.0)
    assert seen["scale"] == 2.0


# ----------------------------------------------------------------------------- bits per dim


def test_bits_per_dim_offsets_and_dequantize():
    lp = torch.tensor([-10.0, 3.0], dtype=f64)
    D = 12
    assert torch.allclose(bits_per_dim(lp, (3, 2, 2)), -lp / (D * math.log(2)))
    ref = -(lp + D * math.log(2.0 / 16)) / (D * math.log(2))
    assert torch.allclose(bits_per_dim(lp, (3, 4), data_range=(-1, 1), n_bins=16), ref)
    assert torch.allclose(bits_per_dim(lp, 12, data_range=(0, 1)), -lp / (D * math.log(2)) + 8)
    k = torch.tensor([[0, 3, 7], [5, 1, 2]])
    xs = torch.stack([dequantize(k, generator=torch.Generator().manual_seed(i), n_bins=8, data_range=(-1.0, 3.0), dtype=f64)
                      for i in range(400)])
    assert xs.dtype == f64
    lo = -1.0 + k.to(f64) * 0.5
    assert bool((xs >= lo).all()) and bool((xs < lo + 0.5).all())
    # mean of 400 U[lo, lo+0.5): sd 0.5/sqrt(12*400) = 0.0072 -> 5 sd = 0.036
    assert torch.allclose(xs.mean(0), lo + 0.25, atol=0.036, rtol=0)
    # negative control: the same check rejects the mean of a bin shifted by 0.1 (14 sd)
    assert not torch.allclose(xs.mean(0), lo + 0.35, atol=0.036, rtol=0)
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(7), dtype=f64)
    x1 = dequantize(k, generator=torch.Generator().manual_seed(7), n_bins=8, data_range=(-1.0, 3.0))
    assert torch.allclose(x1, (-1.0 + (k + u) * 0.5).to(x1.dtype))

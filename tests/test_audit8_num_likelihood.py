"""Audit 8 (numerics): log-likelihood, its bound, the data-set driver, encode/decode, the
divergence estimators and guidance, against closed forms.

Gaussian data N(mu, C): the PF-ODE score Jacobian is J_t = -(alpha_t^2 C + sigma_t^2 I)^{-1} for every
x, so log p_eps, the flow, and each Hutchinson probe's integral e^T (int J) e are closed forms /
one-dimensional quadratures (scipy), computed here without the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import multivariate_normal

from sdesolve_gen.analytic import Gaussian, GaussianMixture, analytic_classifier, analytic_conditional_score
from sdesolve_gen.bpd import bits_per_dim
from sdesolve_gen.divergence import (
    DivergenceEngine,
    GaussianControlVariate,
    default_chunk,
    draw_probes,
    score_divergence,
)
from sdesolve_gen.guidance import classifier_free_guidance, classifier_guidance, label_guidance
from sdesolve_gen.likelihood import (
    dataset_log_likelihood,
    decode,
    encode,
    interpolate,
    log_likelihood,
    log_likelihood_bound,
)
from sdesolve_gen.sde import VESDE, VPSDE, SubVPSDE

f64 = torch.float64
MU, S0 = 0.6, 0.5
TOL = dict(rtol=1e-8, atol=1e-8)


def _iso(D):
    return Gaussian(torch.full((D,), MU, dtype=f64), S0**2 * torch.eye(D, dtype=f64))


def _r2(sde, t):
    return float(sde.alpha(t)) ** 2 * S0**2 + float(sde.sigma(t)) ** 2


def _exact(sde, x, eps, prior_std=None):
    """(log p_eps(x), z_T, log pi(z_T)) for isotropic Gaussian data, closed form."""
    D = x[0].numel()
    a_e, a_T = float(sde.alpha(eps)), float(sde.alpha(sde.T))
    r_e, r_T = math.sqrt(_r2(sde, eps)), math.sqrt(_r2(sde, sde.T))
    xf = x.reshape(x.shape[0], -1)
    lp = torch.tensor(multivariate_normal(np.full(D, a_e * MU), r_e**2 * np.eye(D)).logpdf(xf.numpy())).reshape(-1)
    z = a_T * MU + (r_T / r_e) * (xf - a_e * MU)
    s = sde.prior_std if prior_std is None else prior_std
    lpi = torch.tensor(multivariate_normal(np.zeros(D), s**2 * np.eye(D)).logpdf(z.numpy())).reshape(-1)
    lpT = torch.tensor(multivariate_normal(np.full(D, a_T * MU), r_T**2 * np.eye(D)).logpdf(z.numpy())).reshape(-1)
    return lp - lpT + lpi, z.reshape(x.shape), lpi


X4 = torch.tensor([[0.1, 0.9, -0.4], [1.2, 0.3, 0.6], [-0.5, 0.0, 1.5], [0.6, 0.6, 0.6]], dtype=f64)


@pytest.mark.parametrize("sde", [VPSDE(beta_min=0.2, beta_max=7.0, T=2.0), VESDE(sigma_min=0.03, sigma_max=8.0, T=1.5),
                                 SubVPSDE(beta_min=0.1, beta_max=9.0, T=1.3)], ids=["vp", "ve", "subvp"])
def test_log_likelihood_exact_divergence_closed_form(sde):
    g = _iso(3)
    eps = 0.02
    res = log_likelihood(sde, g.score_fn(sde), X4, eps=eps, **TOL)
    lp, z, lpi = _exact(sde, X4, eps)
    assert torch.allclose(res.log_prob, lp, atol=2e-6)
    assert torch.allclose(res.z, z, rtol=1e-6, atol=1e-6)
    assert torch.allclose(res.prior_log_prob, lpi, atol=1e-5)
    assert torch.allclose(res.delta_log_prob, lp - lpi, atol=1e-5)
    assert res.divergence == "exact" and torch.equal(res.stderr, torch.zeros(4, dtype=f64))
    assert res.per_probe.shape == (4, 1)
    assert res.extra["eps"] == eps and res.extra["method"] == "dopri8" and res.extra["rtol"] == 1e-8
    assert res.extra["atol"] == 1e-8 and res.extra["error_control"] == "per_sample" and res.extra["n_chunks"] == 1
    # the exact prior p_T (data.prior) removes the prior term's mismatch: log p_eps itself
    res2 = log_likelihood(sde, g.score_fn(sde), X4, eps=eps, prior=g.prior(sde), **TOL)
    ref2 = torch.tensor(multivariate_normal(np.full(3, float(sde.alpha(eps)) * MU), _r2(sde, eps) * np.eye(3)).logpdf(X4.numpy()))
    assert torch.allclose(res2.log_prob, ref2, atol=2e-6)


def test_log_likelihood_hutchinson_probes_integrals_and_control_variate():
    sde = VPSDE(beta_min=0.3, beta_max=6.0, T=1.5)
    C = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.8]], dtype=f64)
    mu = torch.tensor([0.3, -0.2, 0.1], dtype=f64)
    g = Gaussian(mu, C)
    eps, B, D, K = 0.05, 2, 3, 3
    probes = draw_probes("gaussian", K, torch.Size((B, D)), generator=torch.Generator().manual_seed(0), dtype=f64, device="cpu")
    res = log_likelihood(sde, g.score_fn(sde), X4[:B], eps=eps, divergence="hutchinson", probes=probes, prior=g.prior(sde), **TOL)
    Cn = C.numpy()

    def quad_form(e):
        def integrand(t):
            tt = torch.tensor(t, dtype=f64)
            a2, s2 = float(sde.alpha(tt)) ** 2, float(sde.sigma(tt)) ** 2
            J = -np.linalg.inv(a2 * Cn + s2 * np.eye(D))
            return D * float(sde.drift_coef(tt)) - 0.5 * float(sde.g2(tt)) * (e @ J @ e)
        return quad(integrand, eps, sde.T, epsabs=1e-11, epsrel=1e-11, limit=200)[0]

    a_e = float(sde.alpha(eps))
    r_e = a_e**2 * Cn + float(sde.sigma(eps)) ** 2 * np.eye(D)
    zT = res.z.numpy()
    a_T = float(sde.alpha(sde.T))
    lpT = multivariate_normal(a_T * mu.numpy(), a_T**2 * Cn + float(sde.sigma(sde.T)) ** 2 * np.eye(D)).logpdf(zT)
    for b in range(B):
        for k in range(K):
            ref = lpT[b] + quad_form(probes[k, b].numpy())
            assert float(res.per_probe[b, k]) == pytest.approx(ref, abs=2e-6)
    assert torch.allclose(res.log_prob, res.per_probe.mean(1))
    assert torch.allclose(res.stderr, res.per_probe.std(1, unbiased=True) / math.sqrt(K))
    assert res.divergence == "hutchinson"
    # with a control variate of the data covariance the estimator is exact for every probe
    cv = GaussianControlVariate(C)
    res_cv = log_likelihood(sde, g.score_fn(sde), X4[:B], eps=eps, divergence=cv, probes=probes, prior=g.prior(sde), **TOL)
    exact = multivariate_normal(a_e * mu.numpy(), r_e).logpdf(X4[:B].numpy())
    assert torch.allclose(res_cv.per_probe, torch.tensor(exact)[:, None].expand(B, K), atol=3e-6)
    # n_probes / probe / generator path: same as passing the drawn probes
    r3 = log_likelihood(sde, g.score_fn(sde), X4[:B], eps=eps, divergence="hutchinson", n_probes=K, probe="gaussian",
                        generator=torch.Generator().manual_seed(0), prior=g.prior(sde), **TOL)
    assert torch.allclose(r3.per_probe, res.per_probe, atol=1e-10)
    r1 = log_likelihood(sde, g.score_fn(sde), X4[:B], eps=eps, divergence="hutchinson", generator=torch.Generator().manual_seed(1),
                        prior=g.prior(sde), **TOL)
    rp = draw_probes("rademacher", 1, torch.Size((B, D)), generator=torch.Generator().manual_seed(1), dtype=f64, device="cpu")
    r1b = log_likelihood(sde, g.score_fn(sde), X4[:B], eps=eps, divergence="hutchinson", probes=rp, prior=g.prior(sde), **TOL)
    assert r1.per_probe.shape == (B, 1) and torch.allclose(r1.per_probe, r1b.per_probe, atol=1e-10)
    assert bool(torch.isnan(r1.stderr).all())


def test_log_likelihood_chunks_per_sample_kwargs_bpd_error_estimate():
    sde = VPSDE(beta_min=0.2, beta_max=5.0, T=1.0)
    g = _iso(3)
    shift = torch.tensor([0.0, 0.5, -1.0, 2.0], dtype=f64)
    seen = []

    def score(x, t, *, shift):
        seen.append(shift.shape[0] if isinstance(shift, torch.Tensor) else None)
        a = torch.exp(sde.log_alpha(t))
        return g.score_fn(sde)(x - a * shift[:, None], t)

    x = X4 + shift[:, None]
    ref = _exact(sde, X4, 0.01)[0]
    full = log_likelihood(sde, score, x, eps=0.01, model_kwargs={"shift": shift}, **TOL)
    # every sample's own closed form: sample i's score is that of data N(MU + shift_i, S0^2 I), so
    # x_t ~ N(alpha_t m_i, r_t^2 I) with m_i = MU + shift_i; the flow keeps (x - alpha m_i) / r, and the
    # standard prior N(0, prior_std^2 I) is evaluated at z_T (isotropic Gaussian log-densities by hand)
    a_e, a_T = float(sde.alpha(0.01)), float(sde.alpha(1.0))
    r_e, r_T = math.sqrt(_r2(sde, 0.01)), math.sqrt(_r2(sde, 1.0))
    m = MU + shift[:, None]

    def iso_logpdf(v, mean, sd):
        return -0.5 * v.shape[1] * math.log(2 * math.pi * sd * sd) - ((v - mean) ** 2).sum(1) / (2 * sd * sd)

    z = a_T * m + (r_T / r_e) * (x - a_e * m)
    own = iso_logpdf(x, a_e * m, r_e) - iso_logpdf(z, a_T * m, r_T) + iso_logpdf(z, 0.0, sde.prior_std)
    assert torch.allclose(full.log_prob, own, atol=2e-6)
    assert not torch.allclose(_exact(sde, x, 0.01)[0], own, atol=2e-6)  # control: the unshifted data's closed form
    chunked = log_likelihood(sde, score, x, eps=0.01, model_kwargs={"shift": shift}, chunk_size=3, **TOL)
    assert set(seen[-3:]) <= {1, 3} and chunked.extra["n_chunks"] == 2
    per = log_likelihood(sde, score, x, eps=0.01, model_kwargs={"shift": shift}, per_sample=True, **TOL)
    assert per.extra["n_chunks"] == 4
    assert torch.allclose(chunked.log_prob, full.log_prob, atol=1e-6)
    assert torch.allclose(per.log_prob, full.log_prob, atol=1e-6)
    plain = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, **TOL)
    assert torch.allclose(plain.log_prob, ref, atol=2e-6)
    r = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, data_range=(-2.0, 2.0), n_bins=32, rtol=1e-6, atol=1e-6,
                       error_estimate=True)
    assert torch.allclose(r.bits_per_dim, bits_per_dim(r.log_prob, (3,), data_range=(-2.0, 2.0), n_bins=32))
    assert torch.allclose(r.bpd((-2.0, 2.0), 32), r.bits_per_dim)
    assert r.error_estimate is not None and bool((r.error_estimate < 1e-4).all())
    tighter = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, rtol=1e-7, atol=1e-7)
    assert torch.allclose(r.extra["signed_error"], r.log_prob - tighter.log_prob, atol=1e-12)
    assert torch.allclose(r.error_estimate, (r.log_prob - tighter.log_prob).abs(), atol=1e-12)
    assert r.extra["n_chunks"] == 1
    one = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, rtol=1e-6, atol=1e-6)
    assert r.nfe == one.nfe + tighter.nfe


def test_log_likelihood_fixed_step_and_per_sample_methods():
    sde = VPSDE(beta_min=0.2, beta_max=5.0, T=1.0)
    g = _iso(3)
    ref = _exact(sde, X4, 0.01)[0]
    r = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, method="rk4", step_size=0.99 / 20)
    assert r.nfe == 80 and r.n_steps == 20
    assert torch.allclose(r.log_prob, ref, atol=1e-3)
    rd = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, method="euler")
    assert rd.nfe == 100 and rd.n_steps == 100 and rd.extra["rtol"] is None  # exactly 100 equal steps of (T - eps)/100
    # oracle: explicit Euler on the joint (x, log-density) ODE replayed by hand, with the VP schedule
    # and the Gaussian score in closed form: beta(t) = 0.2 + 4.8 t, log alpha = -(0.2 t + 2.4 t^2) / 2,
    # v = -beta/2 (x + s), s = -(x - alpha MU) / r^2, div v = D beta/2 (1/r^2 - 1); standard prior at the end
    xe, le = X4.clone(), torch.zeros(4, dtype=f64)
    grid = [0.01 + k * 0.99 / 100 for k in range(101)]
    for t0, t1 in zip(grid[:-1], grid[1:]):
        b, al = 0.2 + 4.8 * t0, math.exp(-(0.2 * t0 + 2.4 * t0 * t0) / 2)
        rr = al * al * S0**2 + 1 - al * al
        xe, le = xe + (t1 - t0) * (-0.5 * b) * (xe - (xe - al * MU) / rr), le + (t1 - t0) * 3 * 0.5 * b * (1 / rr - 1)
    euler = -1.5 * math.log(2 * math.pi) - 0.5 * (xe**2).sum(1) + le
    assert torch.allclose(rd.log_prob, euler, rtol=0, atol=1e-10)
    assert not torch.allclose(ref, euler, rtol=0, atol=1e-10)  # control: Euler's bias is visible here
    times = []

    def score(x, t):
        times.append(t.shape)
        return g.score_fn(sde)(x, t)

    ps = log_likelihood(sde, score, X4, eps=0.01, method="dopri5_ps", rtol=1e-7, atol=1e-7)
    assert torch.allclose(ps.log_prob, ref, atol=1e-5)
    assert any(s == (4,) for s in times)
    assert ps.extra["n_evals"].shape == (4,) and ps.extra["n_steps"].shape == (4,)
    assert ps.n_steps == int(ps.extra["n_steps"].max()) and ps.nfe >= int(ps.extra["n_evals"].max())
    loose = log_likelihood(sde, g.score_fn(sde), X4, eps=0.01, method="dopri5_ps", rtol=1e-3, atol=1e-3)
    assert int(loose.extra["n_steps"].sum()) < int(ps.extra["n_steps"].sum())


def test_log_likelihood_bound_tight_with_true_posterior_decoder():
    sde = SubVPSDE(beta_min=0.1, beta_max=6.0, T=1.0)
    g = _iso(3)
    eps = 0.05
    a, s2 = float(sde.alpha(eps)), float(sde.sigma(eps)) ** 2
    tau2 = 1.0 / (1.0 / S0**2 + a * a / s2)
    out = log_likelihood_bound(sde, g.score_fn(sde), X4, eps=eps, decoder_var=tau2, prior=g.prior(sde),
                               generator=torch.Generator().manual_seed(2), **TOL)
    ref = torch.tensor(multivariate_normal(np.full(3, MU), S0**2 * np.eye(3)).logpdf(X4.numpy()))
    assert torch.allclose(out.bound, ref, atol=1e-5)
    assert out.result.extra["eps"] == eps
    z = torch.randn(X4.shape, generator=torch.Generator().manual_seed(2), dtype=f64)
    assert torch.allclose(out.log_q, -0.5 * z.pow(2).sum(1) - 1.5 * math.log(2 * math.pi * s2))
    dflt = log_likelihood_bound(sde, g.score_fn(sde), X4, eps=eps, prior=g.prior(sde),
                                generator=torch.Generator().manual_seed(2), **TOL)
    x_eps = a * X4 + math.sqrt(s2) * z
    x0_hat = (x_eps + s2 * g.score(x_eps, torch.tensor(eps, dtype=f64), sde)) / a
    t2 = s2 / a**2
    ld = (-0.5 * (X4 - x0_hat) ** 2 / t2 - 0.5 * math.log(2 * math.pi * t2)).sum(1)
    assert torch.allclose(dflt.log_decoder, ld, rtol=1e-10)
    assert torch.allclose(dflt.bound, dflt.result.log_prob + ld - dflt.log_q)


def test_dataset_log_likelihood_batches_seeds_and_stats():
    sde = VPSDE(beta_min=0.2, beta_max=5.0, T=1.0)
    # a non-diagonal covariance: Rademacher probes then have non-zero variance (isotropic data would make
    # every probe give the exact trace, hiding which probes were drawn)
    g = Gaussian(torch.zeros(3, dtype=f64), torch.tensor([[0.5, 0.3, 0.0], [0.3, 0.4, -0.2], [0.0, -0.2, 0.6]], dtype=f64))
    data = torch.cat([X4, X4[:3] * 0.5])  # N = 7
    kw = dict(divergence="hutchinson", n_probes=2, rtol=1e-6, atol=1e-6, eps=0.02)
    out = dataset_log_likelihood(sde, g.score_fn(sde), data, batch_size=3, seed=5, data_range=(-3.0, 3.0), n_bins=64, **kw)
    parts = [log_likelihood(sde, g.score_fn(sde), data[i : i + 3], generator=torch.Generator().manual_seed(5 + k), **kw)
             for k, i in enumerate(range(0, 7, 3))]
    lp = torch.cat([p.log_prob for p in parts])
    se = torch.cat([p.stderr for p in parts])
    assert torch.allclose(out.log_prob, lp, atol=1e-12)
    bpd = bits_per_dim(lp, (3,), data_range=(-3.0, 3.0), n_bins=64)
    assert torch.allclose(out.bits_per_dim, bpd)
    assert out.mean_bpd == pytest.approx(float(bpd.mean()), abs=1e-12)
    assert out.data_stderr == pytest.approx(float(bpd.std()) / math.sqrt(7), rel=1e-9)
    assert out.probe_stderr == pytest.approx(float(se.pow(2).sum().sqrt()) / 7 / (3 * math.log(2)), rel=1e-9)
    assert out.nfe == sum(p.nfe for p in parts) and out.world_size == 1 and out.solver_error is None
    assert out.probe_stderr > 0
    same = log_likelihood(sde, g.score_fn(sde), data[3:6], generator=torch.Generator().manual_seed(5), **kw)
    assert not torch.allclose(same.log_prob, out.log_prob[3:6], atol=1e-9)  # batch 1 used seed 6, not 5
    cont = dataset_log_likelihood(sde, g.score_fn(sde), data, batch_size=3, seed=5, **kw)
    assert torch.allclose(cont.bits_per_dim, bits_per_dim(lp, (3,)))
    est = dataset_log_likelihood(sde, g.score_fn(sde), data[:4], batch_size=4, seed=5, error_estimate=True, **kw)
    single = log_likelihood(sde, g.score_fn(sde), data[:4], generator=torch.Generator().manual_seed(5), error_estimate=True, **kw)
    assert est.solver_error == pytest.approx(abs(float(single.extra["signed_error"].mean())) / (3 * math.log(2)), rel=1e-9)
    assert torch.allclose(est.error_estimate, single.error_estimate)


def test_encode_decode_interpolate_closed_form():
    sde = VPSDE(beta_min=0.3, beta_max=6.0, T=2.0)
    g = _iso(3)
    eps = 0.05
    z = encode(sde, g.score_fn(sde), X4, eps=eps, rtol=1e-9, atol=1e-9)
    ref_z = _exact(sde, X4, eps)[1]
    assert torch.allclose(z, ref_z, rtol=1e-6, atol=1e-6)
    x = decode(sde, g.score_fn(sde), ref_z, eps=eps, rtol=1e-9, atol=1e-9)
    assert torch.allclose(x, X4, rtol=1e-6, atol=1e-6)
    zr = encode(sde, g.score_fn(sde), X4, eps=eps, method="rk4", step_size=0.01)
    assert torch.allclose(zr, ref_z, atol=1e-6)
    coarse = encode(sde, g.score_fn(sde), X4, eps=eps, method="euler", step_size=0.5)
    assert not torch.allclose(coarse, ref_z, atol=1e-3)
    path = interpolate(sde, g.score_fn(sde), X4[:1], X4[1:2], 4, eps=eps, rtol=1e-9, atol=1e-9)
    assert path.shape == (4, 3)
    assert torch.allclose(path[0], X4[0], atol=1e-5) and torch.allclose(path[-1], X4[1], atol=1e-5)


# ----------------------------------------------------------------------------- divergence


def test_divergence_exact_and_probe_values():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=gen, dtype=f64)
    x = torch.randn(3, 5, generator=gen, dtype=f64)

    def score(xf):
        return torch.sin(xf) + xf @ M.T

    jac_tr = (torch.cos(x) + torch.diag(M)).sum(1)
    s, div = score_divergence(score, x)
    assert torch.allclose(s, score(x)) and torch.allclose(div[:, 0], jac_tr, rtol=1e-12)
    for chunk in (1, 2, 5):
        eng = DivergenceEngine(chunk)
        for _ in range(2):  # first call autograd, then torch.func
            assert torch.allclose(eng(score, x)[1][:, 0], jac_tr, rtol=1e-12)
    e = draw_probes("rademacher", 4, torch.Size((3, 5)), generator=torch.Generator().manual_seed(3), dtype=f64, device="cpu")
    assert set(e.unique().tolist()) == {-1.0, 1.0}
    J = torch.diag_embed(torch.cos(x)) + M  # (B, D, D): J[b] = d s_b / d x_b
    ref = torch.einsum("kbi,bij,kbj->bk", e, J, e)
    assert torch.allclose(score_divergence(score, x, e)[1], ref, rtol=1e-12)
    eng = DivergenceEngine()
    eng(score, x, e)
    assert torch.allclose(eng(score, x, e)[1], ref, rtol=1e-12)
    assert torch.allclose(eng(score, x, e[:1])[1], ref[:, :1], rtol=1e-12)
    gz = draw_probes("gaussian", 2000, torch.Size((1, 5)), generator=torch.Generator().manual_seed(1), dtype=f64, device="cpu")
    # 10000 N(0,1) draws: the mean has sd 1/sqrt(1e4) = 0.01 (5 sd = 0.05), the sample variance sd
    # sqrt(2/1e4) = 0.0141 (5 sd = 0.0707, asserted < 0.07)
    def gauss_ok(v):
        return abs(float(v.mean())) < 0.05 and abs(float(v.var()) - 1) < 0.07

    assert gauss_ok(gz)
    # negative controls: the same check rejects a 10 % wider and a 0.1-shifted draw (off by 0.21 and 10 sd)
    assert not gauss_ok(1.1 * gz) and not gauss_ok(gz + 0.1)
    rz = draw_probes("rademacher", 2000, torch.Size((1, 5)), generator=torch.Generator().manual_seed(1), dtype=f64, device="cpu")
    # 10000 +-1 draws: the mean has sd 0.01 (5 sd = 0.05); control: a +-1 draw with P(+1) = 0.55 (mean 0.1)
    assert abs(float(rz.mean())) < 0.05
    biased = torch.where(torch.rand(rz.shape, generator=torch.Generator().manual_seed(2), dtype=f64) < 0.55, 1.0, -1.0)
    assert not abs(float(biased.mean())) < 0.05
    assert default_chunk(4, 10) == 10 and default_chunk(256, 64) == 4 and default_chunk(10_000, 100) == 1


def test_gaussian_control_variate_correction_hand():
    C = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=f64)
    cv = GaussianControlVariate(C)
    sde = VESDE(sigma_min=0.1, sigma_max=3.0, T=2.0)
    e = torch.tensor([[[1.0, -1.0], [1.0, 1.0]], [[0.5, 2.0], [-1.0, 0.3]]], dtype=f64)  # (K=2, B=2, D=2)
    for t in (torch.tensor(0.7, dtype=f64), torch.tensor([0.3, 1.5], dtype=f64)):
        a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
        out = cv.correction(sde, t, e)
        for b in range(2):
            tb = (a2 if a2.dim() == 0 else a2[b], s2 if s2.dim() == 0 else s2[b])
            Ct = -torch.linalg.inv(tb[0] * C + tb[1] * torch.eye(2, dtype=f64))
            for k in range(2):
                ref = -(e[k, b] @ Ct @ e[k, b]) + torch.trace(Ct)
                assert float(out[b, k]) == pytest.approx(float(ref), rel=1e-10)
    xs = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=f64)
    fd = GaussianControlVariate.from_data(xs)
    assert torch.allclose(fd.U @ torch.diag(fd.lam) @ fd.U.T, torch.cov(xs.T), atol=1e-12) and fd.dim == 2


# ----------------------------------------------------------------------------- guidance


def test_guidance_formulas():
    sde = VPSDE(beta_min=0.2, beta_max=6.0, T=1.5)
    gm = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=f64),
                         torch.stack([0.3 * torch.eye(2, dtype=f64), 0.5 * torch.eye(2, dtype=f64)]),
                         torch.tensor([0.4, 0.6], dtype=f64))
    x = torch.tensor([[0.2, 0.1], [-0.5, 0.7], [1.5, -0.2]], dtype=f64)
    t = torch.tensor(0.6, dtype=f64)
    s = gm.score_fn(sde)
    clf = analytic_classifier(gm, sde)
    cond = analytic_conditional_score(gm, sde)
    y = torch.tensor([0, 1, 1])
    # Bayes: s + grad log p(y|x) = conditional score
    assert torch.allclose(classifier_guidance(s, clf, y)(x, t), cond(x, t, y), rtol=1e-8, atol=1e-10)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(xg, t, y).sum(), xg)
    assert torch.allclose(classifier_guidance(s, clf, y, scale=2.5)(x, t), s(x, t) + 2.5 * grad, rtol=1e-10)
    assert torch.allclose(classifier_guidance(s, clf, 1, scale=0.0)(x, t), s(x, t))
    w = 1.7
    cfg = classifier_free_guidance(cond, s, y, w)
    assert torch.allclose(cfg(x, t), (1 + w) * cond(x, t, y) - w * s(x, t), rtol=1e-12)
    assert torch.allclose(classifier_free_guidance(cond, s, 1, 0.0)(x, t), cond(x, t, 1))
    calls = []

    def model(xx, tt, *, cls):
        calls.append((xx.shape[0], cls.clone(), tt))
        out = torch.zeros_like(xx)
        for i in range(xx.shape[0]):
            out[i] = xx[i] * (1.0 + float(cls[i]))
        return out

    lg = label_guidance(model, y, 0.5, null_label=7, num_classes=3, label_kwarg="cls")
    tt = torch.tensor([0.2, 0.4, 0.9], dtype=f64)
    out = lg(x, tt)
    n, cls, tpass = calls[-1]
    assert n == 6 and cls.tolist() == [0, 1, 1, 7, 7, 7] and torch.equal(tpass, tt.repeat(2))
    ref = 1.5 * x * (1 + y.to(f64))[:, None] - 0.5 * x * 8.0
    assert torch.allclose(out, ref)
    lg0 = label_guidance(model, 2, 0.0, null_label=3, num_classes=3, label_kwarg="cls")
    assert torch.allclose(lg0(x, t), 3.0 * x) and calls[-1][0] == 3

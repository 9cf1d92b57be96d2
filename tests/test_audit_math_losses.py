"""Audit tests for ``parameterisation.py``, ``bpd.py``, ``losses.py`` and ``divergence.py``.

Oracles are closed forms written here (the conversions of Salimans & Ho 2022 for ``v``, Tweedie,
the dequantisation change of variables, the DSM integrand, Hutchinson contractions of an explicit
Jacobian) evaluated at non-default values: alpha^2 + sigma^2 != 1, per-sample coefficients,
T != 1, data ranges other than (0, 1), a bin count other than 256, D > 1, several projections.
Random draws are reproduced from identically seeded generators, so every comparison is exact up
to float64 round-off (tolerances stated per test); nothing here is statistical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdesolve_gen import VESDE, VPSDE, ScoreModel
from sdesolve_gen.bpd import bits_per_dim, dequantize
from sdesolve_gen.divergence import DivergenceEngine, GaussianControlVariate, draw_probes, score_divergence
from sdesolve_gen.losses import (
    dsm_loss,
    dsm_optimum_gaussian,
    implicit_score_matching_loss,
    loss_weight,
    sample_time,
    sliced_score_matching_loss,
)
from sdesolve_gen.parameterisation import convert, from_score, to_score

F64 = torch.float64


def _gen(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------- parameterisation


def test_conversions_match_closed_forms_off_the_vp_circle(device):
    """Guards each row of to_score/from_score (sign, sigma vs sigma^2, the v denominator
    alpha^2 + sigma^2) with per-sample coefficients and alpha^2 + sigma^2 != 1.

    Oracle: x = alpha x0 + sigma eps for known (x0, eps): score = -eps/sigma, x0 and eps given
    back, v = alpha eps - sigma x0 (Salimans & Ho 2022); tolerance 1e-12 (float64 round-off).
    """
    g = _gen(device, 0)
    x0 = torch.randn(3, 4, generator=g, device=device, dtype=F64)
    eps = torch.randn(3, 4, generator=g, device=device, dtype=F64)
    alpha = torch.tensor([0.9, 1.7, 0.4], dtype=F64, device=device)
    sigma = torch.tensor([0.3, 2.5, 1.1], dtype=F64, device=device)
    a, s = alpha[:, None], sigma[:, None]
    x = a * x0 + s * eps
    score = -eps / s
    v = a * eps - s * x0
    preds = {"score": score, "eps": eps, "x0": x0, "v": v}
    for kind, pred in preds.items():
        torch.testing.assert_close(to_score(pred, kind, x, alpha, sigma), score, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(from_score(score, kind, x, alpha, sigma), pred, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(convert(v, "v", "x0", x, alpha, sigma), x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(convert(x0, "x0", "eps", x, 1.7, 2.5)[1], eps[1], rtol=1e-12, atol=1e-12)


def test_score_model_uses_the_sdes_alpha_sigma_and_passes_kwargs(device):
    """Guards ScoreModel: the time passed to the net (physical t, per sample), alpha/sigma taken
    from the SDE at that t (VP with T != 1), and kwargs (labels) passed on.

    Oracle: an 'x0' net returning 0.5 x + y[:, None] * t[:, None]; score = (alpha * pred - x)/sigma^2
    with the closed-form VP alpha, sigma; tolerance 1e-12.
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    seen = {}

    def net(x, t, y):
        seen["t"] = t
        return 0.5 * x + y[:, None].to(x) * t[:, None]

    model = ScoreModel(net, sde, "x0")
    x = torch.randn(3, 2, generator=_gen(device, 1), device=device, dtype=F64)
    t = torch.tensor([0.2, 0.9, 1.5], dtype=F64, device=device)
    y = torch.tensor([1, 2, 3], device=device)
    out = model(x, t, y=y)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    a, s2 = torch.exp(-B / 2)[:, None], (-torch.expm1(-B))[:, None]
    pred = 0.5 * x + y[:, None].to(x) * t[:, None]
    torch.testing.assert_close(seen["t"], t, rtol=0, atol=0)
    torch.testing.assert_close(out, (a * pred - x) / s2, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- bpd


def test_bits_per_dim_offset_uses_range_bins_and_dimension():
    """Guards the dequantisation offset D log((hi - lo)/n) and the D log 2 normaliser with
    data_range (-1, 3), n_bins = 16, a (2, 3) sample.

    Oracle: bpd = -(log p + 6 log(4/16)) / (6 log 2) by hand; data_range=None drops the offset.
    """
    lp = torch.tensor([-3.0, 1.5], dtype=F64)
    got = bits_per_dim(lp, (2, 3), data_range=(-1.0, 3.0), n_bins=16)
    ref = -(lp + 6 * math.log(4 / 16)) / (6 * math.log(2))
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(bits_per_dim(lp, 6), -lp / (6 * math.log(2)), rtol=1e-14, atol=0)
    # uniform density on [0,1]^D costs exactly log2(256) = 8 bits per dim
    assert float(bits_per_dim(torch.zeros(1, dtype=F64), 5, data_range=(0, 1))) == pytest.approx(8.0, abs=1e-12)


def test_dequantize_lands_in_bin_and_uses_the_generator(device):
    """Guards dequantize: x = lo + (k + u)(hi - lo)/n with u from the generator.

    Oracle: u = torch.rand from an identically seeded generator (float64), data_range (-1, 3),
    n_bins = 16; tolerance 1e-14.
    """
    k = torch.tensor([[0, 5, 15], [3, 9, 1]], device=device)
    x = dequantize(k, generator=_gen(device, 4), n_bins=16, data_range=(-1.0, 3.0), dtype=F64)
    u = torch.rand(k.shape, generator=_gen(device, 4), device=device, dtype=F64)
    torch.testing.assert_close(x, -1.0 + (k.to(F64) + u) * 0.25, rtol=0, atol=1e-14)
    assert bool((torch.floor((x + 1.0) / 0.25) == k).all())


# ------------------------------------------------------------------------------------ losses


def test_loss_weights_closed_forms_at_non_unit_T():
    """Guards each weighting of loss_weight: sigma2, g2, none, edm (with sigma_data != 0.5).

    Oracle: VP closed forms with T = 1.6; EDM lambda on the score error
    alpha^2 sbar^2 (sbar^2 + sd^2)/sd^2 with sbar = sigma/alpha (Karras et al. 2022).
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    t = torch.tensor([0.1, 0.8, 1.5], dtype=F64)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    a2, s2 = torch.exp(-B), -torch.expm1(-B)
    torch.testing.assert_close(loss_weight(sde, t, "sigma2"), s2, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss_weight(sde, t, "g2"), 0.3 + 4.7 * t, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss_weight(sde, t, "none"), torch.ones_like(t), rtol=0, atol=0)
    sd = 0.3
    sbar2 = s2 / a2
    torch.testing.assert_close(loss_weight(sde, t, "edm", sigma_data=sd), a2 * sbar2 * (sbar2 + sd**2) / sd**2,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(loss_weight(sde, t, lambda u: u**2), t**2, rtol=0, atol=0)


def test_sample_time_uniform_and_importance_are_the_stated_inverse_cdfs():
    """Guards sample_time: uniform t = eps + u (T - eps) and the importance draw
    log SNR(t) = log SNR(eps) - u (log SNR(eps) - log SNR(T)), with T != 1 and eps != sde.eps.

    Oracle: u = torch.rand(n) from an identically seeded generator; closed-form VE log-SNR
    -2 log sigma(t); tolerance 1e-10.
    """
    sde = VESDE(0.3, 7.0, T=2.5, eps=1e-3)
    u = torch.rand(6, generator=_gen("cpu", 2), dtype=F64)
    t = sample_time(sde, 6, eps=0.2, generator=_gen("cpu", 2))
    torch.testing.assert_close(t, 0.2 + u * 2.3, rtol=0, atol=1e-14)
    ti = sample_time(sde, 6, importance=True, eps=0.2, generator=_gen("cpu", 2))

    def ls(tt):
        return -2 * (math.log(0.3) + tt * math.log(7 / 0.3) / 2.5)

    np.testing.assert_allclose(ls(ti.numpy()), ls(0.2) - u.numpy() * (ls(0.2) - ls(2.5)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weighting", ["sigma2", "g2", "edm", "none"])
def test_dsm_loss_per_sample_equals_hand_computation(device, weighting):
    """Guards dsm_loss: noise and x_t construction, the weight lambda(t)/sigma^2 on
    ||sigma s + eps||^2, per-sample reduction (reduce=False, D = 6), model_kwargs wiring.

    Oracle: the integrand lambda(t) ||s(x_t) + eps/sigma||^2 with eps = torch.randn of an
    identically seeded generator and closed-form VP alpha, sigma at fixed per-sample t, T = 1.6;
    lambda from the closed forms of test_loss_weights_closed_forms_at_non_unit_T; tolerance 1e-11.
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    x0 = torch.randn(4, 2, 3, generator=_gen(device, 7), device=device, dtype=F64)
    t = torch.tensor([0.1, 0.5, 1.0, 1.55], dtype=F64, device=device)

    def score(x, tt, shift):
        return -0.7 * x + shift * tt.view(-1, 1, 1)

    per = dsm_loss(score, sde, x0, t=t, weighting=weighting, generator=_gen(device, 11), reduce=False,
                   sigma_data=0.3, model_kwargs={"shift": 0.25})
    noise = torch.randn(x0.shape, generator=_gen(device, 11), device=device, dtype=F64)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    a, s2 = torch.exp(-B / 2).view(-1, 1, 1), (-torch.expm1(-B)).view(-1, 1, 1)
    xt = a * x0 + s2.sqrt() * noise
    err = (score(xt, t, 0.25) + noise / s2.sqrt()).flatten(1).pow(2).sum(1)
    sbar2 = s2.flatten() / a.flatten() ** 2
    lam = {"sigma2": s2.flatten(), "g2": 0.3 + 4.7 * t, "none": torch.ones_like(t),
           "edm": a.flatten() ** 2 * sbar2 * (sbar2 + 0.09) / 0.09}[weighting]
    torch.testing.assert_close(per, lam * err, rtol=1e-11, atol=1e-12)
    mean = dsm_loss(score, sde, x0, t=t, weighting=weighting, generator=_gen(device, 11), sigma_data=0.3,
                    model_kwargs={"shift": 0.25})
    torch.testing.assert_close(mean, (lam * err).mean(), rtol=1e-11, atol=1e-12)


def test_dsm_loss_importance_sampling_integrand(device):
    """Guards the importance-sampled DSM integrand (Z/(T - eps)) sigma^2 ||s + eps/sigma||^2 with
    T != 1 and eps != sde.eps, and that t is drawn before the noise from the same generator.

    Oracle: u then noise from an identically seeded generator, t from the inverse CDF in log-SNR
    (closed form for VE), Z = log SNR(eps) - log SNR(T); tolerance 1e-10.
    """
    sde = VESDE(0.3, 7.0, T=2.5, eps=1e-3)
    x0 = torch.randn(5, 3, generator=_gen(device, 3), device=device, dtype=F64)

    def score(x, tt):
        return -x / (1.0 + tt[:, None])

    per = dsm_loss(score, sde, x0, weighting="g2", importance_sampling=True, eps=0.2, generator=_gen(device, 13),
                   reduce=False)
    g = _gen(device, 13)
    u = torch.rand(5, generator=g, dtype=F64, device=device)
    noise = torch.randn(x0.shape, generator=g, device=device, dtype=F64)
    L = math.log(7 / 0.3)
    ls_e, ls_T = -2 * (math.log(0.3) + 0.2 * L / 2.5), -2 * (math.log(0.3) + L)
    lsig = -0.5 * (ls_e - u * (ls_e - ls_T))  # log sigma(t)
    t = 2.5 * (lsig - math.log(0.3)) / L
    sig = torch.exp(lsig)[:, None]
    xt = x0 + sig * noise
    sq = (sig * score(xt, t) + noise).pow(2).sum(1)
    torch.testing.assert_close(per, (ls_e - ls_T) / (2.5 - 0.2) * sq, rtol=1e-10, atol=1e-12)


def test_dsm_optimum_gaussian_against_independent_quadrature():
    """Guards dsm_optimum_gaussian: the per-time optimum D/sigma^2 - sum_j 1/(alpha^2 l_j + sigma^2),
    the weighting, the 1/(T - eps) normalisation, with T = 1.6, eps = 0.05 and an anisotropic cov.

    Oracle: a composite Simpson rule (4001 points) of the closed-form integrand; its error is
    < 1e-9 relative for this smooth integrand: tolerance 1e-8.
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=F64)
    lam = np.linalg.eigvalsh(cov.numpy())
    t = np.linspace(0.05, 1.6, 4001)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    a2, s2 = np.exp(-B), -np.expm1(-B)
    inner = 2 / s2 - (1 / (a2[:, None] * lam + s2[:, None])).sum(1)
    h = t[1] - t[0]
    for weighting, w in (("g2", 0.3 + 4.7 * t), ("sigma2", s2)):
        f = w * inner
        simpson = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
        assert dsm_optimum_gaussian(sde, cov, weighting=weighting, eps=0.05) == pytest.approx(simpson / 1.55, rel=1e-8)


def _linear_score(A):
    return lambda x: x @ A.T


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduced", [True, False])
def test_sliced_score_matching_equals_hand_contraction(device, projection, variance_reduced):
    """Guards sliced score matching: v^T J v + (1/2)||s||^2 (VR) or (1/2)(v^T s)^2, averaged over
    3 projections, Rademacher = sign of the Gaussian draw, per-sample output.

    Oracle: s(x) = A x with a non-symmetric A (J = A), v from an identically seeded generator;
    tolerance 1e-12.
    """
    A = torch.tensor([[1.0, 2.0, 0.0], [-0.5, 0.3, 1.0], [0.2, 0.0, -1.5]], dtype=F64, device=device)
    x = torch.randn(4, 3, generator=_gen(device, 5), device=device, dtype=F64)
    per = sliced_score_matching_loss(_linear_score(A), x, n_projections=3, projection=projection,
                                     variance_reduced=variance_reduced, generator=_gen(device, 6), reduce=False)
    g = _gen(device, 6)
    s = x @ A.T
    total = torch.zeros(4, dtype=F64, device=device)
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, device=device, dtype=F64)
        if projection == "rademacher":
            v = torch.sign(v)
        vs = (v * s).sum(1)
        term2 = 0.5 * (s * s).sum(1) if variance_reduced else 0.5 * vs**2
        total = total + ((v @ A) * v).sum(1) + term2
    torch.testing.assert_close(per, total / 3, rtol=1e-12, atol=1e-12)


def test_implicit_score_matching_exact_trace(device):
    """Guards implicit score matching: (1/2)||s||^2 + tr J with the full trace over D = 3.

    Oracle: s(x) = A x + sin(x) (elementwise), tr J = tr A + sum cos(x); tolerance 1e-12.
    """
    A = torch.tensor([[1.0, 2.0, 0.0], [-0.5, 0.3, 1.0], [0.2, 0.0, -1.5]], dtype=F64, device=device)
    x = torch.randn(4, 3, generator=_gen(device, 8), device=device, dtype=F64)
    per = implicit_score_matching_loss(lambda z: z @ A.T + torch.sin(z), x, reduce=False)
    s = x @ A.T + torch.sin(x)
    torch.testing.assert_close(per, 0.5 * (s * s).sum(1) + torch.trace(A) + torch.cos(x).sum(1), rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------------- divergence


def _nonlinear(A):
    """s(x) = A x + sin(x) * c: Jacobian A + diag(c cos x), a per-sample Jacobian."""
    c = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.2], dtype=A.dtype, device=A.device)
    return (lambda x: x @ A.T + torch.sin(x) * c), (lambda x: A[None] + torch.diag_embed(c * torch.cos(x)))


@pytest.mark.parametrize("chunk", [None, 2, 5])
def test_exact_divergence_with_partial_chunks(device, chunk):
    """Guards the exact trace: every basis vector visited once, with chunks of 2 over D = 5 (a
    partial last chunk), both the autograd (first) and the torch.func (later) paths of the engine.

    Oracle: tr(A + diag(c cos x)) per sample; tolerance 1e-12.
    """
    A = torch.randn(5, 5, generator=_gen(device, 1), device=device, dtype=F64)
    score, jac = _nonlinear(A)
    x = torch.randn(3, 5, generator=_gen(device, 2), device=device, dtype=F64)
    ref = torch.diagonal(jac(x), dim1=-2, dim2=-1).sum(-1)[:, None]
    s, div = score_divergence(score, x, chunk=chunk)
    torch.testing.assert_close(s, score(x), rtol=0, atol=1e-15)
    torch.testing.assert_close(div, ref, rtol=1e-12, atol=1e-12)
    eng = DivergenceEngine(chunk)
    for _ in range(2):
        _, d2 = eng(score, x)
        torch.testing.assert_close(d2, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [1, 3])
def test_hutchinson_per_probe_contraction(device, K):
    """Guards the Hutchinson contraction eps_k^T J eps_k per sample and probe (not J^T, not summed
    over the batch), layout (B, K), for K = 1 (single-vector path) and K = 3, on both engine paths.

    Oracle: the explicit per-sample Jacobian A + diag(c cos x); tolerance 1e-12.
    """
    A = torch.randn(5, 5, generator=_gen(device, 3), device=device, dtype=F64)
    score, jac = _nonlinear(A)
    x = torch.randn(4, 5, generator=_gen(device, 4), device=device, dtype=F64)
    probes = torch.randn(K, 4, 5, generator=_gen(device, 5), device=device, dtype=F64)
    ref = torch.einsum("kbi,bij,kbj->bk", probes, jac(x), probes)
    _, div = score_divergence(score, x, probes)
    torch.testing.assert_close(div, ref, rtol=1e-12, atol=1e-12)
    eng = DivergenceEngine()
    for _ in range(2):
        torch.testing.assert_close(eng(score, x, probes)[1], ref, rtol=1e-12, atol=1e-12)


def test_draw_probes_values_and_generator(device):
    """Guards draw_probes: Rademacher = 2 * randint(0, 2) - 1 (values +-1), Gaussian = randn of the
    generator, shape (K, B, D). Oracle: identically seeded generators (exact)."""
    r = draw_probes("rademacher", 3, torch.Size([2, 4]), generator=_gen(device, 1), dtype=F64, device=device)
    ref = torch.randint(0, 2, (3, 2, 4), generator=_gen(device, 1), device=device).to(F64) * 2 - 1
    torch.testing.assert_close(r, ref, rtol=0, atol=0)
    gpr = draw_probes("gaussian", 3, torch.Size([2, 4]), generator=_gen(device, 1), dtype=F64, device=device)
    torch.testing.assert_close(gpr, torch.randn(3, 2, 4, generator=_gen(device, 1), device=device, dtype=F64), rtol=0, atol=0)


def test_gaussian_control_variate_correction_is_minus_quadratic_form_plus_trace(device):
    """Guards GaussianControlVariate.correction = -eps^T C_t eps + tr C_t with
    C_t = -(alpha^2 Sigma + sigma^2 I)^{-1}, for a scalar time and per-sample times (T != 1).

    Oracle: C_t by a dense matrix inverse (not the eigendecomposition the class uses) with the
    closed-form VP alpha, sigma; tolerance 1e-11.
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    M = torch.randn(3, 3, generator=_gen(device, 9), dtype=F64)
    cov = M @ M.T + 0.1 * torch.eye(3, dtype=F64)
    cv = GaussianControlVariate(cov)
    probes = torch.randn(4, 2, 3, generator=_gen(device, 10), device=device, dtype=F64)
    for t in (torch.tensor(0.7, dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)):
        got = cv.correction(sde, t, probes)
        tb = t.expand(2)
        ref = torch.empty(2, 4, dtype=F64)
        for b in range(2):
            B = 0.3 * tb[b] + 0.5 * 4.7 * tb[b] ** 2
            C = -torch.linalg.inv(torch.exp(-B) * cov + (-torch.expm1(-B)) * torch.eye(3, dtype=F64))
            for k in range(4):
                e = probes[k, b].cpu()
                ref[b, k] = -(e @ C @ e) + torch.trace(C)
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-11, atol=1e-11)

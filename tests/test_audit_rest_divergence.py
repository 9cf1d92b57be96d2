"""Audit value tests for sdesolve_gen.divergence and sdesolve_gen.bpd.

Oracles: for a per-sample linear-plus-tanh score s_b(x) = A_b x + tanh(x) (A_b non-symmetric,
different per sample), tr J_b = tr A_b + sum(1 - tanh(x)^2) and e^T J_b e are closed forms; the
Gaussian control variate's correction equals -e^T C e + tr C with C = -(a^2 Sigma + s^2 I)^{-1}
formed by a direct matrix inverse (not the eigendecomposition the class uses); bits/dim of the
uniform density on [lo, hi]^D is exactly log2(n_bins). Non-default values: D = 5, B = 3, a chunk
that does not divide D, K = 4 probes, per-sample times, n_bins = 16, data range (-1, 3).
"""

from __future__ import annotations

import math

import pytest
import torch

from sdesolve_gen.bpd import bits_per_dim, dequantize
from sdesolve_gen.divergence import (
    CHUNK_ELEMENTS,
    MIN_CHUNK_ROWS,
    DivergenceEngine,
    GaussianControlVariate,
    default_chunk,
    draw_probes,
    score_divergence,
)
from sdesolve_gen.sde import VPSDE

F64 = torch.float64
Bn, D = 3, 5


def _field():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(Bn, D, D, generator=g, dtype=F64)

    def score(x):
        return torch.einsum("bij,bj->bi", A, x) + torch.tanh(x)

    x = torch.randn(Bn, D, generator=g, dtype=F64)
    J = A + torch.diag_embed(1 - torch.tanh(x) ** 2)
    return score, x, J


@pytest.mark.parametrize("chunk", [None, 1, 2, 5])
def test_exact_trace_per_sample_and_engine_paths(chunk):
    """Bug class: the basis chunk loop skipping the tail (chunk not dividing D), the diagonal index
    off by one (g[idx, :, i0 + idx]), a sum over the batch instead of per sample, the torch.func path
    (second engine call) differing from the autograd path. Oracle: tr J_b closed form, 1e-12."""
    score, x, J = _field()
    want = torch.diagonal(J, dim1=1, dim2=2).sum(1)[:, None]
    s, div = score_divergence(score, x, chunk=chunk)
    torch.testing.assert_close(div, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, score(x), rtol=0, atol=0)
    eng = DivergenceEngine(chunk)
    for _ in range(2):  # first call autograd, second torch.func
        s2, d2 = eng(score, x)
        torch.testing.assert_close(d2, want, rtol=1e-12, atol=1e-12)
    assert eng.use_func is True


def test_hutchinson_per_probe_quadratic_forms_both_paths():
    """Bug class: the probe contraction over the wrong dim, (K, B) not transposed to (B, K), the
    single-probe shortcut wrong, a probe other than the one passed used. Oracle: e_k^T J_b e_k per sample and probe, closed form."""
    score, x, J = _field()
    for K in (4, 1):
        e = draw_probes("gaussian", K, x.shape, generator=torch.Generator().manual_seed(1), dtype=F64, device=x.device)
        want = torch.einsum("kbi,bij,kbj->bk", e, J, e)
        _, d = score_divergence(score, x, e)
        torch.testing.assert_close(d, want, rtol=1e-12, atol=1e-12)
        eng = DivergenceEngine()
        eng(score, x, e)
        _, d2 = eng(score, x, e)
        torch.testing.assert_close(d2, want, rtol=1e-12, atol=1e-12)


def test_probe_laws_and_default_chunk():
    """Bug class: Rademacher drawn as {0, 1} or {0, 2}, Gaussian probes not unit variance, the
    chunk bound formula wrong. Oracles: the values are exactly {-1, +1}; the sample mean and
    variance of 40,000 N(0,1) draws lie within 5 standard errors (0.025 and 0.035) of 0 and 1
    (negative control: Uniform{0,1} probes fail the same checks); the chunk rule's element bound
    (chunk = min(D, 2**16 // (B D)) where that leaves >= 128 rows per pass)."""
    shape = torch.Size((100, 100))
    r = draw_probes("rademacher", 4, shape, generator=torch.Generator().manual_seed(2), dtype=F64, device=torch.device("cpu"))
    assert r.shape == (4, 100, 100) and set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(r.mean())) < 5 / math.sqrt(r.numel())
    gz = draw_probes("gaussian", 4, shape, generator=torch.Generator().manual_seed(3), dtype=F64, device=torch.device("cpu"))
    n = gz.numel()

    def unit_law(z):
        return abs(float(z.mean())) < 5 / math.sqrt(n) and abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)

    assert unit_law(gz) and unit_law(r)
    assert not unit_law(torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(4)).to(F64))
    assert default_chunk(3, 5) == 5 and default_chunk(64, 256) == 4 and default_chunk(10**6, 10) == 1


def test_default_chunk_row_floor_and_exact_trace():
    """Bug class: the row floor of the default chunk lost or mis-rounded (small batches starved to a
    few basis vectors per pass), or a chunk that does not divide D dropping or repeating rows.
    Oracle: chunk = min(D, max(2**16 // (B D), ceil(128 / B))), written out per case; for the
    linear score s(x) = x A^T the exact trace is tr(A) for every sample (float64 round-off only)."""
    assert MIN_CHUNK_ROWS == 128 and CHUNK_ELEMENTS == 2**16
    cases = {(8, 3072): 16, (1, 3072): 128, (1, 64): 64, (3, 1000): 43, (8, 1024): 16, (197, 64): 5,
             (256, 64): 4, (128, 3072): 1, (7, 2000): 19}
    for (B, D), chunk in cases.items():
        assert default_chunk(B, D) == chunk, (B, D)
    g = torch.Generator().manual_seed(11)
    B, D = 3, 1000  # default chunk 43 (the row floor): 23 passes of 43 vectors, then a remainder of 11
    A = torch.randn(D, D, generator=g, dtype=F64)
    x = torch.randn(B, D, generator=g, dtype=F64)
    eng = DivergenceEngine()
    for _ in range(2):  # first call: the autograd path; second: torch.func
        _, div = eng(lambda z: z @ A.T, x)
        assert div.shape == (B, 1)
        assert torch.allclose(div[:, 0], torch.trace(A).expand(B), rtol=0, atol=1e-10)


@pytest.mark.parametrize("per_sample_t", [False, True])
def test_gaussian_control_variate_correction_against_direct_inverse(per_sample_t):
    """Bug class: d = 1/(a^2 lam + s^2) with alpha not squared, (U^T e)^2 - 1 with the -1 dropped,
    the eigenbasis applied on the wrong side (U vs U^T), per-sample times broadcast on the wrong
    dim, from_data not the sample covariance. Oracle: -(e^T C e) + tr C with C formed by a direct
    inverse of a^2 Sigma + s^2 I, tolerance 1e-10."""
    g = torch.Generator().manual_seed(5)
    M = torch.randn(D, D, generator=g, dtype=F64)
    Sigma = M @ M.T + 0.1 * torch.eye(D, dtype=F64)
    cv = GaussianControlVariate(Sigma)
    sde = VPSDE(T=1.5)
    t = torch.tensor([0.1, 0.6, 1.3], dtype=F64) if per_sample_t else torch.tensor(0.4, dtype=F64)
    e = torch.randn(4, Bn, D, generator=g, dtype=F64)
    got = cv.correction(sde, t, e)
    tb = t if per_sample_t else t.expand(Bn)
    want = torch.empty(Bn, 4, dtype=F64)
    for b in range(Bn):
        Bi = 0.1 * tb[b] + 0.5 * (20 - 0.1) * tb[b] ** 2
        a2, s2 = torch.exp(-Bi), 1 - torch.exp(-Bi)
        Cm = -torch.linalg.inv(a2 * Sigma + s2 * torch.eye(D, dtype=F64))
        for k in range(4):
            want[b, k] = -(e[k, b] @ Cm @ e[k, b]) + torch.trace(Cm)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    X = torch.randn(30, 2, 3, generator=g, dtype=F64)
    Xf = X.reshape(30, 6)
    emp = (Xf - Xf.mean(0)).T @ (Xf - Xf.mean(0)) / 29
    fd = GaussianControlVariate.from_data(X)
    torch.testing.assert_close(fd.U @ torch.diag(fd.lam) @ fd.U.T, emp, rtol=1e-10, atol=1e-12)
    assert fd.dim == 6


def test_bits_per_dim_uniform_density_costs_log2_bins_and_continuous_form():
    """Bug class: the offset's sign, log((hi - lo)/n) with n or the range dropped, D not the
    product of data_shape, log 2 missing. Oracle: the uniform density on [lo, hi]^D (log p =
    -D log(hi - lo)) costs exactly log2(n_bins) bits/dim; without a range, -log p / (D log 2)."""
    shape = (2, 3)
    Dd = 6
    lo, hi, nb = -1.0, 3.0, 16
    lp = torch.full((4,), -Dd * math.log(hi - lo), dtype=F64)
    torch.testing.assert_close(bits_per_dim(lp, shape, data_range=(lo, hi), n_bins=nb), torch.full((4,), 4.0, dtype=F64),
                               rtol=0, atol=1e-12)
    lp2 = torch.tensor([-3.0, 1.5], dtype=F64)
    torch.testing.assert_close(bits_per_dim(lp2, shape), -lp2 / (Dd * math.log(2)), rtol=1e-14, atol=0)
    torch.testing.assert_close(bits_per_dim(lp2, 6, data_range=(0, 1)), -lp2 / (6 * math.log(2)) + 8, rtol=1e-13, atol=1e-13)


def test_dequantize_lands_each_level_in_its_bin_and_covers_it():
    """Bug class: k + u replaced by k (or k - u), the bin width (hi - lo)/n wrong, lo not added,
    the dtype default wrong. Oracle: floor((x - lo)/Delta) == k for every element, and the
    within-bin offsets of 4,000 draws have mean 1/2 within 5 standard errors (sd 1/sqrt(12))."""
    lo, hi, nb = -1.0, 3.0, 16
    delta = (hi - lo) / nb
    k = torch.randint(0, nb, (4000,), generator=torch.Generator().manual_seed(6))
    x = dequantize(k, generator=torch.Generator().manual_seed(7), n_bins=nb, data_range=(lo, hi), dtype=F64)
    assert x.dtype == F64
    frac = (x - lo) / delta - k.to(F64)
    assert bool((frac >= 0).all()) and bool((frac < 1).all())
    assert abs(float(frac.mean()) - 0.5) < 5 / math.sqrt(12 * 4000)
    assert dequantize(k[:3].to(torch.float32), n_bins=nb, data_range=(lo, hi)).dtype == torch.float32

"""Audit tests for ``rk_batched.solve_per_sample``: the step-size controller against a reference.

The reference below is a plain scalar-time loop over ONE sample, written from the module
docstring of ``rk_batched`` (Hairer, Norsett & Wanner II.4 for the first step; Gustafsson's PI
controller; FSAL reuse): it shares only the tableau coefficients (whose order conditions are
verified in tests/test_rk_batched.py) and the error norm formula. Every sample of the batched
solver must take exactly the same number of accepted and rejected steps and calls, and reach the
same state to 1e-12, with non-default safety, ifactor, dfactor and beta, rtol != atol, a
backward integration, a two-component state and a non-FSAL tableau. A controller exponent, a
clamp, a warm-up rule, a norm over the wrong dimension or an argument not passed on changes
the step sequence, which these integer counts expose exactly.
"""

from __future__ import annotations

import math
from typing import Callable, List, Tuple

import pytest
import torch

from sdesolve_gen.rk_batched import DOPRI5, Tableau, extrapolation_tableau, rms_error_ratio, solve_per_sample

F64 = torch.float64


def _rms_ratio(err: List[torch.Tensor], y0: List[torch.Tensor], y1: List[torch.Tensor], rtol: float, atol: float) -> float:
    """max over components of RMS(e / (atol + rtol max(|y0|, |y1|))) for ONE sample (1-D tensors)."""
    out = 0.0
    for e, a, b in zip(err, y0, y1):
        sc = atol + rtol * torch.maximum(a.abs(), b.abs())
        out = max(out, math.sqrt(float(((e / sc) ** 2).mean())))
    return out


def _reference(f: Callable, y0: List[torch.Tensor], t0: float, t1: float, tab: Tableau, rtol: float, atol: float,
               safety: float, ifactor: float, dfactor: float, beta: Tuple[float, float],
               first_step=None) -> Tuple[List[torch.Tensor], int, int, int]:
    """One sample: (y(t1), accepted steps, rejected steps, calls of f)."""
    span, d = abs(t1 - t0), (1.0 if t1 > t0 else -1.0)
    calls = 0

    def F(t, y):
        nonlocal calls
        calls += 1
        return f(t, y)

    def comb(y, h, ks, w):
        return [ym + h * sum((wl * k[m] for wl, k in zip(w, ks) if wl != 0.0), torch.zeros_like(ym)) for m, ym in enumerate(y)]

    def norm(v, y):
        return _rms_ratio(v, y, y, rtol, atol)

    t, y = t0, [v.clone() for v in y0]
    k1 = F(t, y)
    if first_step is None:
        d0, d1 = norm(y, y), norm(k1, y)
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        h0 = min(h0, span)
        k_e = F(t + d * h0, comb(y, d * h0, [k1], [1.0]))
        d2 = norm([a - b for a, b in zip(k_e, k1)], y) / h0
        dm = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if dm <= 1e-15 else (0.01 / dm) ** (1.0 / (tab.order + 1))
        h = min(100 * h0, h1, span)
    else:
        h = min(first_step, span)
    k = tab.embedded_order + 1
    r_prev, rejected_last = 1.0, False
    acc = rej = 0
    while True:
        rem = (t1 - t) * d
        last = h >= rem * (1 - 1e-12)
        if last:
            h = rem
        hs = d * h
        ks = [k1]
        for j in range(1, tab.stages):
            ks.append(F(t + tab.c[j] * hs, comb(y, hs, ks, tab.a[j])))
        y_new = comb(y, hs, ks, tab.b)
        err = comb([torch.zeros_like(v) for v in y], hs, ks, [b - bh for b, bh in zip(tab.b, tab.b_hat)])
        r = _rms_ratio(err, y, y_new, rtol, atol)
        rc = max(r, 1e-10)
        ok = r <= 1.0
        if ok:
            fac = safety * rc ** (-beta[0] / k) * r_prev ** (beta[1] / k)
        else:
            fac = safety * rc ** (-1.0 / k)
        fac = min(ifactor, max(dfactor, fac))
        if not ok or rejected_last:
            fac = min(fac, 1.0)
        if ok:
            r_prev = rc
            acc += 1
            t = t1 if last else t + hs
            y = y_new
            if last:
                return y, acc, rej, calls
            k1 = ks[-1] if tab.fsal else F(t, y)
        else:
            rej += 1
        rejected_last = not ok
        h = h * fac


# A nonlinear, non-autonomous field with per-sample parameters p (so samples need different steps):
# y' = -p y + sin(t) z,  z' = -y z / (1 + p)   (two components of different shapes)
def _field(p: torch.Tensor, sign: float = 1.0):
    """``sign = -1`` flips the field so that a backward integration is the contracting direction."""

    def batched(t, y, idx):
        a, b = y
        pp = p[idx]
        return (sign * (-pp[:, None] * a + torch.sin(t)[:, None] * b[:, :1]), sign * (-(a[:, :1] * b) / (1 + pp[:, None])))

    def single(i):
        def g(t, y):
            a, b = y
            return [sign * (-p[i] * a + math.sin(t) * b[:1]), sign * (-(a[:1] * b) / (1 + p[i]))]
        return g

    return batched, single


CASES = [
    # tableau, t0, t1, rtol, atol, safety, ifactor, dfactor, beta, first_step
    (DOPRI5, 0.3, 2.1, 1e-5, 1e-8, 0.8, 5.0, 0.3, (0.6, 0.2), None),
    (DOPRI5, 2.0, 0.1, 1e-4, 1e-6, 0.95, 3.0, 0.1, (1.0, 0.0), None),
    (DOPRI5, 0.0, 1.5, 1e-6, 1e-3, 0.9, 10.0, 0.2, (0.7, 0.4), 0.05),
    (extrapolation_tableau((2, 4, 6)), 0.2, 1.7, 1e-7, 1e-9, 0.85, 4.0, 0.25, (0.5, 0.3), None),
    # a first step far too large: rejections down to the dfactor floor, then accepted steps right after a rejection
    (DOPRI5, 0.0, 1.5, 1e-6, 1e-8, 0.9, 10.0, 0.05, (0.7, 0.4), 0.9),
    # rejections, then an accepted step whose PI factor exceeds 1: the no-growth-after-rejection
    # rule decides the next step (settings found by scanning first_step, dfactor and beta with the rule removed)
    (DOPRI5, 0.0, 1.5, 1e-6, 1e-8, 0.9, 10.0, 0.1, (1.0, 0.0), 0.9),
    (DOPRI5, 0.0, 1.5, 1e-8, 1e-10, 0.9, 10.0, 0.05, (1.0, 0.0), 0.9),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_per_sample_controller_matches_scalar_reference(case, device):
    """Guards the controller constants (safety, ifactor, dfactor, beta passed on and used with
    k = p_hat + 1), the first-step heuristic, the last-step clip, the no-growth-after-rejection
    rule, r_prev bookkeeping, FSAL vs non-FSAL reuse, backward time and the per-sample RMS norm
    (rtol != atol).

    Oracle: the scalar one-sample loop ``_reference`` written from the module docstring. Budget:
    accepted/rejected steps and calls equal exactly; the state to 1e-12 relative (both are the
    same float64 arithmetic up to summation order). Negative control: the reference with the
    controller exponent -1/k in place of -beta1/k takes a different step sequence for case 0.
    """
    tab, t0, t1, rtol, atol, safety, ifactor, dfactor, beta, first = CASES[case]
    p = torch.tensor([0.5, 3.0, 12.0], dtype=F64, device=device)
    g = torch.Generator(device=device).manual_seed(case)
    y0 = (torch.randn(3, 2, generator=g, dtype=F64, device=device) * torch.tensor([[1.0], [30.0], [0.01]], dtype=F64, device=device),
          torch.rand(3, 3, generator=g, dtype=F64, device=device) + 0.5)
    batched, single = _field(p, 1.0 if t1 > t0 else -1.0)
    sol = solve_per_sample(batched, y0, t0, t1, error_ratio=rms_error_ratio(rtol, atol), tableau=tab, first_step=first,
                           safety=safety, ifactor=ifactor, dfactor=dfactor, beta=beta)
    for i in range(3):
        yi, acc, rej, calls = _reference(single(i), [y0[0][i], y0[1][i]], t0, t1, tab, rtol, atol, safety, ifactor,
                                         dfactor, beta, first)
        assert (int(sol.n_steps[i]), int(sol.n_rejected[i]), int(sol.n_evals[i])) == (acc, rej, calls), f"sample {i}"
        for m in range(2):
            torch.testing.assert_close(sol.y[m][i], yi[m], rtol=1e-12, atol=1e-14)
    assert sol.nfe == len(sol.active_sizes) and max(sol.active_sizes) == 3


def test_reference_negative_control_detects_a_wrong_exponent():
    """The check above is sensitive: the reference with beta = (1, 0) instead of (0.6, 0.2)
    (i.e. a controller that ignores beta) differs from the solver run with (0.6, 0.2) in the step
    counts of at least one sample."""
    tab, t0, t1, rtol, atol, safety, ifactor, dfactor, beta, first = CASES[0]
    p = torch.tensor([0.5, 3.0, 12.0], dtype=F64)
    g = torch.Generator().manual_seed(0)
    y0 = (torch.randn(3, 2, generator=g, dtype=F64) * torch.tensor([[1.0], [30.0], [0.01]], dtype=F64),
          torch.rand(3, 3, generator=g, dtype=F64) + 0.5)
    batched, single = _field(p)
    sol = solve_per_sample(batched, y0, t0, t1, error_ratio=rms_error_ratio(rtol, atol), tableau=tab,
                           safety=safety, ifactor=ifactor, dfactor=dfactor, beta=beta)
    counts = [(int(sol.n_steps[i]), int(sol.n_rejected[i]), int(sol.n_evals[i])) for i in range(3)]
    wrong = [_reference(single(i), [y0[0][i], y0[1][i]], t0, t1, tab, rtol, atol, safety, ifactor, dfactor, (1.0, 0.0))[1:]
             for i in range(3)]
    assert counts != wrong


def test_rms_error_ratio_is_rms_over_coordinates_and_max_over_components():
    """Guards rms_error_ratio: RMS (not 2-norm, not max) over a sample's coordinates, scale
    atol + rtol max(|y0|, |y1|) (rtol != atol), max over the state's components, one value per
    sample. Oracle: the formula by hand on a (2, 4) and a (2, 1) component; tolerance 1e-14."""
    e = (torch.tensor([[1.0, -2.0, 0.5, 0.0], [3.0, 1.0, 1.0, 1.0]], dtype=F64), torch.tensor([[0.1], [4.0]], dtype=F64))
    y0 = (torch.tensor([[1.0, 2.0, -3.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64), torch.tensor([[2.0], [1.0]], dtype=F64))
    y1 = (torch.tensor([[-2.0, 1.0, 1.0, 1.0], [1.0, -1.0, 2.0, 0.5]], dtype=F64), torch.tensor([[1.0], [3.0]], dtype=F64))
    rtol, atol = 0.1, 0.01
    r = rms_error_ratio(rtol, atol)(e, y0, y1)
    ref = []
    for b in range(2):
        vals = []
        for m in range(2):
            sc = atol + rtol * torch.maximum(y0[m][b].abs(), y1[m][b].abs())
            q = e[m][b] / sc
            vals.append(math.sqrt(float((q * q).sum()) / q.numel()))
        ref.append(max(vals))
    torch.testing.assert_close(r, torch.tensor(ref, dtype=F64), rtol=1e-14, atol=0)

"""Audit value test for sdesolve_gen.samplers.inpaint's "ode" path with CORRELATED blocks.

With correlated known/unknown blocks the unknown coordinate's DDIM path depends on the known
coordinates' path, so the documented choice (one z drawn at the start, known coordinates on
alpha_t x_known + sigma_t z for the whole path) is visible. Oracle: the replacement recursion
written here from the docstring, with the closed-form Gaussian score
s(x, t) = -(alpha^2 S + sigma^2 I)^{-1} (x - alpha mu) and the VP closed forms for alpha, sigma.
"""

from __future__ import annotations

import math

import torch

import sdesolve_gen as sg

F64 = torch.float64


def test_inpaint_ode_keeps_one_noise_draw_on_a_non_uniform_grid_with_correlated_blocks():
    """Bug class: a fresh z every step on the "ode" path (or none), the replacement at t_i instead
    of t_{i+1}, the DDIM step's eps term wrong. Oracle: the hand recursion (1e-10); negative
    control: the same recursion with a fresh z per step differs by far more than the tolerance."""
    sde = sg.VPSDE(beta_min=0.2, beta_max=12.0, T=1.2, eps=2e-3)
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    S = torch.tensor([[0.6, 0.45], [0.45, 0.5]], dtype=F64)
    data = sg.analytic.Gaussian(mu, S)
    n = 6
    x_known = data.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    mask = torch.tensor([True, False])
    ts = torch.tensor([1.2, 0.9, 0.55, 0.3, 0.12, 0.04, 2e-3], dtype=F64)  # non-uniform
    got = sg.inpaint(sde, data.score_fn(sde), x_known, mask, ts, sampler="ode", x_T=x_T,
                     generator=torch.Generator().manual_seed(1)).x

    def coef(t):
        B = 0.2 * t + 0.5 * (12.0 - 0.2) * t * t
        return math.exp(-0.5 * B), math.sqrt(-math.expm1(-B))

    def score(x, t):
        a, s = coef(t)
        P = torch.linalg.inv(a * a * S + s * s * torch.eye(2, dtype=F64))
        return -(x - a * mu) @ P.T

    def hand(fresh):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, 2, generator=g, dtype=F64)
        a0, s0 = coef(float(ts[0]))
        x = torch.where(mask, a0 * x_known + s0 * z, x_T)
        for i in range(len(ts) - 1):
            (a_t, s_t), (a_s, s_s) = coef(float(ts[i])), coef(float(ts[i + 1]))
            sc = score(x, float(ts[i]))
            x = a_s * (x + s_t * s_t * sc) / a_t - s_s * s_t * sc
            if fresh:
                z = torch.randn(n, 2, generator=g, dtype=F64)
            x = torch.where(mask, a_s * x_known + s_s * z, x)
        return torch.where(mask, x_known, x)

    want = hand(False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert float((hand(True) - want).abs().max()) > 1e-3

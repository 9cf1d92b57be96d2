"""Audit tests for the forward SDEs (``sde.py``) and the discrete DDPM schedule (``discrete.py``).

Every check is at non-default values (T != 1, beta/sigma ranges other than the defaults, D > 1,
per-sample times, a prior std != 1) so that a dropped ``/T``, a wrong exponent or a swapped
argument cannot hide behind a default that makes it invisible. Oracles are closed forms written
here from the papers' formulas (Song et al. 2021; Nichol & Dhariwal 2021; Karras et al. 2022),
central finite differences of those closed forms, scipy's PCHIP interpolant and diffusers'
DDPMScheduler betas. Nothing here is statistical: every tolerance is a float64 round-off or
finite-difference truncation bound stated next to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdesolve_gen import EDMSDE, VESDE, VPSDE, CosineVPSDE, LinearSDE, SubVPSDE
from sdesolve_gen.discrete import DiscreteVPSDE, betas_for_schedule

F64 = torch.float64


def _closed_forms(name: str, t: np.ndarray):
    """(alpha, sigma, g2) of each SDE below at times ``t``, written from the papers' formulas."""
    if name == "ve":  # sigma_min=0.3, sigma_max=7, T=2.5
        smin, smax, T = 0.3, 7.0, 2.5
        sig = smin * (smax / smin) ** (t / T)
        return np.ones_like(t), sig, 2.0 * sig**2 * math.log(smax / smin) / T
    if name in ("vp", "subvp"):  # beta_min=0.3, beta_max=5, T=1.6
        b0, b1 = 0.3, 5.0
        beta = b0 + t * (b1 - b0)
        B = b0 * t + 0.5 * (b1 - b0) * t**2
        if name == "vp":
            return np.exp(-B / 2), np.sqrt(1 - np.exp(-B)), beta
        return np.exp(-B / 2), 1 - np.exp(-B), beta * (1 - np.exp(-2 * B))
    if name == "cosine":  # s=0.02, T=0.9
        s = 0.02
        ph = 0.5 * math.pi * (t + s) / (1 + s)
        a = np.cos(ph) / math.cos(0.5 * math.pi * s / (1 + s))
        return a, np.sqrt(1 - a**2), math.pi / (1 + s) * np.tan(ph)
    if name == "edm":  # sigma_min=0.01, sigma_max=12 -> T=12
        return np.ones_like(t), t, 2.0 * t
    raise KeyError(name)


def _make(name: str) -> LinearSDE:
    return {
        "ve": lambda: VESDE(0.3, 7.0, T=2.5, eps=1e-3),
        "vp": lambda: VPSDE(0.3, 5.0, T=1.6, eps=1e-3),
        "subvp": lambda: SubVPSDE(0.3, 5.0, T=1.6, eps=1e-3),
        "cosine": lambda: CosineVPSDE(0.02, T=0.9),
        "edm": lambda: EDMSDE(0.01, 12.0),
    }[name]()


NAMES = ["ve", "vp", "subvp", "cosine", "edm"]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_alpha_sigma_g2_match_closed_forms_at_non_unit_T(name):
    """Guards a dropped ``/T``, a wrong exponent or factor in alpha, sigma, g^2 of each SDE.

    Oracle: the papers' closed forms (``_closed_forms``), evaluated at 9 times spread over
    ``[0.05 T, T]`` with T != 1; tolerance 1e-12 relative (float64 round-off of exp/log).
    """
    sde = _make(name)
    t = np.linspace(0.05, 1.0, 9) * sde.T
    a, s, g2 = _closed_forms(name, t)
    tt = torch.tensor(t, dtype=F64)
    np.testing.assert_allclose(sde.alpha(tt).numpy(), a, rtol=1e-12)
    np.testing.assert_allclose(sde.sigma(tt).numpy(), s, rtol=1e-12)
    np.testing.assert_allclose(sde.g2(tt).numpy(), g2, rtol=1e-11)
    np.testing.assert_allclose(sde.diffusion(tt).numpy(), np.sqrt(g2), rtol=1e-11)
    np.testing.assert_allclose(sde.log_snr(tt).numpy(), np.log(a**2 / s**2), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(sde.half_log_snr(tt).numpy(), np.log(a / s), rtol=1e-11, atol=1e-12)
    # the prior: N(0, s_T^2) with s_T = sigma(T) for VE/EDM, 1 for the VP family
    expect_prior = s[-1] if name in ("ve", "edm") else 1.0
    assert sde.prior_std == pytest.approx(expect_prior, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_derivatives_match_finite_differences_of_closed_forms(name):
    """Guards a sign or factor bug in ``dlog_alpha_dt``, ``dsigma2_dt``, ``drift_coef`` and in the
    identity g^2 = (sigma^2)' - 2 (log alpha)' sigma^2.

    Oracle: central differences (h = 1e-6 T) of the closed-form log alpha and sigma^2; truncation
    error O(h^2 f''') ~ 1e-11 relative, round-off ~ 1e-16/h ~ 1e-10 relative: tolerance 1e-7.
    """
    sde = _make(name)
    t = np.linspace(0.1, 0.95, 7) * sde.T
    h = 1e-6 * sde.T
    a_p, s_p, _ = _closed_forms(name, t + h)
    a_m, s_m, _ = _closed_forms(name, t - h)
    dla = (np.log(a_p) - np.log(a_m)) / (2 * h)
    ds2 = (s_p**2 - s_m**2) / (2 * h)
    _, s, g2 = _closed_forms(name, t)
    tt = torch.tensor(t, dtype=F64)
    np.testing.assert_allclose(sde.dlog_alpha_dt(tt).numpy(), dla, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sde.drift_coef(tt).numpy(), dla, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sde.dsigma2_dt(tt).numpy(), ds2, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ds2 - 2 * dla * s**2, g2, rtol=1e-6)  # the identity holds for the oracle too


@pytest.mark.parametrize("name", NAMES)
def test_t_of_lambda_inverts_closed_form_half_log_snr(name):
    """Guards a wrong closed-form inverse ``t_of_lambda`` (a lost T, a sign, a wrong softplus).

    Oracle: lambda = log(alpha/sigma) from the closed forms at 7 times; t_of_lambda must return
    those times to 1e-9 T (float64 inversion of smooth monotone maps).
    """
    sde = _make(name)
    t = np.linspace(0.05, 0.95, 7) * sde.T
    a, s, _ = _closed_forms(name, t)
    back = sde.t_of_lambda(torch.tensor(np.log(a / s), dtype=F64)).numpy()
    np.testing.assert_allclose(back, t, rtol=0, atol=1e-9 * sde.T)


def test_custom_schedule_autograd_derivatives_and_bisection_inverse():
    """Guards the custom-schedule path of LinearSDE: autograd derivatives and the generic bisection
    ``t_of_lambda`` on [0, T] with T = 1.7 (a bisection on [0, 1] would miss t > 1).

    Oracle: alpha = exp(-t^2/2), sigma^2 = 1 - exp(-t^2) gives (log alpha)' = -t,
    (sigma^2)' = 2 t exp(-t^2), g^2 = 2t; tolerance 1e-12 (autograd is exact to round-off), the
    inverse to 1e-12 (100 bisections of [0, 1.7]).
    """
    sde = LinearSDE(alpha=lambda t: torch.exp(-0.5 * t**2), sigma=lambda t: torch.sqrt(-torch.expm1(-(t**2))), T=1.7, eps=1e-3)
    t = torch.tensor([0.2, 0.7, 1.2, 1.65], dtype=F64)
    torch.testing.assert_close(sde.dlog_alpha_dt(t), -t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sde.dsigma2_dt(t), 2 * t * torch.exp(-(t**2)), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sde.g2(t), 2 * t, rtol=1e-11, atol=1e-13)
    lam = -0.5 * t**2 - 0.5 * torch.log(-torch.expm1(-(t**2)))
    torch.testing.assert_close(sde.t_of_lambda(lam), t, rtol=0, atol=1e-12)


def test_vp_int_beta_inverse_and_beta_at_non_unit_T():
    """Guards ``t_of_int_beta`` (the stable quadratic root) and ``beta``/``int_beta``.

    Oracle: B(t) = b0 t + (b1 - b0) t^2 / 2 by hand; the inverse must return t to 1e-12.
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    t = torch.tensor([0.01, 0.4, 1.1, 1.6], dtype=F64)
    B = 0.3 * t + 0.5 * 4.7 * t**2
    torch.testing.assert_close(sde.int_beta(t), B, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.beta(t), 0.3 + 4.7 * t, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.t_of_int_beta(B), t, rtol=1e-12, atol=0)


def test_marginal_perturb_per_sample_times_and_prior_log_prob(device):
    """Guards per-sample broadcasting (``expand_to``), ``marginal``/``perturb`` and the prior density
    with D > 1 and prior std != 1.

    Oracle: mean = alpha_i x0_i and std sigma_i per sample from the closed forms; x_t = mean +
    std * noise exactly; log N(x; 0, s^2 I) from torch.distributions.Normal summed over 6 dims.
    """
    sde = VESDE(0.3, 7.0, T=2.5, eps=1e-3)
    vp = VPSDE(0.3, 5.0, T=1.6)
    g = torch.Generator(device=device).manual_seed(3)
    x0 = torch.randn(4, 2, 3, generator=g, device=device, dtype=F64)
    t = torch.tensor([0.1, 0.6, 1.0, 1.5], dtype=F64)
    a, s, _ = _closed_forms("vp", t.numpy())
    mean, std = vp.marginal(x0, t.to(device))
    assert std.shape == (4, 1, 1)
    torch.testing.assert_close(mean, torch.tensor(a, device=device).view(4, 1, 1) * x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(std.flatten(), torch.tensor(s, device=device), rtol=1e-12, atol=0)
    xt, noise = vp.perturb(x0, t.to(device), generator=torch.Generator(device=device).manual_seed(5))
    torch.testing.assert_close(xt, mean + std * noise, rtol=0, atol=1e-14)
    ref_noise = torch.randn(x0.shape, generator=torch.Generator(device=device).manual_seed(5), dtype=F64, device=device)
    torch.testing.assert_close(noise, ref_noise, rtol=0, atol=0)
    x = 3.0 * torch.randn(5, 2, 3, generator=g, device=device, dtype=F64)
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=F64, device=device), torch.tensor(7.0, dtype=F64, device=device)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(x), ref, rtol=1e-12, atol=1e-12)


def test_prior_sample_is_prior_std_times_randn_of_the_generator(device):
    """Guards ``prior_sample`` scaling (prior_std, not 1 or its square) and generator wiring.

    Oracle: sigma_max * torch.randn from an identically seeded generator (exact equality).
    """
    sde = EDMSDE(0.01, 12.0)
    z = sde.prior_sample((3, 4), generator=torch.Generator(device=device).manual_seed(9), dtype=F64, device=device)
    ref = torch.randn((3, 4), generator=torch.Generator(device=device).manual_seed(9), dtype=F64, device=device)
    torch.testing.assert_close(z, 12.0 * ref, rtol=0, atol=0)


def test_torchsde_interface_f_g_gprod_with_non_unit_vector(device):
    """Guards the torchsde methods: ``f`` = (log alpha)' y, ``g`` = g(t) broadcast, ``g_prod`` =
    g(t) * v with v != 1 (a g_prod returning g, or g^2 * v, is invisible for v = 1).

    Oracle: the closed-form VP drift -beta(t)/2 y and diffusion sqrt(beta(t)).
    """
    sde = VPSDE(0.3, 5.0, T=1.6)
    t = torch.tensor(1.3, dtype=F64)
    beta = 0.3 + 4.7 * 1.3
    g = torch.Generator(device=device).manual_seed(1)
    y = torch.randn(3, 4, generator=g, device=device, dtype=F64)
    v = torch.randn(3, 4, generator=g, device=device, dtype=F64)
    torch.testing.assert_close(sde.f(t, y), -0.5 * beta * y, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.g(t, y), torch.full_like(y, math.sqrt(beta)), rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.g_prod(t, y, v), math.sqrt(beta) * v, rtol=1e-13, atol=0)
    f2, gp = sde.f_and_g_prod(t, y, v)
    torch.testing.assert_close(f2, -0.5 * beta * y, rtol=1e-13, atol=0)
    torch.testing.assert_close(gp, math.sqrt(beta) * v, rtol=1e-13, atol=0)
    f3, g3 = sde.f_and_g(t, y)
    torch.testing.assert_close(g3, torch.full_like(y, math.sqrt(beta)), rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.drift(y, torch.full((3,), 1.3, dtype=F64)), -0.5 * beta * y, rtol=1e-13, atol=0)


def test_time_range_uses_T_not_one():
    """Guards the ``[0, T]`` range check: t = 2.4 is valid for T = 2.5, t = 2.6 is not."""
    sde = VESDE(0.3, 7.0, T=2.5)
    assert float(sde.sigma(2.4)) == pytest.approx(0.3 * (7 / 0.3) ** (2.4 / 2.5), rel=1e-12)
    with pytest.raises(ValueError, match="t must lie in"):
        sde.sigma(2.6)
    with pytest.raises(ValueError, match="t must lie in"):
        sde.sigma(-0.1)


# ---------------------------------------------------------------------------------- discrete


@pytest.mark.parametrize("schedule,start,end", [("linear", 3e-4, 0.04), ("scaled_linear", 1e-3, 0.03),
                                                ("squaredcos_cap_v2", 1e-4, 0.02)])
def test_betas_for_schedule_match_diffusers(schedule, start, end):
    """Guards each beta schedule formula at non-default beta_start/beta_end and N = 50.

    Oracle: diffusers 0.42 DDPMScheduler.betas (built in float32): tolerance 1e-6 relative
    (float32 round-off of values in (1e-4, 1)).
    """
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=50, beta_schedule=schedule, beta_start=start, beta_end=end).betas
    ours = betas_for_schedule(schedule, 50, start, end)
    np.testing.assert_allclose(ours.numpy(), ref.double().numpy(), rtol=2e-6, atol=1e-9)


def test_discrete_vpsde_passes_through_knots_and_matches_scipy_pchip():
    """Guards the time map t_k = (k+1)/N, the knot values, the Fritsch-Carlson slopes (incl. the
    end conditions) and the Hermite evaluation of B(t) and B'(t).

    Oracle: scipy.interpolate.PchipInterpolator through (j/N, B_j), B_0 = 0, B_j = -log abar_{j-1};
    alpha(t_k)^2 == abar_k to 1e-12, B and B' against scipy to 1e-10 relative at 41 off-knot times.
    """
    from scipy.interpolate import PchipInterpolator

    betas = betas_for_schedule("scaled_linear", 20, 1e-3, 0.05)
    acp = torch.cumprod(1 - betas, 0)
    sde = DiscreteVPSDE(acp)
    n = 20
    tk = torch.arange(1, n + 1, dtype=F64) / n
    torch.testing.assert_close(sde.alpha(tk) ** 2, acp, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.time_of_timestep(torch.arange(n, dtype=F64)), tk, rtol=0, atol=1e-15)
    torch.testing.assert_close(sde.timestep_of(tk), torch.arange(n, dtype=F64), rtol=0, atol=1e-12)
    assert sde.eps == pytest.approx(1 / n)
    knots_t = np.arange(n + 1) / n
    knots_B = np.concatenate([[0.0], -np.log(acp.numpy())])
    p = PchipInterpolator(knots_t, knots_B)
    t = np.linspace(0.003, 0.997, 41)
    tt = torch.tensor(t, dtype=F64)
    np.testing.assert_allclose(sde.int_beta(tt).numpy(), p(t), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sde.beta(tt).numpy(), p(t, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sde.g2(tt).numpy(), p(t, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sde.sigma(tt).numpy() ** 2, -np.expm1(-p(t)), rtol=1e-10)
    np.testing.assert_allclose(sde.dlog_alpha_dt(tt).numpy(), -0.5 * p(t, 1), rtol=1e-10)
    np.testing.assert_allclose(sde.dsigma2_dt(tt).numpy(), p(t, 1) * np.exp(-p(t)), rtol=1e-10)
    lam = -0.5 * np.log(np.expm1(p(t)))
    np.testing.assert_allclose(sde.t_of_lambda(torch.tensor(lam)).numpy(), t, rtol=0, atol=1e-12)


def test_discrete_from_betas_trained_betas_and_eps():
    """Guards ``from_betas(trained_betas=...)`` wiring and the ``eps`` argument.

    Oracle: abar = cumprod(1 - betas) by hand (a reversed or shifted cumprod fails).
    """
    betas = np.linspace(0.01, 0.2, 7)
    sde = DiscreteVPSDE.from_betas(trained_betas=betas, eps=0.05)
    np.testing.assert_allclose(sde.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-14)
    assert sde.num_train_timesteps == 7 and sde.eps == 0.05
    sde2 = LinearSDE.from_betas("linear", 30, 2e-4, 0.05)
    np.testing.assert_allclose(sde2.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(2e-4, 0.05, 30)), rtol=1e-13)

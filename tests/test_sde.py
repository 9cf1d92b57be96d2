"""Forward SDEs: the f/g <-> alpha/sigma identity, priors, and argument checks."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import sdesolve_gen as sg
from sdesolve_gen.sde import LinearSDE

F64 = torch.float64


def _schedules():
    """Strategy over every built-in schedule with random (valid) parameters."""
    vp = st.builds(
        lambda a, b: sg.VPSDE(beta_min=a, beta_max=a + b),
        st.floats(0.0, 2.0),
        st.floats(0.1, 30.0),
    )
    subvp = st.builds(
        lambda a, b: sg.SubVPSDE(beta_min=a, beta_max=a + b),
        st.floats(0.0, 2.0),
        st.floats(0.1, 30.0),
    )
    ve = st.builds(
        lambda lo, r: sg.VESDE(sigma_min=lo, sigma_max=lo * r),
        st.floats(1e-3, 1.0),
        st.floats(1.5, 1e4),
    )
    cos = st.builds(lambda s: sg.CosineVPSDE(s=s), st.floats(1e-3, 0.05))
    edm = st.builds(lambda hi: sg.EDMSDE(sigma_min=0.002, sigma_max=hi), st.floats(1.0, 100.0))
    return st.one_of(vp, subvp, ve, cos, edm)


def _central_diff(fn, t, h):
    return (fn(t + h) - fn(t - h)) / (2 * h)


@given(sde=_schedules(), u=st.floats(0.02, 0.98))
def test_closed_form_derivatives_match_finite_differences(sde, u):
    """d log(alpha)/dt and d sigma^2/dt (closed forms) vs a central difference of alpha(), sigma().

    Budget: the central difference has truncation error O(h^2 f''') and round-off O(1e-16 |f|/h);
    with h = 1e-5 T both are below 1e-6 relative for these smooth schedules; we allow 1e-5.
    """
    t = torch.tensor(u * sde.T, dtype=F64)
    h = 1e-5 * sde.T
    dla_fd = _central_diff(lambda s: torch.log(sde.alpha(s)), t, h)
    ds2_fd = _central_diff(lambda s: sde.sigma(s) ** 2, t, h)
    scale_a = 1.0 + abs(float(dla_fd))
    scale_s = abs(float(ds2_fd)) + 1e-12
    assert abs(float(sde.dlog_alpha_dt(t) - dla_fd)) <= 1e-5 * scale_a
    assert abs(float(sde.dsigma2_dt(t) - ds2_fd)) <= 1e-5 * scale_s


@given(sde=_schedules(), u=st.floats(0.0, 1.0))
def test_diffusion_obeys_identity(sde, u):
    """g^2 = (sigma^2)' - 2 (log alpha)' sigma^2, checked against every closed-form override."""
    t = torch.tensor(u * sde.T, dtype=F64)
    identity = sde.dsigma2_dt(t) - 2 * sde.dlog_alpha_dt(t) * sde.sigma2(t)
    g2 = sde.g2(t)
    assert torch.allclose(g2, identity, rtol=1e-10, atol=1e-12)
    assert float(g2) >= 0


@given(sde=_schedules(), u0=st.floats(0.0, 0.5), du=st.floats(0.05, 0.5))
def test_variance_ode_reproduces_sigma(sde, u0, du):
    """Integrate the variance ODE dv/dt = 2 f_coef v + g^2 from t0 with v(t0) = sigma(t0)^2;
    it must land on sigma(t1)^2. Also the mean ODE dm/dt = f_coef m gives alpha(t1)/alpha(t0).

    This checks f and g (what torchsde integrates) against alpha, sigma in integral form, so a
    wrong drift or diffusion cannot hide behind a matching derivative. Budget: scipy's DOP853
    at rtol 1e-10 -> relative error < 1e-7.
    """
    t0, t1 = u0 * sde.T, (u0 + du) * sde.T

    def rhs(t, y):
        tt = torch.tensor(t, dtype=F64)
        a = float(sde.drift_coef(tt))
        return [a * y[0], 2 * a * y[1] + float(sde.diffusion2(tt))]

    y0 = [1.0, float(sde.sigma(t0)) ** 2]
    sol = integrate.solve_ivp(rhs, (t0, t1), y0, method="DOP853", rtol=1e-10, atol=1e-14)
    m1, v1 = sol.y[:, -1]
    assert m1 == pytest.approx(float(sde.alpha(t1) / sde.alpha(t0)), rel=1e-7)
    assert v1 == pytest.approx(float(sde.sigma(t1)) ** 2, rel=1e-7, abs=1e-12)


def test_autograd_derivatives_of_custom_schedule_match_vp():
    """A custom LinearSDE written with VP's alpha, sigma (derivatives by autograd) equals VPSDE."""
    vp = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    custom = sg.LinearSDE(
        alpha=lambda t: torch.exp(-0.5 * vp.int_beta(t)),
        sigma=lambda t: torch.sqrt(-torch.expm1(-vp.int_beta(t))),
        T=1.0,
        eps=1e-3,
    )
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    assert torch.allclose(custom.drift_coef(t), vp.drift_coef(t), rtol=1e-12)
    assert torch.allclose(custom.diffusion2(t), vp.beta(t), rtol=1e-9)
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(custom.f(t[7], x), vp.f(t[7], x))
    assert torch.allclose(custom.g(t[7], x), vp.g(t[7], x))


def test_known_literature_forms():
    """The derived coefficients equal the textbook ones (score_sde, seeds)."""
    t = torch.linspace(0, 1, 11, dtype=F64)
    vp = sg.VPSDE(0.1, 20.0)
    assert torch.allclose(vp.g2(t), 0.1 + 19.9 * t)
    assert torch.allclose(vp.drift_coef(t), -0.5 * (0.1 + 19.9 * t))
    ve = sg.VESDE(0.01, 50.0)
    sig = 0.01 * (5000.0**t)
    assert torch.allclose(ve.sigma(t), sig, rtol=1e-12)
    assert torch.allclose(ve.g2(t), 2 * sig**2 * math.log(5000.0), rtol=1e-12)
    sub = sg.SubVPSDE(0.1, 20.0)
    B = 0.1 * t + 0.5 * 19.9 * t**2
    assert torch.allclose(sub.g2(t), (0.1 + 19.9 * t) * (1 - torch.exp(-2 * B)), rtol=1e-10, atol=1e-14)
    edm = sg.EDMSDE()
    assert torch.allclose(edm.g2(torch.tensor([1.0, 3.0], dtype=F64)), torch.tensor([2.0, 6.0], dtype=F64))


def test_vp_sigma_small_t_float32_accurate():
    """expm1 keeps sigma accurate at t=1e-6 in float32 (the naive 1 - exp is ~23% wrong)."""
    vp = sg.VPSDE()
    t = torch.tensor(1e-6, dtype=torch.float32)
    exact = math.sqrt(-math.expm1(-(0.1e-6 + 0.5 * 19.9e-12)))
    ours = float(torch.sqrt(vp.sigma2(t)))
    naive = float(torch.sqrt(1 - torch.exp(-vp.int_beta(t))))
    assert ours == pytest.approx(exact, rel=1e-5)
    assert abs(naive - exact) / exact > 0.05  # the control: the naive form really is wrong


@pytest.mark.parametrize("sde", [sg.VPSDE(), sg.VESDE(), sg.SubVPSDE(), sg.EDMSDE()], ids=repr)
def test_prior_log_prob_matches_scipy(sde):
    g = torch.Generator().manual_seed(3)
    x = sde.prior_sample((5, 3, 2), generator=g, dtype=F64)
    ref = stats.multivariate_normal(np.zeros(6), sde.prior_std**2 * np.eye(6)).logpdf(x.flatten(1).numpy())
    assert np.allclose(sde.prior_log_prob(x).numpy(), ref, rtol=1e-12)


def test_prior_sample_moments_and_seed():
    """Sample std matches prior_std (z-test: SE of a std estimate ~ s/sqrt(2N); 5 SE band)."""
    sde = sg.VESDE(sigma_max=7.0)
    x = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    se = 7.0 / math.sqrt(2 * x.numel())
    assert abs(float(x.std()) - 7.0) < 5 * se
    assert abs(float(x.std()) - 6.9) > 5 * se  # negative control: a 1.4% wrong std is resolved
    y = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(x, y)


def test_marginal_and_perturb_shapes():
    sde = sg.VPSDE()
    x0 = torch.ones(4, 1, 3, 3, dtype=F64)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    mean, std = sde.marginal(x0, t)
    assert mean.shape == x0.shape and std.shape == (4, 1, 1, 1)
    assert torch.allclose(mean[:, 0, 0, 0], sde.alpha(t))
    xt, noise = sde.perturb(x0, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(xt, sde.alpha(0.5) * x0 + sde.sigma(0.5) * noise)


def test_torchsde_interface_shapes_and_dtype():
    sde = sg.VPSDE()
    y = torch.randn(7, 5)
    t = torch.tensor(0.3)
    assert sde.f(t, y).shape == y.shape and sde.f(t, y).dtype == torch.float32
    assert sde.g(t, y).shape == y.shape
    v = torch.randn(7, 5)
    f, gp = sde.f_and_g_prod(t, y, v)
    assert torch.allclose(gp, sde.g(t, y) * v)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sg.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sg.VESDE(sigma_min=-1.0), "sigma_min"),
        (lambda: sg.VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_max"),
        (lambda: sg.VESDE(sigma_min=1.0, sigma_max=float("nan")), "sigma_max"),
        (lambda: sg.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sg.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sg.SubVPSDE(beta_min=1.0, beta_max=0.5), "beta_max"),
        (lambda: sg.VPSDE(eps=2.0), "eps"),
        (lambda: sg.VPSDE(T=-1.0), "T"),
        (lambda: sg.CosineVPSDE(T=1.0), "T"),
        (lambda: sg.EDMSDE(sigma_min=10.0, sigma_max=1.0), "sigma_max"),
    ],
)
def test_bad_schedule_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types():
    with pytest.raises(TypeError, match="beta_min"):
        sg.VPSDE(beta_min="0.1")
    with pytest.raises(TypeError, match="sigma_max"):
        sg.VESDE(sigma_max=None)
    with pytest.raises(TypeError, match="schedule"):
        sg.LinearSDE()
    with pytest.raises(TypeError, match="alpha and sigma"):
        sg.LinearSDE(alpha=lambda t: t)


@pytest.mark.parametrize(
    "t, exc, match",
    [
        (-0.1, ValueError, r"\[0, T\]"),
        (1.5, ValueError, r"\[0, T\]"),
        (torch.tensor([0.1, 2.0]), ValueError, r"\[0, T\]"),
        (torch.tensor([[0.1]]), ValueError, "shape"),
        (float("nan"), ValueError, "finite"),
        ("0.5", TypeError, "t must be"),
        (True, TypeError, "bool"),
    ],
)
def test_bad_times(t, exc, match):
    with pytest.raises(exc, match=match):
        sg.VPSDE().alpha(t)


def test_time_batch_mismatch_and_bad_x():
    sde = sg.VPSDE()
    with pytest.raises(ValueError, match="batch"):
        sde.marginal(torch.zeros(3, 2), torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="x0"):
        sde.marginal([[0.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="x"):
        sde.prior_log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        sde.prior_sample((0, 2))
    with pytest.raises(TypeError, match="shape"):
        sde.prior_sample(5)


# ------------------------------------------------------------------ closed-form lambda inverses

_CLOSED_FORMS = {
    "vp": lambda: sg.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: sg.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": lambda: sg.VESDE(sigma_min=0.01, sigma_max=50.0),
    "cosine": lambda: sg.CosineVPSDE(),
    "edm": lambda: sg.EDMSDE(sigma_min=0.002, sigma_max=80.0),
}


@pytest.mark.parametrize("name", sorted(_CLOSED_FORMS))
@settings(max_examples=25, deadline=None)
@given(u=st.floats(0.0, 1.0))
def test_closed_form_t_of_lambda_inverts_lambda(name, u):
    """Each schedule's closed-form inverse of lambda(t) = log(alpha/sigma) returns t (to 1e-9 relative),
    and agrees with the generic bisection of the base class; a neighbouring schedule's inverse does not."""
    sde = _CLOSED_FORMS[name]()
    t = torch.tensor(sde.eps + u * (sde.T - sde.eps), dtype=torch.float64)
    lam = sde.half_log_snr(t)
    got = sde.t_of_lambda(lam)
    assert abs(float(got - t)) <= 1e-9 * max(1.0, float(t))
    assert abs(float(LinearSDE.t_of_lambda(sde, lam) - t)) <= 1e-9 * max(1.0, float(t))  # bisection agrees


@pytest.mark.parametrize("name", sorted(_CLOSED_FORMS))
def test_closed_form_t_of_lambda_rejects_the_wrong_schedule(name):
    """Negative control: the inverse of a different schedule of the same family misses by > 1e-3."""
    sde = _CLOSED_FORMS[name]()
    other = {"vp": sg.VPSDE(beta_max=10.0), "subvp": sg.SubVPSDE(beta_max=10.0), "ve": sg.VESDE(sigma_max=20.0),
             "cosine": sg.CosineVPSDE(s=0.05), "edm": sg.EDMSDE(sigma_min=0.002, sigma_max=80.0)}[name]
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64) * sde.T
    lam = sde.half_log_snr(t)
    if name == "edm":  # EDM's sigma(t) = t has no free parameter: shift lambda instead
        lam = lam + 0.01
    assert float((other.t_of_lambda(lam) - t).abs().max()) > 1e-3

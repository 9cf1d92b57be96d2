"""Audit value tests for sdesolve_gen.reverse and sdesolve_gen.parameterisation.

Oracles are closed forms written here from the math (the linear VP schedule
beta(t) = b0 + t (b1 - b0), B(t) = b0 t + (b1 - b0) t^2 / 2, alpha = exp(-B/2),
sigma^2 = 1 - exp(-B)), never the SDE object's own drift/diffusion, on non-default values:
T = 2.5 (so u = T - t is visible), D > 1, B > 1, per-sample (B,) times and coefficients, a
score that depends on t and on the sample (so a wrong time or a batch mix-up shows), and a
non-VP pair (alpha, sigma) with alpha^2 + sigma^2 != 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdesolve_gen._checks import NonFiniteError
from sdesolve_gen.parameterisation import ScoreModel, convert, from_score, to_score
from sdesolve_gen.reverse import ProbabilityFlowODE, ReverseSDE, pf_velocity
from sdesolve_gen.sde import VPSDE

F64 = torch.float64
B0, B1, T = 0.3, 7.0, 2.5


def _beta(t: float) -> float:
    return B0 + t * (B1 - B0)


def _int_beta(t: float) -> float:
    return B0 * t + 0.5 * (B1 - B0) * t * t


def _score(x: torch.Tensor, t, **kw) -> torch.Tensor:
    """A t-dependent, sample-dependent, non-linear field: s = -x (1 + t) + sin(x) + 0.1 * row index."""
    rows = torch.arange(x.shape[0], dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return -x * (1.0 + torch.as_tensor(t, dtype=x.dtype)) + torch.sin(x) + 0.1 * rows


def _sde() -> VPSDE:
    return VPSDE(beta_min=B0, beta_max=B1, T=T, eps=1e-3)


def test_reverse_sde_solver_time_drift_and_diffusion_closed_form_at_T_not_one():
    """Bug class: u = T - t wrong (T dropped, sign), -a y vs +a y, g^2 vs g, g_prod not g * v,
    f_and_g_prod differing from f/g_prod, the tabulated (on_grid) path differing from the
    computed one. Oracle: f(u, y) = beta(T-u) s(y, T-u) + beta(T-u)/2 y and g = sqrt(beta(T-u)),
    closed form of the VP schedule at T = 2.5, tolerance 1e-12 (float64 rounding)."""
    sde = _sde()
    rs = ReverseSDE(sde, _score)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 4, generator=g, dtype=F64)
    v = torch.randn(3, 4, generator=g, dtype=F64)
    us = torch.tensor([0.0, 0.4, 1.7, 2.4], dtype=F64)
    rs.f(us[0], y)  # one call before copying: the copy must start its own count at 0
    grid = rs.on_grid(us)
    for u in us:
        t = T - float(u)
        beta = _beta(t)
        f_ref = beta * _score(y, t) + 0.5 * beta * y
        g_ref = math.sqrt(beta)
        for obj in (rs, grid):
            torch.testing.assert_close(obj.f(u, y), f_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(obj.g(u, y), torch.full_like(y, g_ref), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(obj.g_prod(u, y, v), g_ref * v, rtol=1e-12, atol=1e-12)
            f2, gp = obj.f_and_g_prod(u, y, v)
            torch.testing.assert_close(f2, f_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(gp, g_ref * v, rtol=1e-12, atol=1e-12)
            f3, g3 = obj.f_and_g(u, y)
            torch.testing.assert_close(f3, f_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g3, torch.full_like(y, g_ref), rtol=1e-12, atol=1e-12)
        # physical-time reverse drift f - g^2 s = -beta/2 x - beta s
        torch.testing.assert_close(rs.reverse_drift(y, torch.tensor(t, dtype=F64)), -f_ref, rtol=1e-12, atol=1e-12)
    assert grid.nfe == 3 * len(us) and rs.nfe == 4 * len(us) + 1  # each object counts its own calls (f, fused, f_and_g; + reverse_drift)
    # negative control: the same check rejects the forward drift sign
    with pytest.raises(AssertionError):
        torch.testing.assert_close(rs.f(us[1], y), beta * _score(y, T - 0.4) - 0.5 * _beta(T - 0.4) * y)


def test_reverse_sde_solver_times_map_and_bounds_at_T_not_one():
    """Bug class: u = T - t with T dropped (1 - t), the [0, T] check using 1, or the order check
    inverted. Oracle: u = 2.5 - t by hand; physical_time inverts it."""
    rs = ReverseSDE(_sde(), _score)
    ts = torch.tensor([2.5, 1.9, 0.6, 0.001], dtype=F64)
    us = rs.solver_times(ts)
    torch.testing.assert_close(us, torch.tensor([0.0, 0.6, 1.9, 2.499], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(rs.physical_time(us), ts, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="decreasing"):
        rs.solver_times(ts.flip(0))
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        rs.solver_times(torch.tensor([2.6, 1.0], dtype=F64))
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        rs.solver_times(torch.tensor([1.0, -0.1], dtype=F64))
    assert rs.sde_type == "ito" and ReverseSDE(_sde(), _score, sde_type="stratonovich").sde_type == "stratonovich"


def test_pf_ode_velocity_half_factor_per_sample_times_data_shape_and_kwargs():
    """Bug class: the 1/2 of the PF-ODE dropped, (B,) times broadcast over the wrong dim, data_shape
    not applied before the score, model_kwargs not passed on. Oracle: v = -beta/2 x - beta/2 s
    (closed form), with the score seeing (B, 2, 3) states and a keyword scale."""
    sde = _sde()
    seen = {}

    def score(x, t, scale=1.0):
        seen["shape"] = tuple(x.shape)
        return scale * _score(x, t)

    ode = ProbabilityFlowODE(sde, score, data_shape=(2, 3), model_kwargs={"scale": 0.7})
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = 1.3
    got = ode(torch.tensor(t, dtype=F64), x)
    beta = _beta(t)
    s_ref = 0.7 * _score(x.reshape(4, 2, 3), t).reshape(4, 6)
    torch.testing.assert_close(got, -0.5 * beta * x - 0.5 * beta * s_ref, rtol=1e-12, atol=1e-12)
    assert seen["shape"] == (4, 2, 3)
    # per-sample times (B,) through pf_velocity
    tb = torch.tensor([0.2, 0.9, 1.6, 2.4], dtype=F64)
    s = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    betas = torch.tensor([_beta(float(ti)) for ti in tb], dtype=F64)[:, None]
    torch.testing.assert_close(pf_velocity(sde, x, s, tb), -0.5 * betas * x - 0.5 * betas * s, rtol=1e-12, atol=1e-12)


def test_check_finite_end_names_the_first_bad_evaluation_and_step_raises_at_once():
    """Bug class: the "end" record names the wrong evaluation (index off by one), forgets to
    reset, or True/False map to the wrong mode. Oracle: the score is NaN exactly from its 3rd
    call on, so the message must say evaluation 3 of 4."""
    sde = _sde()
    calls = {"n": 0}

    def score(x, t):
        calls["n"] += 1
        out = x.clone()
        if calls["n"] >= 3:
            out[0, 1] = float("nan")  # one bad element: the record must use all(), not any()
        return out

    rs = ReverseSDE(sde, score, check_finite="end")
    y = torch.ones(2, 3, dtype=F64)
    for u in (0.1, 0.2, 0.3, 0.4):
        rs.f(torch.tensor(u, dtype=F64), y)
    with pytest.raises(NonFiniteError, match=r"t=2\.2 .*evaluation 3 of 4"):
        rs.raise_if_nonfinite()
    rs.raise_if_nonfinite()  # records were forgotten: no raise
    calls["n"] = 2
    strict = ReverseSDE(sde, score, check_finite=True)
    with pytest.raises(NonFiniteError):
        strict.f(torch.tensor(0.1, dtype=F64), y)
    calls["n"] = 2
    off = ReverseSDE(sde, score, check_finite=False)
    off.f(torch.tensor(0.1, dtype=F64), y)
    off.raise_if_nonfinite()


def test_differentiable_flag_keeps_the_graph_only_when_asked():
    """Bug class: the score always run under no_grad (or never). Oracle: d/dx of f(u, x) summed
    for the linear score s = -c x is (beta c... ) = -beta c + beta/2 per element."""
    sde = _sde()
    c = 1.7

    def lin(x, t):
        return -c * x

    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    u = torch.tensor(0.5, dtype=F64)
    beta = _beta(T - 0.5)
    out = ReverseSDE(sde, lin, differentiable=True).f(u, x).sum()
    (gx,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(gx, torch.full_like(x, -beta * c + 0.5 * beta), rtol=1e-12, atol=1e-12)
    out2 = ReverseSDE(sde, lin).f(u, x).sum()
    (gx2,) = torch.autograd.grad(out2, x)  # only the -a y term carries the graph
    torch.testing.assert_close(gx2, torch.full_like(x, 0.5 * beta), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ parameterisation


def _coefs(Bn: int):
    # non-VP pair: alpha^2 + sigma^2 != 1, per-sample values
    alpha = torch.tensor([0.9, 0.5, 1.3], dtype=F64)[:Bn]
    sigma = torch.tensor([0.2, 1.1, 0.7], dtype=F64)[:Bn]
    return alpha, sigma


def test_to_and_from_score_closed_forms_non_vp_per_sample():
    """Bug class: eps = -sigma s sign or power, x0 = (x + sigma^2 s)/alpha with sigma not squared
    or alpha dropped, v = alpha eps - sigma x0 with a sign/role swap, its inversion using
    alpha^2 + sigma^2 = 1, or (B,) coefficients broadcast on the wrong dim. Oracle: the four
    definitions written out element-wise here."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 2, generator=g, dtype=F64)
    s = torch.randn(3, 2, 2, generator=g, dtype=F64)
    alpha, sigma = _coefs(3)
    a, sg = alpha[:, None, None], sigma[:, None, None]
    eps = -sg * s
    x0 = (x + sg * sg * s) / a
    v = a * eps - sg * x0
    ref = {"score": s, "eps": eps, "x0": x0, "v": v}
    for kind, pred in ref.items():
        torch.testing.assert_close(from_score(s, kind, x, alpha, sigma), pred, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(to_score(pred, kind, x, alpha, sigma), s, rtol=1e-12, atol=1e-12)
        for dst, want in ref.items():
            torch.testing.assert_close(convert(pred, kind, dst, x, alpha, sigma), want, rtol=1e-11, atol=1e-11)
    # scalar coefficients too
    torch.testing.assert_close(to_score(v[:1], "v", x[:1], 0.9, 0.2), s[:1], rtol=1e-12, atol=1e-12)
    # negative control: a VP-only v inversion (dividing by 1) is rejected by the same check
    wrong = -((sg * x + a * v)) / sg
    with pytest.raises(AssertionError):
        torch.testing.assert_close(wrong, s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_score_model_uses_alpha_sigma_of_the_sde_at_the_given_per_sample_times(kind):
    """Bug class: ScoreModel passing t to net in the wrong dtype/shape, alpha = exp(log_alpha)
    replaced by log_alpha or by sigma, sigma = sqrt(sigma2) without the sqrt, kwargs dropped.
    Oracle: alpha, sigma from the VP closed form at T = 2.5 and the conversions by hand."""
    sde = _sde()
    tb = torch.tensor([0.3, 1.1, 2.2], dtype=F64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    seen = {}

    def net(xx, tt, y=None):
        seen["t"], seen["y"] = tt, y
        return torch.cos(xx) + tt[:, None]

    model = ScoreModel(net, sde, kind)
    got = model(x, tb, y=5)
    assert seen["y"] == 5 and seen["t"].dtype == x.dtype and seen["t"].shape == (3,)
    torch.testing.assert_close(seen["t"], tb, rtol=0, atol=0)
    Bt = torch.tensor([_int_beta(float(t)) for t in tb], dtype=F64)[:, None]
    a, sg = torch.exp(-0.5 * Bt), torch.sqrt(1 - torch.exp(-Bt))
    pred = torch.cos(x) + tb[:, None]
    if kind == "eps":
        want = -pred / sg
    elif kind == "x0":
        want = (a * pred - x) / sg**2
    else:
        e = (sg * x + a * pred) / (a * a + sg * sg)
        want = -e / sg
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # scalar time: expanded to (B,)
    model(x, 1.1)
    assert seen["t"].shape == (3,) and bool((seen["t"] == 1.1).all())

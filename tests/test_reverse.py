"""ReverseSDE / ProbabilityFlowODE as raw torchsde / torchdiffeq citizens."""

import pytest
import torch
import torchdiffeq
import torchsde

import sdesolve_gen as sg

F64 = torch.float64


def _data():
    return sg.analytic.GaussianMixture(
        torch.tensor([[-1.5, 0.0], [1.5, 0.5]]),
        torch.tensor([[[0.2, 0.05], [0.05, 0.3]], [[0.4, -0.1], [-0.1, 0.2]]]),
        torch.tensor([0.4, 0.6]),
    )


def test_retimed_drift_is_minus_physical_reverse_drift():
    """torchsde drift in solver time u = T - t equals -(f - g^2 s)(x, T - u)."""
    sde, data = sg.VPSDE(), _data()
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    x = data.sample(5, generator=torch.Generator().manual_seed(0), dtype=F64)
    u = torch.tensor(0.3, dtype=F64)
    t = 0.7
    expected = -(sde.drift(x, t) - sde.g2(t) * data.score(x, t, sde))
    assert torch.allclose(rsde.f(u, x), expected, rtol=1e-12)
    assert torch.allclose(rsde.g(u, x), torch.sqrt(sde.g2(t)).expand(5, 2))
    assert torch.allclose(rsde.solver_times(torch.tensor([1.0, 0.5, 1e-3], dtype=F64)), torch.tensor([0.0, 0.5, 1 - 1e-3], dtype=F64))


@pytest.mark.parametrize("method,sde_type", [("euler", "ito"), ("milstein", "ito"), ("srk", "ito"), ("heun", "stratonovich"), ("midpoint", "stratonovich"), ("reversible_heun", "stratonovich")])
def test_every_torchsde_method_runs(method, sde_type):
    sde, data = sg.VPSDE(), _data()
    rsde = sg.ReverseSDE(sde, data.score_fn(sde), sde_type=sde_type)
    xT = data.prior(sde).sample(8, generator=torch.Generator().manual_seed(0), dtype=F64)
    us = rsde.solver_times(torch.tensor([1.0, 1e-3], dtype=F64))
    bm = torchsde.BrownianInterval(t0=us[0], t1=us[-1], size=xT.shape, dtype=F64, entropy=0, levy_area_approximation="space-time")
    xs = torchsde.sdeint(rsde, xT, us, method=method, dt=0.02, bm=bm)
    assert xs.shape == (2, 8, 2) and bool(torch.isfinite(xs).all())
    assert rsde.nfe > 0


def test_image_shaped_score_through_raw_torchsde():
    sde = sg.VPSDE()
    data = sg.analytic.Gaussian(torch.zeros(16), 0.5 * torch.eye(16), event_shape=(1, 4, 4))
    rsde = sg.ReverseSDE(sde, data.score_fn(sde), data_shape=(1, 4, 4))
    xT = torch.randn(3, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    us = rsde.solver_times(torch.tensor([1.0, 1e-3], dtype=F64))
    xs = torchsde.sdeint(rsde, xT, us, method="euler", dt=0.05)
    assert xs.shape == (2, 3, 16)


def test_pf_ode_with_raw_torchdiffeq_decreasing_time():
    """The PF-ODE maps the exact prior's sample to data; its velocity is f - g^2 s / 2."""
    sde, data = sg.VESDE(sigma_max=5.0), _data()
    ode = sg.ProbabilityFlowODE(sde, data.score_fn(sde))
    x = data.sample(4, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    assert torch.allclose(ode(t, x), -0.5 * sde.g2(0.4) * data.score(x, 0.4, sde))
    xT = data.prior(sde).sample(4, generator=torch.Generator().manual_seed(2), dtype=F64)
    ts = torch.tensor([1.0, 0.5, 1e-2], dtype=F64)
    out = torchdiffeq.odeint(ode, xT, ts, method="dopri5", rtol=1e-6, atol=1e-6)
    assert out.shape == (3, 4, 2) and bool(torch.isfinite(out).all())


def test_non_finite_score_is_reported_with_time():
    sde = sg.VPSDE()

    def bad_score(x, t):
        return torch.full_like(x, float("nan"))

    rsde = sg.ReverseSDE(sde, bad_score, check_finite="step")  # raise at the bad evaluation
    with pytest.raises(sg.NonFiniteError, match="t=0.7"):
        rsde.f(torch.tensor(0.3, dtype=F64), torch.zeros(2, 2, dtype=F64))
    ode = sg.ProbabilityFlowODE(sde, bad_score, check_finite="step")
    with pytest.raises(sg.NonFiniteError, match="score_fn"):
        ode(torch.tensor(0.5), torch.zeros(2, 2))
    # default "end": evaluations record a device-side flag; the check names the first bad time
    good_then_bad = sg.ReverseSDE(sde, lambda x, t: x * (1.0 if float(t) > 0.5 else float("-inf")))
    good_then_bad.f(torch.tensor(0.2, dtype=F64), torch.ones(2, 2, dtype=F64))  # t = 0.8: finite
    good_then_bad.raise_if_nonfinite()  # nothing bad so far
    good_then_bad.f(torch.tensor(0.3, dtype=F64), torch.ones(2, 2, dtype=F64))  # t = 0.7: finite
    good_then_bad.f(torch.tensor(0.6, dtype=F64), torch.ones(2, 2, dtype=F64))  # t = 0.4: -inf
    good_then_bad.f(torch.tensor(0.7, dtype=F64), torch.ones(2, 2, dtype=F64))  # t = 0.3: -inf
    with pytest.raises(sg.NonFiniteError, match=r"t=0\.4 \(evaluation 2 of 3\)"):
        good_then_bad.raise_if_nonfinite()
    good_then_bad.raise_if_nonfinite()  # the records were consumed


def test_bad_construction():
    with pytest.raises(TypeError, match="sde"):
        sg.ReverseSDE("vp", lambda x, t: x)
    with pytest.raises(TypeError, match="score_fn"):
        sg.ReverseSDE(sg.VPSDE(), None)
    with pytest.raises(ValueError, match="sde_type"):
        sg.ReverseSDE(sg.VPSDE(), lambda x, t: x, sde_type="strat")
    with pytest.raises(ValueError, match="data_shape"):
        sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: x, data_shape=(0, 2))
    rsde = sg.ReverseSDE(sg.VPSDE(), lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match="score_fn returned shape"):
        rsde.f(torch.tensor(0.1), torch.zeros(2, 2))

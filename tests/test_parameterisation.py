"""Score / eps / x0 / v conversions: round trips, Tweedie against the exact posterior mean."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdesolve_gen as sg
from sdesolve_gen.parameterisation import PARAMETERISATIONS, ScoreModel, convert, from_score, to_score

F64 = torch.float64


@given(
    alpha=st.floats(1e-3, 1.0),
    sigma=st.floats(1e-3, 50.0),
    src=st.sampled_from(PARAMETERISATIONS),
    dst=st.sampled_from(PARAMETERISATIONS),
    seed=st.integers(0, 1000),
)
def test_round_trips(alpha, sigma, src, dst, seed):
    """convert(src -> dst -> src) is the identity, and to_score inverts from_score (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    pred = torch.randn(4, 3, generator=g, dtype=F64)
    back = convert(convert(pred, src, dst, x, alpha, sigma), dst, src, x, alpha, sigma)
    assert torch.allclose(back, pred, rtol=1e-8, atol=1e-8 * (1 + pred.abs().max()))
    s = torch.randn(4, 3, generator=g, dtype=F64)
    assert torch.allclose(to_score(from_score(s, dst, x, alpha, sigma), dst, x, alpha, sigma), s, rtol=1e-8, atol=1e-9 * (1 + 1 / sigma**2))


def test_definitions_on_a_known_decomposition():
    """With x = alpha x0 + sigma eps and the conditional score -eps/sigma, every kind is what it says."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    alpha = torch.rand(5, generator=g, dtype=F64) + 0.1
    sigma = torch.rand(5, generator=g, dtype=F64) + 0.1
    a, s = alpha[:, None], sigma[:, None]
    x = a * x0 + s * eps
    score = -eps / s
    assert torch.allclose(from_score(score, "eps", x, alpha, sigma), eps)
    assert torch.allclose(from_score(score, "x0", x, alpha, sigma), x0)
    assert torch.allclose(from_score(score, "v", x, alpha, sigma), a * eps - s * x0)


def test_tweedie_gives_exact_posterior_mean():
    """x0_hat from the exact score equals E[x0 | x_t] = mu + a S (a^2 S + s^2 I)^-1 (x - a mu)."""
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[0.7, 0.3], [0.3, 0.4]], dtype=F64)
    data = sg.analytic.Gaussian(mean, cov)
    sde = sg.VPSDE()
    t = 0.4
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    x = data.marginal(t, sde).sample(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    x0_hat = from_score(data.score(x, t, sde), "x0", x, a, s)
    K = a * cov @ torch.linalg.inv(a * a * cov + s * s * torch.eye(2, dtype=F64))
    post = mean + (x - a * mean) @ K.T
    assert torch.allclose(x0_hat, post, rtol=1e-10)
    # control: dropping the sigma^2 factor (a classic bug) is not the posterior mean
    assert not torch.allclose((x + data.score(x, t, sde)) / a, post, rtol=1e-3)


@pytest.mark.parametrize("kind", PARAMETERISATIONS)
def test_score_model_wraps_any_parameterisation(kind):
    """A 'network' that outputs the exact quantity of each kind yields the exact score."""
    data = sg.analytic.Gaussian(torch.zeros(3), torch.eye(3) * 0.5, event_shape=(1, 3))
    sde = sg.SubVPSDE()

    def net(x, t):
        alpha = torch.exp(sde.log_alpha(t.double()))
        sigma = torch.sqrt(sde.sigma2(t.double()))
        return from_score(data.score(x, t.double(), sde), kind, x, alpha, sigma)

    model = ScoreModel(net, sde, kind)
    x = data.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=F64)
    assert torch.allclose(model(x, t), data.score(x, t, sde), rtol=1e-9)
    assert torch.allclose(model(x, 0.3), data.score(x, 0.3, sde), rtol=1e-9)


def test_bad_inputs():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="kind"):
        to_score(x, "noise", x, 1.0, 1.0)
    with pytest.raises(TypeError, match="kind"):
        from_score(x, 3, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="dst"):
        convert(x, "eps", "velocity", x, 1.0, 1.0)
    with pytest.raises(TypeError, match="alpha"):
        to_score(x, "x0", x, "1", 1.0)
    with pytest.raises(TypeError, match="net"):
        ScoreModel(3, sg.VPSDE())
    with pytest.raises(TypeError, match="sde"):
        ScoreModel(lambda x, t: x, "vp")
    with pytest.raises(ValueError, match="parameterisation"):
        ScoreModel(lambda x, t: x, sg.VPSDE(), "velocity")
    with pytest.raises(ValueError, match="net returned shape"):
        ScoreModel(lambda x, t: x[:, :1], sg.VPSDE())(x, 0.5)

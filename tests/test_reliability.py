"""Reliability catalogue: bad inputs across the public API.

Each entry is one distinct misuse; the test asserts the exception type AND that the message names
the offending argument (or, for NaN during a solve, the time at which it happened).
"""

from __future__ import annotations

import math
from typing import Callable, List, Tuple, Type

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen.analytic import Gaussian, GaussianMixture
from sdesolve_gen.samplers import SAMPLERS

F64 = torch.float64
Case = Tuple[str, Callable[[], object], Type[BaseException], str]

_I2 = [[1.0, 0.0], [0.0, 1.0]]


def _gauss() -> Gaussian:
    return Gaussian(torch.zeros(2), torch.eye(2))


def _nan_score(x, t):
    return torch.full_like(x, float("nan"))


CASES: List[Case] = [
    # ---- schedules
    ("vp-negative-beta-min", lambda: sg.VPSDE(beta_min=-1.0), ValueError, "beta_min"),
    ("vp-beta-max-below-min", lambda: sg.VPSDE(beta_min=2.0, beta_max=1.0), ValueError, "beta_max"),
    ("ve-zero-sigma-min", lambda: sg.VESDE(sigma_min=0.0), ValueError, "sigma_min"),
    ("ve-sigma-max-not-above-min", lambda: sg.VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
    ("ve-string-sigma", lambda: sg.VESDE(sigma_max="50"), TypeError, "sigma_max"),
    ("zero-T", lambda: sg.VPSDE(T=0.0), ValueError, "T"),
    ("eps-not-below-T", lambda: sg.VPSDE(eps=1.0), ValueError, "eps"),
    ("cosine-T-at-singularity", lambda: sg.CosineVPSDE(T=1.0), ValueError, "T"),
    # ---- times
    ("t-above-T", lambda: sg.VPSDE().alpha(1.5), ValueError, "t must lie"),
    ("t-negative", lambda: sg.VESDE().sigma(torch.tensor([-0.1, 0.2])), ValueError, "t must lie"),
    ("t-2d", lambda: sg.VPSDE().sigma(torch.zeros(2, 2)), ValueError, "t must be a scalar or a 1-D"),
    ("t-nan", lambda: sg.VPSDE().alpha(float("nan")), ValueError, "t must be finite"),
    ("t-string", lambda: sg.VPSDE().alpha("0.5"), TypeError, "t must be"),
    ("t-batch-mismatch", lambda: sg.VPSDE().marginal(torch.zeros(3, 2), torch.tensor([0.1, 0.2])), ValueError, "batch"),
    # ---- states
    ("x0-not-tensor", lambda: sg.VPSDE().marginal([[0.0, 0.0]], 0.5), TypeError, "x0"),
    ("x0-integer-dtype", lambda: sg.VPSDE().marginal(torch.zeros(2, 2, dtype=torch.long), 0.5), TypeError, "x0"),
    ("x-1d-prior-logprob", lambda: sg.VPSDE().prior_log_prob(torch.zeros(3)), ValueError, "x must have shape"),
    ("prior-sample-bad-shape", lambda: sg.VPSDE().prior_sample((4,)), ValueError, "shape"),
    # ---- analytic oracles
    ("gmm-not-pd", lambda: GaussianMixture([[0.0, 0.0]], [[[1.0, 0.0], [0.0, 0.0]]]), ValueError, "positive definite"),
    ("gmm-weights-sum", lambda: GaussianMixture([[0.0, 0.0]] * 2, [_I2] * 2, [0.7, 0.7]), ValueError, "weights must sum to 1"),
    ("gmm-dims-mismatch", lambda: GaussianMixture([[0.0, 0.0, 0.0]], [_I2]), ValueError, "covs must have shape"),
    ("gmm-nan-mean", lambda: GaussianMixture([[float("nan"), 0.0]], [_I2]), ValueError, "means"),
    ("gauss-x-wrong-shape", lambda: _gauss().log_prob(torch.zeros(5, 3)), ValueError, "x must have shape"),
    ("gauss-sample-zero", lambda: _gauss().sample(0), ValueError, "n must be"),
    # ---- parameterisations
    ("unknown-parameterisation", lambda: sg.to_score(torch.zeros(1, 1), "noise", torch.zeros(1, 1), 1.0, 1.0), ValueError, "kind"),
    ("score-model-not-callable", lambda: sg.ScoreModel(None, sg.VPSDE()), TypeError, "net"),
    # ---- reverse-time objects
    ("reverse-sde-not-linear", lambda: sg.ReverseSDE(object(), lambda x, t: x), TypeError, "sde"),
    ("reverse-sde-bad-type", lambda: sg.ReverseSDE(sg.VPSDE(), lambda x, t: x, sde_type="ito2"), ValueError, "sde_type"),
    ("score-wrong-shape", lambda: sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: x.sum(1))(torch.tensor(0.5), torch.zeros(2, 2)), ValueError, "score_fn returned shape"),
    ("nan-score-during-solve", lambda: sg.ReverseSDE(sg.VPSDE(), _nan_score, check_finite="step").f(torch.tensor(0.25, dtype=F64), torch.zeros(2, 2)), sg.NonFiniteError, "t=0.75"),
    ("nan-score-in-em-sampler-named-at-the-end", lambda: sg.euler_maruyama(sg.VPSDE(), _nan_score, torch.zeros(2, 2), sg.timesteps(sg.VPSDE(), 4)), sg.NonFiniteError, "t=1 "),
]


def _ts():
    return sg.timesteps(sg.VPSDE(), 4)


def _rsde():
    return sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x)


def _truncated_checkpoint():
    import tempfile
    from pathlib import Path

    from sdesolve_gen.train import Trainer

    d = Path(tempfile.mkdtemp())
    tr = Trainer(sg.ScoreModel(sg.MLPScoreNet(2, hidden=8, depth=1), sg.VPSDE()), sg.VPSDE(), torch.randn(8, 2),
                 batch_size=4, checkpoint_dir=d)
    tr.train(1)
    raw = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(raw[: len(raw) // 3])
    return sg.load_checkpoint(d / "checkpoint.pt")


def _cli(*argv):
    from sdesolve_gen.cli import main

    code = main(list(argv))
    if code == 2:
        raise SystemExit(2)
    return code


CASES += [
    # ---- solvers
    ("sdeint-increasing-ts-for-reverse", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts().flip(0)), ValueError, "decreasing"),
    ("sdeint-zero-dt", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts(), dt=0.0), ValueError, "dt"),
    ("sdeint-unknown-method", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts(), method="rk45"), ValueError, "method"),
    ("sdeint-strat-method-on-ito", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts(), method="heun"), ValueError, "Stratonovich"),
    ("odeint-non-monotone", lambda: sg.odeint(sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), torch.tensor([1.0, 0.2, 0.5])), ValueError, "monotone"),
    ("odeint-unknown-option", lambda: sg.odeint(sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), options={"stepsize": 1}), ValueError, "options"),
    ("timesteps-zero-steps", lambda: sg.timesteps(sg.VPSDE(), 0), ValueError, "n must be"),
    # ---- samplers
    ("sampler-nan-prior-sample", lambda: sg.heun(sg.VPSDE(), lambda x, t: -x, torch.full((2, 2), float("nan")), _ts()), ValueError, "x_T"),
    ("sampler-ts-outside", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), torch.tensor([3.0, 0.1])), ValueError, r"\(0, T\]"),
    ("dpm-solver-order-4", lambda: sg.dpm_solver(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), order=4), ValueError, "order"),
    ("pc-unknown-predictor", lambda: sg.predictor_corrector(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), predictor="rk4"), ValueError, "predictor"),
    ("nan-score-in-sampler", lambda: sg.dpm_solver(sg.VPSDE(), _nan_score, torch.zeros(2, 2), _ts()), sg.NonFiniteError, "t=1"),
    # ---- likelihood
    ("likelihood-zero-probes", lambda: sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), divergence="hutchinson", n_probes=0), ValueError, "n_probes"),
    ("likelihood-nan-data", lambda: sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.full((2, 2), float("nan"))), ValueError, "x"),
    ("likelihood-unknown-divergence", lambda: sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), divergence="trace"), ValueError, "divergence"),
    # ---- training and checkpoints
    ("truncated-checkpoint", _truncated_checkpoint, ValueError, "corrupt or truncated"),
    ("missing-checkpoint", lambda: sg.load_checkpoint("/nonexistent/dir/checkpoint.pt"), FileNotFoundError, "checkpoint not found"),
    ("trainer-zero-batch", lambda: sg.Trainer(sg.ScoreModel(sg.MLPScoreNet(2), sg.VPSDE()), sg.VPSDE(), torch.zeros(4, 2), batch_size=0), ValueError, "batch_size"),
    ("dsm-unknown-weighting", lambda: sg.dsm_loss(lambda x, t: x, sg.VPSDE(), torch.zeros(4, 2), weighting="snr"), ValueError, "weighting"),
    # ---- custom schedules are checked at construction (alpha > 0, sigma > 0, g^2 >= 0, tensor callables)
    ("custom-sde-decreasing-sigma", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t), sigma=lambda t: 2.0 - t), ValueError, "g\\(t\\)\\^2"),
    ("custom-sde-math-callable", lambda: sg.LinearSDE(alpha=lambda t: math.cos(t), sigma=lambda t: math.sin(t)), TypeError, "alpha must map"),
    ("custom-sde-negative-alpha", lambda: sg.LinearSDE(alpha=lambda t: 0.5 - t, sigma=lambda t: 0.01 + t), ValueError, "alpha\\(t\\) must be finite and > 0"),
    ("custom-sde-zero-sigma", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t), sigma=lambda t: 0.0 * t), ValueError, "sigma\\(t\\) must be finite and > 0"),
    ("custom-sde-scalar-output", lambda: sg.LinearSDE(alpha=lambda t: torch.ones(()), sigma=lambda t: 0.01 + t), TypeError, "alpha must return a tensor of the input's shape"),
    ("custom-sde-nan-sigma", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t), sigma=lambda t: torch.sqrt(t - 0.5)), ValueError, "sigma\\(t\\) must be finite"),
    # ---- the registry
    ("registry-unknown-sampler", lambda: SAMPLERS["rk45"], KeyError, "unknown sampler 'rk45'"),
    ("registry-nfe-below-one-step", lambda: SAMPLERS["dpm_solver3"].steps_for(2), ValueError, "nfe=2"),
    ("registry-nfe-of-adaptive", lambda: SAMPLERS["ode"].nfe(10), ValueError, "adaptive"),
    ("registry-steps-bool", lambda: SAMPLERS["heun"].nfe(True), ValueError, "n_steps"),
    ("registry-nfe-float", lambda: SAMPLERS["heun"].steps_for(10.0), TypeError, "nfe"),
    # ---- common sampler options
    ("sampler-model-kwargs-not-mapping", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), model_kwargs=[1]), TypeError, "model_kwargs"),
    ("sampler-model-kwargs-bad-key", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), model_kwargs={"not a name": 1}), ValueError, "model_kwargs"),
    ("sampler-callback-not-callable", lambda: sg.heun(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), callback=1), TypeError, "callback"),
    ("sampler-check-finite-unknown", lambda: sg.ancestral(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), check_finite="sometimes"), ValueError, "check_finite"),
    ("sampler-differentiable-not-bool", lambda: sg.ancestral(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), differentiable="yes"), TypeError, "differentiable"),
    ("sampler-generator-on-other-device", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2, device="meta"), _ts(), generator=torch.Generator()), ValueError, "generator"),
    ("sampler-increasing-ts", lambda: sg.dpm_solver_pp_2m(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts().flip(0)), ValueError, "ts must be strictly decreasing"),
    ("sampler-ts-past-T", lambda: sg.dpm_solver_pp_2m(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), torch.tensor([2.0, 0.5], dtype=F64)), ValueError, "ts must lie in"),
    ("sampler-score-wrong-shape", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: x[:, :1], torch.zeros(2, 2), _ts()), ValueError, "score_fn returned shape"),
    ("sampler-score-not-tensor", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: 0.0, torch.zeros(2, 2), _ts()), ValueError, "score_fn returned shape"),
    ("sampler-callback-raises", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), callback=lambda d: 1 / 0), ValueError, "callback raised ZeroDivisionError"),
    ("sampler-kwargs-not-accepted", lambda: sg.euler_maruyama(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), _ts(), model_kwargs={"y": 1}), TypeError, "model_kwargs"),
    # ---- sdeint / odeint outputs
    ("sdeint-save-unknown", lambda: sg.sdeint(sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), save="some"), ValueError, "save"),
    ("sdeint-save-out-of-range", lambda: sg.sdeint(sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), save=[0, 99]), ValueError, "save"),
    ("sdeint-save-not-increasing", lambda: sg.sdeint(sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), save=[2, 1]), ValueError, "save"),
    ("sdeint-callback-adaptive", lambda: sg.sdeint(sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), adaptive=True, callback=print), ValueError, "callback"),
    ("odeint-method-not-string", lambda: sg.odeint(sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), method=5), TypeError, "method"),
    ("odeint-empty-tuple-state", lambda: sg.odeint(lambda t, x: x, (), _ts()), ValueError, "x0"),
    ("odeint-unknown-torchdiffeq-method", lambda: sg.odeint(sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: -x), torch.zeros(2, 2), _ts(), method="rk45"), ValueError, "rk45"),
    ("reverse-sde-ts-increasing", lambda: sg.ReverseSDE(sg.VPSDE(), lambda x, t: -x).solver_times(torch.tensor([0.1, 0.5], dtype=F64)), ValueError, "strictly decreasing"),
    # ---- conditioning
    ("label-guidance-float-label", lambda: sg.label_guidance(lambda x, t, y: x, torch.tensor([0.5]), 1.0, null_label=3, num_classes=3), TypeError, "y must be an integer tensor"),
    ("label-guidance-label-out-of-range", lambda: sg.label_guidance(lambda x, t, y: x, 5, 1.0, null_label=3, num_classes=3), ValueError, "y must be in"),
    ("label-guidance-null-is-a-class", lambda: sg.label_guidance(lambda x, t, y: x, 0, 1.0, null_label=2, num_classes=3), ValueError, "null_label"),
    ("label-guidance-nan-scale", lambda: sg.label_guidance(lambda x, t, y: x, 0, float("nan"), null_label=3, num_classes=3), ValueError, "scale"),
    ("unet-float-labels", lambda: sg.UNet(in_channels=1, base=8, num_classes=3)(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), y=torch.tensor([0.0, 1.0])), ValueError, "y must be an integer tensor"),
    ("calibrate-stochastic-sampler", lambda: sg.samplers.calibrate_timesteps(sg.VPSDE(), lambda x, t: -x, "euler_maruyama", 10, torch.zeros(4, 2)), ValueError, "deterministic"),
    # ---- command line (exit code 2, message on stderr)
    ("cli-unknown-sampler", lambda: _cli("sample", "--checkpoint", "/nonexistent", "--sampler", "rk45"), SystemExit, "2"),
    ("cli-negative-n", lambda: _cli("sample", "--checkpoint", "/nonexistent", "-n", "-5"), SystemExit, "2"),
]


@pytest.mark.parametrize("name, call, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_named_argument(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_catalogue_has_distinct_entries():
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names)

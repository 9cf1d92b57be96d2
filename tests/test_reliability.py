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
    """A file written by the trainer's own writer (``checkpoints.atomic_save``), cut to a third.

    (Building it through ``Trainer`` would import torch._dynamo with the first optimiser: ~10 s.)"""
    import tempfile
    from pathlib import Path

    from sdesolve_gen.checkpoints import atomic_save

    d = Path(tempfile.mkdtemp())
    atomic_save({"format": 1, "model": sg.MLPScoreNet(2, hidden=8, depth=1).state_dict()}, d / "checkpoint.pt")
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
    ("pf-data-shape-mismatch", lambda: sg.ProbabilityFlowODE(sg.VPSDE(), lambda x, t: -x, data_shape=(3,))(torch.tensor(0.5, dtype=torch.float64), torch.zeros(4, 2)), ValueError, "data_shape"),
    ("gaussian-cov-not-symmetric", lambda: sg.analytic.Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])), ValueError, "cov must be symmetric"),
    ("gaussian-cov-not-pd", lambda: sg.analytic.Gaussian(torch.zeros(2), -torch.eye(2)), ValueError, "cov must be positive definite"),
    ("label-guidance-negative-null-label", lambda: sg.guidance.label_guidance(lambda x, t, y: -x, 0, 1.0, null_label=-1, num_classes=10), ValueError, "null_label"),
    ("sdeint-unknown-option", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts(), bogus_option=1), TypeError, "bogus_option"),
    ("sdeint-negative-seed", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2), _ts(), seed=-1), ValueError, "seed"),
    ("likelihood-step-size-with-adaptive", lambda: sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), method="dopri5", step_size=0.1), ValueError, "step_size"),
    ("bpd-nan-log-prob", lambda: sg.bits_per_dim(torch.tensor([float("nan")]), 2), ValueError, "log_prob"),
    ("bpd-plus-inf-log-prob", lambda: sg.bits_per_dim(torch.tensor([float("inf")]), 2), ValueError, "log_prob"),
    ("ema-decay-above-one", lambda: sg.EMA(torch.nn.Linear(1, 1), 2.0), ValueError, "decay"),
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



# ================================================================================================
# The validation layer (sdesolve_gen/_checks.py) on every public entry point, by class.


def _vp():
    return sg.VPSDE()


def _x(b=4, d=2):
    return torch.zeros(b, d)


def _neg(x, t):
    return -x


def _trainer(**kw):
    kw.setdefault("batch_size", 2)
    return sg.Trainer(sg.ScoreModel(sg.MLPScoreNet(2, hidden=8, depth=1), _vp()), _vp(), torch.zeros(4, 2), **kw)


class _PriorB1:
    """A custom prior whose log_prob returns (B, 1) instead of (B,)."""

    def log_prob(self, z):
        return torch.zeros(z.shape[0], 1, dtype=z.dtype)


class _PriorOK:
    def log_prob(self, z):
        return -0.5 * z.flatten(1).pow(2).sum(1) - 0.5 * z[0].numel() * math.log(2 * math.pi)


CASES += [
    # ---- bools refused where an int is expected
    ("bool-dpm-order", lambda: sg.dpm_solver(_vp(), _neg, _x(), _ts(), order=True), TypeError, "order must be an int"),
    ("bool-sample-time-n", lambda: sg.losses.sample_time(_vp(), True), TypeError, "n must be an int"),
    ("bool-mlp-dim", lambda: sg.MLPScoreNet(True), TypeError, "dim must be an int"),
    ("bool-mlp-depth", lambda: sg.MLPScoreNet(2, depth=False), TypeError, "depth must be an int"),
    ("bool-unet-base", lambda: sg.UNet(base=True), TypeError, "base must be an int"),
    ("bool-two-moons", lambda: sg.data.two_moons(True), TypeError, "n_per_moon must be an int"),
    ("bool-ssm-projections", lambda: sg.sliced_score_matching_loss(lambda x: -x, _x(), n_projections=True), TypeError, "n_projections"),
    ("bool-adaptive-max-steps", lambda: sg.adaptive_sde(_vp(), _neg, _x(), _ts(), max_steps=True), TypeError, "max_steps"),
    ("bool-to-range-levels", lambda: sg.data.to_range(torch.zeros(2), (0, 1), n_levels=True), TypeError, "n_levels"),
    ("bool-sdeint-adaptive-int", lambda: sg.sdeint(_rsde(), _x(), _ts(), adaptive=1), TypeError, "adaptive must be a bool"),
    ("bool-dsm-reduce-string", lambda: sg.dsm_loss(_neg, _vp(), _x(), reduce="no"), TypeError, "reduce must be a bool"),
    ("bool-trainer-importance", lambda: _trainer(weighting="g2", importance_sampling=1), TypeError, "importance_sampling"),
    ("bool-heun-denoise-string", lambda: sg.heun(_vp(), _neg, _x(), _ts(), denoise="yes"), TypeError, "denoise must be a bool"),
    ("bool-sampler-progress-int", lambda: sg.euler_maruyama(_vp(), _neg, _x(), _ts(), progress=2), TypeError, "progress must be a bool"),
    ("bool-sdeint-progress-string", lambda: sg.sdeint(_rsde(), _x(), _ts(), progress="no"), TypeError, "progress must be a bool"),
    ("bool-odeint-record-times", lambda: sg.odeint(sg.ProbabilityFlowODE(_vp(), _neg), _x(), _ts(), record_times=1), TypeError, "record_times"),
    ("bool-pc-snr", lambda: sg.predictor_corrector(_vp(), _neg, _x(), _ts(), snr=True), TypeError, "snr"),
    # ---- non-finite / negative / zero floats and out-of-range probabilities
    ("float-trainer-grad-clip-negative", lambda: _trainer(grad_clip=-1.0), ValueError, "grad_clip"),
    ("float-trainer-grad-clip-nan", lambda: _trainer(grad_clip=float("nan")), ValueError, "grad_clip"),
    ("float-adaptive-theta-zero", lambda: sg.adaptive_sde(_vp(), _neg, _x(), _ts(), theta=0.0), ValueError, "theta"),
    ("float-adaptive-theta-above-one", lambda: sg.adaptive_sde(_vp(), _neg, _x(), _ts(), theta=1.5), ValueError, "theta"),
    ("float-adaptive-r-negative", lambda: sg.adaptive_sde(_vp(), _neg, _x(), _ts(), r=-0.5), ValueError, r"\br must"),
    ("float-pc-snr-inf", lambda: sg.predictor_corrector(_vp(), _neg, _x(), _ts(), snr=float("inf")), ValueError, "snr"),
    ("float-langevin-step-lr-zero", lambda: sg.annealed_langevin(_vp(), _neg, _x(), _ts(), step_lr=0.0), ValueError, "step_lr"),
    ("float-dsm-sigma-data-zero", lambda: sg.dsm_loss(_neg, _vp(), _x(), weighting="edm", sigma_data=0.0), ValueError, "sigma_data"),
    ("float-mlp-t-max-zero", lambda: sg.MLPScoreNet(2, t_max=0.0), ValueError, "t_max"),
    ("float-data-std-negative", lambda: sg.data.eight_gaussians(std=-0.1), ValueError, "std"),
    ("float-data-radius-nan", lambda: sg.data.eight_gaussians(radius=float("nan")), ValueError, "radius"),
    ("float-data-range-inf", lambda: sg.data.to_range(torch.zeros(2), (0, float("inf")), n_levels=4), ValueError, "data_range"),
    ("float-vp-beta-max-underflows", lambda: sg.VPSDE(beta_max=1e4), ValueError, "beta_max"),
    ("float-subvp-beta-max-underflows", lambda: sg.SubVPSDE(beta_max=1e5), ValueError, "beta_max"),
    ("float-trainer-eps-zero", lambda: _trainer(eps=0.0), ValueError, "eps"),
    ("float-sample-time-eps-bool", lambda: sg.losses.sample_time(_vp(), 4, eps=True), TypeError, "eps"),
    ("int-mlp-hidden-negative", lambda: sg.MLPScoreNet(2, hidden=-1), ValueError, "hidden"),
    ("int-unet-base-zero", lambda: sg.UNet(base=0), ValueError, "base"),
    ("int-unet-groupnorm-channels", lambda: sg.UNet(base=12), ValueError, "channel_mults"),
    ("int-unet-channel-mults-empty", lambda: sg.UNet(channel_mults=()), TypeError, "channel_mults"),
    ("int-two-moons-zero", lambda: sg.data.two_moons(0), ValueError, "n_per_moon"),
    ("int-swiss-roll-negative", lambda: sg.data.swiss_roll(-3), ValueError, r"\bn must"),
    ("int-from-range-one-level", lambda: sg.data.from_range(torch.zeros(2), (0, 1), n_levels=1), ValueError, "n_levels"),
    ("int-dpm-order-zero", lambda: sg.dpm_solver(_vp(), _neg, _x(), _ts(), order=0), ValueError, "order"),
    # ---- times outside [eps, T] (or where sigma(t) = 0)
    ("time-odeint-past-T", lambda: sg.odeint(sg.ProbabilityFlowODE(_vp(), _neg), _x(), torch.tensor([2.0, 0.5], dtype=F64)), ValueError, "ts must lie in"),
    ("time-odeint-below-zero", lambda: sg.odeint(sg.ProbabilityFlowODE(_vp(), _neg), _x(), torch.tensor([1.0, -0.5], dtype=F64)), ValueError, "ts must lie in"),
    ("time-sdeint-past-T", lambda: sg.sdeint(_rsde(), _x(), torch.tensor([2.0, 0.5], dtype=F64)), ValueError, "ts must lie in"),
    ("time-score-model-at-zero", lambda: sg.ScoreModel(sg.MLPScoreNet(2), _vp())(_x(), 0.0), ValueError, r"sigma\(t\) at the given t"),
    ("time-score-model-past-T", lambda: sg.ScoreModel(sg.MLPScoreNet(2), _vp())(_x(), 1.5), ValueError, "t must lie"),
    ("time-score-model-bool", lambda: sg.ScoreModel(sg.MLPScoreNet(2), _vp())(_x(), True), TypeError, "t must be"),
    ("time-dsm-fixed-t-zero", lambda: sg.dsm_loss(_neg, _vp(), _x(), t=torch.zeros(4)), ValueError, r"sigma\(t\) at the given t"),
    ("time-dsm-fixed-t-past-T", lambda: sg.dsm_loss(_neg, _vp(), _x(), t=torch.full((4,), 1.5)), ValueError, "t must lie"),
    ("time-to-score-sigma-zero", lambda: sg.to_score(_x(), "eps", _x(), 1.0, 0.0), ValueError, "sigma must be finite and > 0"),
    ("time-to-score-sigma-negative", lambda: sg.to_score(_x(), "x0", _x(), 1.0, torch.full((4,), -1.0)), ValueError, "sigma must be"),
    ("time-from-score-alpha-zero", lambda: sg.from_score(_x(), "x0", _x(), 0.0, 1.0), ValueError, "alpha must be"),
    ("time-sampler-ts-at-zero", lambda: sg.heun(_vp(), _neg, _x(), torch.tensor([1.0, 0.0], dtype=F64)), ValueError, r"ts must lie in \(0, T\]"),
    ("time-timesteps-eps-nan", lambda: sg.timesteps(_vp(), 4, eps=float("nan")), ValueError, "eps"),
    # ---- shapes must match exactly (no broadcasting of user callables' outputs)
    ("shape-dsm-weighting-B1", lambda: sg.dsm_loss(_neg, _vp(), _x(), weighting=lambda t: torch.ones(t.shape[0], 1)), ValueError, "weighting returned shape"),
    ("shape-prior-log-prob-B1", lambda: sg.log_likelihood(_vp(), _neg, _x(), prior=_PriorB1()), ValueError, "prior.log_prob returned shape"),
    ("shape-cfg-cond-score-B1", lambda: sg.classifier_free_guidance(lambda x, t, y: x[:, :1], _neg, 0, 1.0)(_x(), torch.tensor(0.5)), ValueError, "cond_score_fn returned shape"),
    ("shape-cfg-uncond-score", lambda: sg.classifier_free_guidance(lambda x, t, y: x, lambda x, t: x.sum(1), 0, 1.0)(_x(), torch.tensor(0.5)), ValueError, "uncond_score_fn returned shape"),
    ("shape-ism-score", lambda: sg.implicit_score_matching_loss(lambda x: x[:, :1], _x()), ValueError, "score_fn returned shape"),
    ("shape-ssm-score", lambda: sg.sliced_score_matching_loss(lambda x: x.sum(1), _x()), ValueError, "score_fn returned shape"),
    ("shape-mlp-t-B1", lambda: sg.MLPScoreNet(2)(_x(), torch.full((4, 1), 0.5)), ValueError, "t must have shape"),
    ("shape-mlp-t-wrong-batch", lambda: sg.MLPScoreNet(2)(_x(), torch.full((3,), 0.5)), ValueError, "t must have shape"),
    ("shape-unet-t-wrong-batch", lambda: sg.UNet(base=8)(torch.zeros(2, 1, 8, 8), torch.full((3,), 0.5)), ValueError, "t must have shape"),
    ("shape-to-score-pred-vs-x", lambda: sg.to_score(torch.zeros(4, 1), "eps", _x(), 1.0, 1.0), ValueError, "pred has shape"),
    ("shape-from-score-score-vs-x", lambda: sg.from_score(torch.zeros(4, 3), "eps", _x(), 1.0, 1.0), ValueError, "score has shape"),
    ("shape-unet-label-out-of-range", lambda: sg.UNet(base=8, num_classes=3)(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), y=torch.tensor([0, 7])), ValueError, "y must lie in"),
    # ---- devices and dtypes consistent
    ("device-score-output", lambda: sg.euler_maruyama(_vp(), lambda x, t: torch.zeros(2, 2, device="meta"), torch.zeros(2, 2), _ts()), ValueError, "score_fn returned a tensor on meta"),
    ("dtype-score-output", lambda: sg.euler_maruyama(_vp(), lambda x, t: -x.double(), torch.zeros(2, 2), _ts()), TypeError, "score_fn returned dtype"),
    ("dtype-score-output-pf-ode", lambda: sg.ode(_vp(), lambda x, t: -x.double(), torch.zeros(2, 2), _ts()), TypeError, "score_fn returned dtype"),
    ("device-sdeint-generator", lambda: sg.sdeint(_rsde(), torch.zeros(2, 2, device="meta"), _ts(), generator=torch.Generator()), ValueError, "generator is on"),
    ("device-likelihood-generator", lambda: sg.log_likelihood(_vp(), _neg, torch.zeros(2, 2, device="meta"), divergence="hutchinson", generator=torch.Generator()), ValueError, "generator is on"),
    ("device-prior-sample-generator", lambda: _vp().prior_sample((2, 2), device="meta", generator=torch.Generator()), ValueError, "generator is on"),
    ("dtype-prior-sample-int", lambda: _vp().prior_sample((2, 2), dtype=torch.int64), TypeError, "dtype must be a floating"),
    ("dtype-timesteps-int", lambda: sg.timesteps(_vp(), 4, dtype=torch.int64), TypeError, "dtype must be a floating"),
    ("dtype-to-score-int-pred", lambda: sg.to_score(torch.zeros(4, 2, dtype=torch.long), "eps", _x(), 1.0, 1.0), TypeError, "pred"),
    # ---- empty batches refused clearly (before any work)
    ("empty-sdeint", lambda: sg.sdeint(_rsde(), torch.zeros(0, 2), _ts()), ValueError, "x0 must hold at least one sample"),
    ("empty-odeint", lambda: sg.odeint(sg.ProbabilityFlowODE(_vp(), _neg), torch.zeros(0, 2), _ts()), ValueError, "x0 must hold at least one sample"),
    ("empty-adaptive-sde", lambda: sg.adaptive_sde(_vp(), _neg, torch.zeros(0, 2), _ts()), ValueError, "x_T must hold at least one sample"),
    ("empty-euler-maruyama", lambda: sg.euler_maruyama(_vp(), _neg, torch.zeros(0, 2), _ts()), ValueError, "x_T must hold at least one sample"),
    ("empty-prior-log-prob", lambda: _vp().prior_log_prob(torch.zeros(0, 2)), ValueError, "x must hold at least one sample"),
    ("empty-dsm-loss", lambda: sg.dsm_loss(_neg, _vp(), torch.zeros(0, 2)), ValueError, "x0 must hold at least one sample"),
    ("empty-marginal", lambda: _vp().marginal(torch.zeros(0, 2), 0.5), ValueError, "x0 must hold at least one sample"),
    ("empty-likelihood", lambda: sg.log_likelihood(_vp(), _neg, torch.zeros(0, 2)), ValueError, "x must hold at least one sample"),
    ("empty-data-dimension", lambda: sg.euler_maruyama(_vp(), _neg, torch.zeros(3, 0), _ts()), ValueError, "x_T must hold"),
    # ---- data outside the declared data_range (bits/dim undefined there)
    ("range-likelihood-data-above", lambda: sg.log_likelihood(_vp(), _neg, torch.full((2, 2), 1.5), data_range=(0, 1)), ValueError, "outside data_range"),
    ("range-likelihood-data-below", lambda: sg.log_likelihood(_vp(), _neg, torch.full((2, 2), -1.5), data_range=(-1, 1)), ValueError, "outside data_range"),
    ("range-dataset-likelihood-data", lambda: sg.dataset_log_likelihood(_vp(), _neg, torch.full((2, 2), 2.0), data_range=(0, 1)), ValueError, "outside data_range"),
    ("range-likelihood-bad-range", lambda: sg.log_likelihood(_vp(), _neg, _x(), data_range=(1, 0)), ValueError, "data_range"),
    # ---- options that would be silently ignored
    ("ignored-rtol-odeint-fixed-step", lambda: sg.odeint(sg.ProbabilityFlowODE(_vp(), _neg), _x(), _ts(), method="rk4", rtol=1e-3), ValueError, "rtol only apply to adaptive methods"),
    ("ignored-atol-sampler-ode-fixed-step", lambda: sg.samplers.ode(_vp(), _neg, _x(), _ts(), method="euler", atol=1e-3), ValueError, "atol only apply to adaptive methods"),
    ("ignored-tols-likelihood-fixed-step", lambda: sg.log_likelihood(_vp(), _neg, _x(), method="rk4", rtol=1e-3, atol=1e-3), ValueError, "rtol/atol only apply"),
    ("ignored-tols-encode-fixed-step", lambda: sg.encode(_vp(), _neg, _x(), method="midpoint", rtol=1e-4), ValueError, "rtol only apply"),
    ("ignored-error-estimate-fixed-step", lambda: sg.log_likelihood(_vp(), _neg, _x(), method="rk4", error_estimate=True), ValueError, "error_estimate needs an adaptive method"),
    ("bool-likelihood-error-estimate", lambda: sg.log_likelihood(_vp(), _neg, _x(), error_estimate="yes"), TypeError, "error_estimate"),
    ("ignored-n-probes-with-exact", lambda: sg.log_likelihood(_vp(), _neg, _x(), divergence="exact", n_probes=5), ValueError, "n_probes only apply"),
    ("ignored-probe-kind-with-exact", lambda: sg.log_likelihood(_vp(), _neg, _x(), divergence="exact", probe="gaussian"), ValueError, "probe only apply"),
    ("ignored-sdeint-rtol-fixed-step", lambda: sg.sdeint(_rsde(), _x(), _ts(), rtol=1e-9), ValueError, "rtol/atol only apply"),
    ("ignored-trainer-importance-weighting", lambda: _trainer(importance_sampling=True), ValueError, "importance_sampling"),
    # ---- bad values from user callables
    ("callable-dsm-weighting-negative", lambda: sg.dsm_loss(_neg, _vp(), _x(), weighting=lambda t: -torch.ones_like(t)), ValueError, "weighting returned"),
    ("callable-dsm-weighting-nan", lambda: sg.dsm_loss(_neg, _vp(), _x(), weighting=lambda t: t * float("nan")), ValueError, "weighting returned"),
    ("callable-trainer-weighting-unknown", lambda: _trainer(weighting="snr"), ValueError, "weighting"),
    ("callable-trainer-eval-fn", lambda: _trainer(eval_fn=3, eval_every=1), TypeError, "eval_fn"),
    ("callable-ema-not-module", lambda: sg.EMA(None), TypeError, "model must be a torch.nn.Module"),
    ("callable-load-checkpoint-int-path", lambda: sg.load_checkpoint(3), TypeError, "path must be"),
    # ---- custom schedules
    ("custom-sde-prior-std-zero", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t), sigma=lambda t: 0.01 + t, prior_std=0.0), ValueError, "prior_std"),
    ("custom-sde-alpha-only", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t)), TypeError, "alpha and sigma"),
    ("custom-sde-not-callable", lambda: sg.LinearSDE(alpha=1.0, sigma=2.0), TypeError, "callables"),
    ("custom-sde-alpha-raises", lambda: sg.LinearSDE(alpha=lambda t: t.nonexistent(), sigma=lambda t: 0.01 + t), TypeError, "alpha must map"),
    ("custom-sde-sigma-inf", lambda: sg.LinearSDE(alpha=lambda t: torch.ones_like(t), sigma=lambda t: 1.0 / (1.0 - t)), ValueError, r"sigma\(t\) must be finite"),
    ("custom-sde-alpha-zero-at-T", lambda: sg.LinearSDE(alpha=lambda t: 1.0 - t, sigma=lambda t: 0.01 + t), ValueError, r"alpha\(t\) must be finite and > 0"),
    # ---- pretrained wrappers, helpers and solver plumbing
    ("pretrained-timestep-model-past-T", lambda: sg.TimestepModelScore(lambda x, t: x, sg.DiscreteVPSDE([0.99, 0.9, 0.5]))(_x(), 5.0), ValueError, "t must lie"),
    ("pretrained-timestep-model-t-zero", lambda: sg.TimestepModelScore(lambda x, t: x, sg.DiscreteVPSDE([0.99, 0.9, 0.5]))(_x(), 0.0), ValueError, "sigma must be finite and > 0"),
    ("pretrained-denoiser-sigma-zero", lambda: sg.DenoiserScore(lambda x, s: x, sg.EDMSDE())(_x(), 0.0), ValueError, "sigma must be finite and > 0"),
    ("pretrained-denoiser-t-batch", lambda: sg.DenoiserScore(lambda x, s: x, sg.EDMSDE())(_x(), torch.ones(3)), ValueError, "t has 3 times"),
    ("pretrained-model-output-channels-bool", lambda: sg.pretrained.model_output(_x(), _x(), channels=True), TypeError, "channels"),
    ("pretrained-scheduler-config-list", lambda: sg.pretrained.sde_from_scheduler_config([1]), TypeError, "config must be a mapping"),
    ("calibrate-rmse-shape-mismatch", lambda: sg.samplers.calibrate.trajectory_rmse(_x(), torch.zeros(4, 3), 1.0), ValueError, "ref has shape"),
    ("calibrate-rmse-alpha-zero", lambda: sg.samplers.calibrate.trajectory_rmse(_x(), _x(), 0.0), ValueError, "alpha"),
    ("pf-velocity-score-shape", lambda: sg.reverse.pf_velocity(_vp(), _x(), torch.zeros(4, 3), torch.tensor(0.5, dtype=F64)), ValueError, "score has shape"),
    ("tweedie-alpha-zero", lambda: sg.samplers.tweedie_x0(_x(), _x(), 0.0, 1.0), ValueError, "alpha must be"),
    ("t-of-lambda-nan", lambda: sg.integrate.t_of_lambda(_vp(), torch.tensor([float("nan")])), ValueError, "lam must not hold NaN"),
    ("t-of-lambda-not-sde", lambda: sg.integrate.t_of_lambda(None, torch.zeros(1)), TypeError, "sde must be a LinearSDE"),
    ("t-of-lambda-string", lambda: sg.integrate.t_of_lambda(_vp(), "0.5"), TypeError, "lam must be"),
    ("grid-brownian-negative-shape", lambda: sg.GridBrownian(torch.tensor([0.0, 1.0], dtype=F64), (-1, 2)), ValueError, r"shape\[0\]"),
    ("grid-brownian-int-dtype", lambda: sg.GridBrownian(torch.tensor([0.0, 1.0], dtype=F64), (2, 2), dtype=torch.int64), TypeError, "dtype"),
    ("checkpoint-temp-path-int", lambda: sg.checkpoints.temp_path(3), TypeError, "path must be"),
    # ---- command line misuse: exit code 2, no traceback
    ("cli-probes-with-exact", lambda: _cli("likelihood", "/nonexistent", "--probes", "4"), SystemExit, "2"),
    ("cli-ema-decay-inf", lambda: _cli("train", "--ema-decay", "inf"), SystemExit, "2"),
    ("cli-steps-zero", lambda: _cli("sample", "--checkpoint", "/nonexistent", "--steps", "0"), SystemExit, "2"),
    ("cli-seed-float", lambda: _cli("sample", "--checkpoint", "/nonexistent", "--seed", "1.5"), SystemExit, "2"),
]


@pytest.mark.parametrize("name, call, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_named_argument(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_catalogue_has_distinct_entries():
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names)


# ------------------------------------------------------------------------------------------------
# Options that would be ignored are refused, naming both arguments.

IGNORED_CASES: List[Tuple[str, Callable[[], object], str]] = [
    ("trainer-eval-every-without-eval-fn", lambda: _trainer(eval_every=5), "eval_every > 0 needs eval_fn"),
    ("trainer-checkpoint-every-without-dir", lambda: _trainer(checkpoint_every=5), "checkpoint_every > 0 needs checkpoint_dir"),
]


@pytest.mark.parametrize("name, call, match", IGNORED_CASES, ids=[c[0] for c in IGNORED_CASES])
def test_ignored_option_is_refused(name, call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------
# CLI misuse: exit code 2 and one line on stderr naming the argument, never a traceback.

CLI_CASES = [
    (("likelihood", "/nonexistent", "--probes", "4"), "--probes"),
    (("likelihood", "/nonexistent", "--divergence", "exact", "--probes", "2"), "--probes"),
    (("train", "--lr", "0"), "--lr"),
    (("train", "--batch-size", "0"), "--batch-size"),
    (("train", "--ema-decay", "nan"), "--ema-decay"),
    (("train", "--label-dropout", "inf"), "--label-dropout"),
    (("train", "--ckpt", "/nonexistent/ck", "--label-dropout", "0.3"), "--label-dropout"),  # without --conditional
]


@pytest.mark.parametrize("argv, arg", CLI_CASES, ids=["-".join(a[:1] + a[-2:]) for a, _ in CLI_CASES])
def test_cli_misuse_names_the_argument_without_traceback(argv, arg, capsys):
    from sdesolve_gen.cli import main

    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {arg}" in err
    assert "Traceback" not in err


def test_log_likelihood_refuses_a_score_of_another_dtype():
    """A float64 score on float32 data is a TypeError naming score_fn and both dtypes (the sampler
    rule, applied inside the likelihood's velocity too); the same score cast back is accepted."""
    sde = sg.VPSDE()
    score = _gauss().score_fn(sde)
    x = torch.randn(3, 2)
    with pytest.raises(TypeError, match=r"score_fn returned dtype torch.float64, expected x's dtype torch.float32"):
        sg.log_likelihood(sde, lambda y, t: score(y.double(), t), x)
    ok = sg.log_likelihood(sde, lambda y, t: score(y.double(), t).to(y.dtype), x)
    assert ok.log_prob.dtype == torch.float32 and bool(torch.isfinite(ok.log_prob).all())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_refuses_a_non_bool_denoise_before_the_first_score_call(name):
    """``denoise="yes"`` is a TypeError naming ``denoise`` with no score evaluation spent: it is
    checked when the run starts, not when the solve has finished."""
    spec, calls = SAMPLERS[name], []

    def score(x, t):
        calls.append(1)
        return -x

    sde = sg.VPSDE()
    gen = torch.Generator().manual_seed(0) if spec.stochastic else None
    with pytest.raises(TypeError, match="denoise"):
        spec(sde, score, torch.randn(3, 2), sg.timesteps(sde, 4), denoise="yes", generator=gen)
    assert calls == []


def test_cli_probes_are_accepted_with_hutchinson(capsys):
    """Legitimate: --probes with --divergence hutchinson passes the option check; the run then stops
    on the missing checkpoint (named), not on --probes."""
    from sdesolve_gen.cli import main

    code = main(["likelihood", "/nonexistent/dir", "--divergence", "hutchinson", "--probes", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "/nonexistent/dir" in err and "--probes" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# Legitimate edge cases that must keep working, with values from closed forms written here.


def _vp_alpha_sigma(t: float) -> Tuple[float, float]:
    """VP(beta_min=0.1, beta_max=20): B(t) = 0.1 t + 9.95 t^2, alpha = exp(-B/2), sigma^2 = 1 - exp(-B)."""
    B = 0.1 * t + 0.5 * 19.9 * t * t
    return math.exp(-B / 2), math.sqrt(-math.expm1(-B))


def test_legit_score_model_time_forms_agree_with_the_closed_form():
    torch.manual_seed(0)
    net = sg.MLPScoreNet(2, hidden=8, depth=1).double()
    model = sg.ScoreModel(net, _vp(), "eps")
    x = torch.randn(3, 2, dtype=F64)
    _, sigma = _vp_alpha_sigma(0.5)
    expected = -net(x, torch.full((3,), 0.5, dtype=F64)) / sigma
    for t in (0.5, torch.tensor(0.5), torch.full((3,), 0.5), torch.full((1,), 0.5)):
        torch.testing.assert_close(model(x, t), expected, rtol=1e-12, atol=0)
    # a 0-d time for the bare network means "the same time for every sample"
    torch.testing.assert_close(net(x, torch.tensor(0.5, dtype=F64)), net(x, torch.full((3,), 0.5, dtype=F64)), rtol=0, atol=0)


def test_legit_score_parameterisation_at_t_zero_and_broadcast_coefficients():
    x = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=F64)
    pred = torch.tensor([[0.2, 0.4], [-1.0, 3.0]], dtype=F64)
    # kind="score" never divides by sigma: sigma = 0 (t = 0 on VP) is fine
    assert torch.equal(sg.to_score(pred, "score", x, 1.0, 0.0), pred)
    # (B,) and (B, 1) coefficients are the documented broadcasting forms: -eps / sigma per row
    sig = torch.tensor([0.5, 2.0], dtype=F64)
    want = -pred / sig[:, None]
    torch.testing.assert_close(sg.to_score(pred, "eps", x, 1.0, sig), want, rtol=1e-15, atol=0)
    torch.testing.assert_close(sg.to_score(pred, "eps", x, 1.0, sig[:, None]), want, rtol=1e-15, atol=0)
    # round trip x0 -> score -> x0 with a (B,) alpha
    alpha = torch.tensor([0.9, 0.3], dtype=F64)
    back = sg.convert(sg.convert(pred, "x0", "v", x, alpha, sig), "v", "x0", x, alpha, sig)
    torch.testing.assert_close(back, pred, rtol=1e-12, atol=1e-12)


def test_legit_constant_weightings_and_numpy_scalars():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    def loss(weighting):
        return sg.dsm_loss(_neg, _vp(), x, weighting=weighting, generator=torch.Generator().manual_seed(2), reduce=False)
    base = loss("none")
    torch.testing.assert_close(loss(lambda t: 2.0), 2 * base, rtol=1e-12, atol=0)  # a number
    torch.testing.assert_close(loss(lambda t: torch.tensor(2.0)), 2 * base, rtol=1e-12, atol=0)  # a 0-d tensor
    torch.testing.assert_close(loss(lambda t: torch.full_like(t, 2.0)), 2 * base, rtol=1e-12, atol=0)  # (B,)
    # numpy scalars are ints / reals too (configs often hold them)
    import numpy as np

    ts = _ts()
    a = sg.dpm_solver(_vp(), _neg, torch.ones(2, 2, dtype=F64), ts, order=np.int64(2)).x
    b = sg.dpm_solver(_vp(), _neg, torch.ones(2, 2, dtype=F64), ts, order=2).x
    assert torch.equal(a, b)
    assert sg.losses.sample_time(_vp(), np.int64(0)).shape == (0,)  # zero draws is a valid request


def test_legit_vp_marginal_at_t_zero_and_a_steep_schedule_below_underflow():
    x0 = torch.tensor([[1.0, 2.0]], dtype=F64)
    mean, std = _vp().marginal(x0, 0.0)
    assert torch.equal(mean, x0) and float(std.max()) == 0.0  # the data law itself
    steep = sg.VPSDE(beta_max=1000.0)  # B(T)/2 = 250.025 < 700: representable, accepted
    assert math.isclose(float(steep.alpha(1.0)), math.exp(-0.5 * (0.1 + 0.5 * 999.9)), rel_tol=1e-12)


def test_legit_odeint_of_a_plain_function_is_not_held_to_an_sde_interval():
    """odeint checks [0, T] only for functions of a LinearSDE; dx/dt = -x on [0, 5] is e^{-5} x0."""
    x0 = torch.tensor([[1.0, -3.0]], dtype=F64)
    sol = sg.odeint(lambda t, x: -x, x0, torch.tensor([0.0, 5.0], dtype=F64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sol.x, x0 * math.exp(-5.0), rtol=1e-8, atol=0)
    # the PF-ODE on exactly [T, eps] and back on [eps, T] is accepted
    pf = sg.ProbabilityFlowODE(_vp(), _neg)
    sol = sg.odeint(pf, x0, torch.tensor([1.0, 1e-3], dtype=F64), method="rk4")
    assert sol.x.shape == x0.shape and bool(torch.isfinite(sol.x).all())
    sg.odeint(pf, x0, torch.tensor([1e-3, 1.0], dtype=F64), method="rk4")


def test_legit_custom_prior_and_data_on_the_range_boundary():
    """A user prior with log_prob -> (B,) equal to N(0, I) gives the standard prior's numbers
    exactly; data exactly on data_range's end points is inside the range."""
    data = Gaussian(torch.zeros(2, dtype=F64), 0.25 * torch.eye(2, dtype=F64))
    sde = _vp()
    x = torch.tensor([[-1.0, 1.0], [0.0, 0.5]], dtype=F64)
    a = sg.log_likelihood(sde, data.score_fn(sde), x, method="rk4", step_size=0.05)
    b = sg.log_likelihood(sde, data.score_fn(sde), x, method="rk4", step_size=0.05, prior=_PriorOK(), data_range=(-1, 1))
    torch.testing.assert_close(b.log_prob, a.log_prob, rtol=1e-12, atol=1e-12)
    assert b.bits_per_dim is not None and b.bits_per_dim.shape == (2,)


@pytest.mark.filterwarnings("ignore:Numerical solution is not guaranteed")  # torchsde's note on adaptive Euler
def test_legit_grad_clip_off_and_adaptive_tolerances():
    assert _trainer(grad_clip=None).grad_clip is None
    assert _trainer(grad_clip=0).grad_clip is None
    sol = sg.sdeint(_rsde(), torch.zeros(2, 2, dtype=F64), _ts(), adaptive=True, rtol=1e-2, atol=1e-2, seed=0)
    assert bool(torch.isfinite(sol.x).all())
    # the null label (num_classes) is a valid UNet label
    out = sg.UNet(base=8, num_classes=3)(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5), y=torch.tensor([3, 0]))
    assert out.shape == (2, 1, 8, 8)

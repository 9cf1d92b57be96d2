r"""Adapters that turn pretrained networks (diffusers UNets, EDM / k-diffusion denoisers) into scores.

Two calling conventions are covered; both give a module ``score(x, t, **model_kwargs)`` that
plugs into every sampler, :func:`~sdesolve_gen.sdeint`, the probability-flow ODE and
:func:`~sdesolve_gen.log_likelihood`.

**Timestep models** (:class:`TimestepModelScore`): ``model(x_t, timestep, **kwargs)``, as
diffusers' ``UNet2DModel`` / ``UNet2DConditionModel``, returning a tensor, a tuple whose first
entry is the prediction, or an object with ``.sample``. ``timestep`` is a ``(B,)`` tensor in the
model's dtype:

* ``timestep="discrete"`` (needs a :class:`~sdesolve_gen.DiscreteVPSDE`): the fractional
  training timestep :math:`\tau = N t - 1` (integer on diffusers' grids);
* ``timestep=c`` (a positive number): :math:`c\,t`, for continuous-time models (score_sde's VP
  models use :math:`c = 999`, its VE models are called with :math:`\sigma(t)` instead: use
  :class:`DenoiserScore` or a lambda).

``prediction_type`` is diffusers' name or ours: ``"epsilon"``/``"eps"``
(:math:`\hat\epsilon`), ``"v_prediction"``/``"v"`` (:math:`\hat v = \alpha\hat\epsilon - \sigma\hat x_0`),
``"sample"``/``"x0"`` (:math:`\hat x_0`), ``"score"``. The score follows from
:func:`~sdesolve_gen.parameterisation.to_score` with :math:`\alpha(t), \sigma(t)` of the SDE
(:math:`\alpha^2 = \bar\alpha`, :math:`\sigma^2 = 1-\bar\alpha` at the training timesteps).

**Denoisers** (:class:`DenoiserScore`): ``model(x, sigma, **kwargs)`` in the variance-exploding
variables of Karras et al. (EDM) and k-diffusion: with :math:`x_t = \alpha x_0 + \sigma n`,

.. math:: \tilde\sigma = \sigma/\alpha,\qquad \tilde x = x_t/\alpha,\qquad
          D(\tilde x, \tilde\sigma) \approx \mathbb E[x_0 \mid x_t],

so any linear SDE can drive a denoiser trained on :math:`x_0 + \tilde\sigma n`, and the score is
:math:`s = (\alpha D - x_t)/\sigma^2`. With ``preconditioning="edm"`` the network is the raw
:math:`F_\theta` of EDM and :math:`D = c_{skip}\tilde x + c_{out} F_\theta(c_{in}\tilde x, c_{noise})`
with :math:`c_{in} = 1/\sqrt{\tilde\sigma^2 + \sigma_d^2}`, :math:`c_{skip} = \sigma_d^2/(\tilde\sigma^2+\sigma_d^2)`,
:math:`c_{out} = \tilde\sigma\sigma_d/\sqrt{\tilde\sigma^2+\sigma_d^2}`, :math:`c_{noise} = \tfrac14\log\tilde\sigma`.
With ``preconditioning=None`` the model is already the full denoiser :math:`D` (k-diffusion's
wrapped models, which apply their own :math:`c_{in}`).

Model kwargs (class labels, ``encoder_hidden_states``) pass through ``model_kwargs`` of the
samplers to ``model(..., **kwargs)`` unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ._checks import TimeLike, as_time64, check_batch, check_int, check_model_time
from .discrete import DiscreteVPSDE
from .parameterisation import to_score
from .sde import LinearSDE, expand_to

Tensor = torch.Tensor

__all__ = ["PREDICTION_TYPES", "TimestepModelScore", "DenoiserScore", "sde_from_scheduler_config", "model_output"]

#: diffusers' ``prediction_type`` names (and ours) -> our parameterisation names.
PREDICTION_TYPES: Mapping[str, str] = {
    "epsilon": "eps", "v_prediction": "v", "sample": "x0",
    "eps": "eps", "v": "v", "x0": "x0", "score": "score",
}


def _prediction_kind(prediction_type: Any) -> str:
    if not isinstance(prediction_type, str) or prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {tuple(PREDICTION_TYPES)}, got {prediction_type!r}")
    return PREDICTION_TYPES[prediction_type]


def model_output(out: Any, x: Tensor, *, channels: Optional[int] = None) -> Tensor:
    """The prediction in a model's return value: a tensor, ``out.sample`` or ``out[0]``.

    Args:
        out: what the model returned.
        x: the model's input (the prediction must have its shape).
        channels: keep only the first ``channels`` channels (models that also output a learned
            variance return ``2C`` channels).

    Raises:
        TypeError: if no tensor can be found in ``out`` (names ``model``).
        ValueError: if the prediction's shape differs from ``x``'s (names ``model``).
    """
    pred = out
    if not isinstance(pred, Tensor):
        if hasattr(pred, "sample"):
            pred = pred.sample
        elif isinstance(pred, (tuple, list)) and pred:
            pred = pred[0]
    if not isinstance(pred, Tensor):
        raise TypeError(f"model must return a tensor, a tuple or an object with .sample, got {type(out).__name__}")
    if channels is not None:
        check_int("channels", channels, 1)
        pred = pred[:, :channels]
    if pred.shape != x.shape:
        raise ValueError(f"model returned shape {tuple(pred.shape)}, expected the input's shape {tuple(x.shape)}")
    return pred


def _model_dtype(model: Any, default: torch.dtype) -> torch.dtype:
    dt = getattr(model, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.dtype
    return default


class TimestepModelScore(nn.Module):
    r"""Score of a model called as ``model(x_t, timestep, **kwargs)`` (diffusers' UNets).

    Args:
        model: the network (see the module docstring for what it may return).
        sde: the SDE it was trained for; for ``timestep="discrete"`` a
            :class:`~sdesolve_gen.DiscreteVPSDE`.
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (or ``"eps"``, ``"v"``,
            ``"x0"``, ``"score"``).
        timestep: ``"discrete"`` (:math:`\tau = N t - 1`) or a positive scale ``c`` (:math:`c\,t`).
        num_train_timesteps: optional check: the model's training schedule length must equal the
            SDE's ``N`` (e.g. ``scheduler.config.num_train_timesteps``).
        learned_variance: the model returns ``2C`` channels (prediction, variance); use the first ``C``.

    The model runs in its own dtype (the input is cast to it and the prediction cast back);
    gradients flow through it, as :func:`~sdesolve_gen.log_likelihood` needs.

    Raises:
        ValueError: unknown ``prediction_type``; ``timestep="discrete"`` with an SDE that is not
            discrete; ``num_train_timesteps`` different from the SDE's; a non-positive scale.
        TypeError: ``model`` not callable, ``sde`` not a LinearSDE, ``timestep`` of another type.
    """

    def __init__(
        self, model: Callable[..., Any], sde: LinearSDE, prediction_type: str = "epsilon", *,
        timestep: Union[str, float] = "discrete", num_train_timesteps: Optional[int] = None,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, timestep, **kwargs), got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.kind = _prediction_kind(prediction_type)
        if isinstance(timestep, str):
            if timestep != "discrete":
                raise ValueError(f"timestep must be 'discrete' or a positive number, got {timestep!r}")
            if not isinstance(sde, DiscreteVPSDE):
                raise ValueError(
                    f"timestep='discrete' needs a DiscreteVPSDE (training timesteps), got {type(sde).__name__}; "
                    "pass timestep=<scale> for a continuous-time model"
                )
        elif isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
            raise TypeError(f"timestep must be 'discrete' or a positive number, got {type(timestep).__name__}")
        elif not (math.isfinite(timestep) and timestep > 0):
            raise ValueError(f"timestep scale must be a finite positive number, got {timestep!r}")
        if num_train_timesteps is not None:
            n_sde = getattr(sde, "num_train_timesteps", None)
            if n_sde is None:
                raise ValueError("num_train_timesteps given but the SDE is not a discrete schedule (DiscreteVPSDE)")
            if num_train_timesteps != n_sde:
                raise ValueError(
                    f"num_train_timesteps={num_train_timesteps} does not match the SDE's schedule of {n_sde} timesteps"
                )
        self.model = model
        self.sde = sde
        self.timestep = timestep
        self.learned_variance = bool(learned_variance)

    def model_timestep(self, t: Tensor) -> Tensor:
        """The timestep handed to the model at float64 times ``t``."""
        if self.timestep == "discrete":
            return self.sde.timestep_of(t)  # type: ignore[attr-defined]
        return t * float(self.timestep)

    def forward(self, x: Tensor, t: TimeLike, **kwargs: Any) -> Tensor:
        """Score at ``x`` (``(B, C, ...)``) and time ``t`` (float, 0-d or ``(B,)``); ``kwargs`` go to the model."""
        x = check_batch("x", x, min_dim=1)
        check_model_time(self.sde, t, x.shape[0])
        tt = as_time64(t).to(x.device)
        if tt.dim() == 0:
            tt = tt.expand(x.shape[0])
        dtype = _model_dtype(self.model, x.dtype)
        out = self.model(x.to(dtype), self.model_timestep(tt).to(dtype), **kwargs)
        pred = model_output(out, x, channels=x.shape[1] if self.learned_variance else None).to(x.dtype)
        alpha = torch.exp(self.sde.log_alpha(tt))
        sigma = torch.sqrt(self.sde.sigma2(tt))
        return to_score(pred, self.kind, x, alpha, sigma)


class DenoiserScore(nn.Module):
    r"""Score of a denoiser ``model(x, sigma, **kwargs)`` in EDM / k-diffusion variables.

    See the module docstring: the model sees :math:`\tilde x = x_t/\alpha` and
    :math:`\tilde\sigma = \sigma/\alpha` (a ``(B,)`` tensor in the model's dtype) and returns
    :math:`\hat x_0` (``preconditioning=None``) or EDM's raw :math:`F_\theta`
    (``preconditioning="edm"``, called as ``model(c_in x, c_noise)``).

    Args:
        model: the network.
        sde: any linear SDE (e.g. :class:`~sdesolve_gen.EDMSDE` for EDM's own schedule).
        preconditioning: ``None`` or ``"edm"``.
        sigma_data: :math:`\sigma_d` of EDM's preconditioning (default 0.5).

    Raises:
        ValueError: unknown ``preconditioning`` or non-positive ``sigma_data``.
        TypeError: ``model`` not callable or ``sde`` not a LinearSDE.
    """

    def __init__(self, model: Callable[..., Any], sde: LinearSDE, *, preconditioning: Optional[str] = None,
                 sigma_data: float = 0.5) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **kwargs), got {type(model).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        if preconditioning not in (None, "edm"):
            raise ValueError(f"preconditioning must be None or 'edm', got {preconditioning!r}")
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not (sigma_data > 0 and math.isfinite(sigma_data)):
            raise ValueError(f"sigma_data must be a finite positive number, got {sigma_data!r}")
        self.model, self.sde = model, sde
        self.preconditioning, self.sigma_data = preconditioning, float(sigma_data)

    def denoise(self, x_ve: Tensor, sigma_ve: Tensor, **kwargs: Any) -> Tensor:
        r""":math:`D(\tilde x, \tilde\sigma)` with ``sigma_ve`` of shape ``(B,)`` (float64)."""
        dtype = _model_dtype(self.model, x_ve.dtype)
        s = expand_to(sigma_ve, x_ve)
        if self.preconditioning is None:
            out = self.model(x_ve.to(dtype), sigma_ve.to(dtype), **kwargs)
            return model_output(out, x_ve).to(x_ve.dtype)
        sd2 = self.sigma_data**2
        c_in = 1.0 / torch.sqrt(s * s + sd2)
        c_skip = sd2 / (s * s + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s * s + sd2)
        c_noise = 0.25 * torch.log(sigma_ve)
        out = self.model((c_in * x_ve).to(dtype), c_noise.to(dtype), **kwargs)
        return c_skip * x_ve + c_out * model_output(out, x_ve).to(x_ve.dtype)

    def forward(self, x: Tensor, t: TimeLike, **kwargs: Any) -> Tensor:
        """Score at ``x`` and time ``t``; ``kwargs`` go to the model."""
        x = check_batch("x", x, min_dim=1)
        check_model_time(self.sde, t, x.shape[0])
        tt = as_time64(t).to(x.device)
        if tt.dim() == 0:
            tt = tt.expand(x.shape[0])
        alpha = torch.exp(self.sde.log_alpha(tt))
        sigma = torch.sqrt(self.sde.sigma2(tt))
        a = expand_to(alpha, x)
        x0 = self.denoise(x / a, sigma / alpha, **kwargs)
        return to_score(x0, "x0", x, alpha, sigma)


def sde_from_scheduler_config(config: Mapping[str, Any]) -> Tuple[DiscreteVPSDE, str]:
    """The SDE and prediction type of a diffusers scheduler config (``scheduler.config`` or its JSON dict).

    Reads ``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``,
    ``trained_betas`` and ``prediction_type`` (diffusers' defaults where missing).

    Raises:
        ValueError: ``rescale_betas_zero_snr=True`` (zero terminal SNR is not supported) or an
            unknown ``beta_schedule`` / ``prediction_type``.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a diffusers scheduler.config or its JSON dict), got {type(config).__name__}")
    cfg = dict(config)
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True (zero terminal SNR) is not supported: sigma/alpha is infinite at T")
    sde = DiscreteVPSDE.from_betas(
        cfg.get("beta_schedule", "linear"), int(cfg.get("num_train_timesteps", 1000)),
        float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02)), trained_betas=cfg.get("trained_betas"),
    )
    pred = cfg.get("prediction_type", "epsilon")
    _prediction_kind(pred)
    return sde, pred

r"""Score parameterisations and the conversions between them.

With :math:`x_t = \alpha x_0 + \sigma\epsilon`, a network may predict any of four equivalent
quantities; given :math:`(x_t, \alpha, \sigma)` each determines the others:

* ``score``: :math:`s` itself.
* ``eps``: the noise, :math:`\hat\epsilon = -\sigma s`; so :math:`s = -\hat\epsilon/\sigma`.
* ``x0``: the denoiser (Tweedie), :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`; so
  :math:`s = (\alpha\hat x_0 - x)/\sigma^2`.
* ``v``: :math:`\hat v = \alpha\hat\epsilon - \sigma\hat x_0`; so
  :math:`\hat\epsilon = (\sigma x + \alpha\hat v)/(\alpha^2+\sigma^2)` and :math:`s = -\hat\epsilon/\sigma`.

The ``v`` inversion uses :math:`x = \alpha\hat x_0 + \sigma\hat\epsilon`, so it holds for any
schedule, not only variance-preserving ones (where :math:`\alpha^2+\sigma^2=1`).

Tweedie's formula, :math:`\mathbb E[x_0\mid x_t] = (x_t + \sigma^2\nabla\log p_t(x_t))/\alpha`, is
what makes the ``x0`` row exact for the true score.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Union

import torch
from torch import nn

from ._checks import TimeLike, as_time64, check_batch, check_coefficient, check_model_time, check_tensor
from .sde import LinearSDE, expand_to

Tensor = torch.Tensor
Parameterisation = Literal["score", "eps", "x0", "v"]
PARAMETERISATIONS = ("score", "eps", "x0", "v")

__all__ = ["PARAMETERISATIONS", "to_score", "from_score", "convert", "ScoreModel"]


def _check_kind(name: str, kind: str) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"{name} must be one of {PARAMETERISATIONS}, got {type(kind).__name__}")
    if kind not in PARAMETERISATIONS:
        raise ValueError(f"{name} must be one of {PARAMETERISATIONS}, got {kind!r}")
    return kind


def _coef(name: str, c: Union[float, Tensor], x: Tensor) -> Tensor:
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return torch.tensor(float(c), dtype=x.dtype, device=x.device)
    c = check_tensor(name, c)
    if c.dim() == 1 and c.shape[0] == x.shape[0]:
        return expand_to(c, x)
    return c.to(dtype=x.dtype, device=x.device)


def to_score(pred: Tensor, kind: str, x: Tensor, alpha: Union[float, Tensor], sigma: Union[float, Tensor]) -> Tensor:
    r"""Convert a prediction of type ``kind`` into the score :math:`\nabla_x\log p_t(x)`.

    Args:
        pred: network output, shape ``(B, *shape)``.
        kind: one of ``"score"``, ``"eps"``, ``"x0"``, ``"v"``.
        x: the noisy input :math:`x_t`, shape ``(B, *shape)``.
        alpha: :math:`\alpha(t)`: a float, a 0-d tensor, a ``(B,)`` tensor or anything that
            broadcasts against ``x``.
        sigma: :math:`\sigma(t) > 0`, same forms as ``alpha``.

    Returns:
        The score, shape ``(B, *shape)``.
    """
    kind = _check_kind("kind", kind)
    pred, x = check_tensor("pred", pred), check_tensor("x", x)
    if pred.shape != x.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but x has shape {tuple(x.shape)}; they must match exactly")
    a, s = _coef("alpha", alpha, x), _coef("sigma", sigma, x)
    if kind == "score":
        return pred
    check_coefficient("sigma", sigma)  # eps, x0 and v divide by sigma
    if kind != "eps":
        check_coefficient("alpha", alpha)
    if kind == "eps":
        return -pred / s
    if kind == "x0":
        return (a * pred - x) / (s * s)
    eps = (s * x + a * pred) / (a * a + s * s)
    return -eps / s


def from_score(score: Tensor, kind: str, x: Tensor, alpha: Union[float, Tensor], sigma: Union[float, Tensor]) -> Tensor:
    r"""Convert a score into a prediction of type ``kind`` (the inverse of :func:`to_score`).

    ``eps = -sigma * s``; ``x0 = (x + sigma^2 s) / alpha`` (Tweedie); ``v = alpha * eps - sigma * x0``.
    Shapes and coefficient forms as in :func:`to_score`.
    """
    kind = _check_kind("kind", kind)
    score, x = check_tensor("score", score), check_tensor("x", x)
    if score.shape != x.shape:
        raise ValueError(f"score has shape {tuple(score.shape)} but x has shape {tuple(x.shape)}; they must match exactly")
    a, s = _coef("alpha", alpha, x), _coef("sigma", sigma, x)
    if kind == "score":
        return score
    if kind != "eps":
        check_coefficient("alpha", alpha)  # x0 and v divide by alpha
    eps = -s * score
    if kind == "eps":
        return eps
    x0 = (x + s * s * score) / a
    if kind == "x0":
        return x0
    return a * eps - s * x0


def convert(pred: Tensor, src: str, dst: str, x: Tensor, alpha: Union[float, Tensor], sigma: Union[float, Tensor]) -> Tensor:
    """Convert a prediction of type ``src`` into type ``dst`` (both in ``PARAMETERISATIONS``)."""
    _check_kind("src", src)
    _check_kind("dst", dst)
    if src == dst:
        return pred
    return from_score(to_score(pred, src, x, alpha, sigma), dst, x, alpha, sigma)


class ScoreModel(nn.Module):
    r"""Wrap a network that predicts ``score``/``eps``/``x0``/``v`` as a score function.

    ``ScoreModel(net, sde, "eps")(x, t)`` returns :math:`-\hat\epsilon_\theta(x,t)/\sigma(t)`, so
    any network plugs into every sampler and likelihood.

    Args:
        net: a module called as ``net(x, t)`` with ``x`` of shape ``(B, *shape)`` and ``t`` of
            shape ``(B,)`` (physical time, in ``x``'s dtype); returns ``(B, *shape)``.
        sde: the linear SDE the network was trained for.
        parameterisation: what ``net`` predicts.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, parameterisation: Parameterisation = "eps") -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t), got {type(net).__name__}")
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.parameterisation = _check_kind("parameterisation", parameterisation)

    def forward(self, x: Tensor, t: TimeLike, **kwargs: Any) -> Tensor:
        """Score :math:`s_\\theta(x, t)`, shape of ``x``; ``t`` a float, 0-d or ``(B,)`` tensor;
        ``kwargs`` (e.g. labels ``y``) are passed on to ``net``."""
        x = check_batch("x", x, min_dim=1)
        check_model_time(self.sde, t, x.shape[0])
        tt = as_time64(t).to(x.device)
        if tt.dim() == 0:
            tt = tt.expand(x.shape[0])
        pred = self.net(x, tt.to(x.dtype), **kwargs)
        if pred.shape != x.shape:
            raise ValueError(f"net returned shape {tuple(pred.shape)}, expected the input's shape {tuple(x.shape)}")
        alpha = torch.exp(self.sde.log_alpha(tt))
        sigma = torch.sqrt(self.sde.sigma2(tt))
        if self.parameterisation != "score":
            check_coefficient("sigma(t) at the given t", sigma)
        return to_score(pred, self.parameterisation, x, alpha, sigma)

r"""A linear SDE from a discrete-time DDPM schedule (``alphas_cumprod`` / ``betas``).

A DDPM with :math:`N` training timesteps defines :math:`\bar\alpha_k` (``alphas_cumprod[k]``,
:math:`k = 0, \dots, N-1`) and :math:`x_k = \sqrt{\bar\alpha_k}\,x_0 + \sqrt{1-\bar\alpha_k}\,\epsilon`.
:class:`DiscreteVPSDE` is the variance-preserving linear SDE that passes exactly through these
marginals.

**Time map.** Continuous time :math:`t \in [0, 1]` and the fractional training timestep
:math:`\tau` are related by

.. math:: \tau = N t - 1, \qquad t = (\tau + 1)/N,

so timestep :math:`k` sits at :math:`t_k = (k+1)/N`, the last timestep :math:`N-1` at
:math:`T = 1`, and :math:`t = 0` (:math:`\tau = -1`) is clean data with :math:`\bar\alpha = 1`
(the ``alpha_prod_t_prev = 1`` of diffusers' final DDPM step). The default ``eps`` is
:math:`t_0 = 1/N`: sampling ends at training timestep 0.

**Interpolation.** With :math:`B(t) = -\log\bar\alpha(t)` (the integrated rate, finite at
:math:`t=0` where the log-SNR is infinite), the knots :math:`B(k/N)` for :math:`k = 0..N`
(:math:`B(0) = 0`) are joined by a monotone piecewise-cubic Hermite interpolant (Fritsch-Carlson
slopes, as scipy's PCHIP), which is :math:`C^1`, exact at every knot and non-decreasing. Then

.. math::

    \alpha = e^{-B/2},\quad \sigma^2 = -\mathrm{expm1}(-B),\quad
    (\log\alpha)' = -B'/2,\quad (\sigma^2)' = B' e^{-B},\quad
    g^2 = (\sigma^2)' - 2(\log\alpha)'\sigma^2 = B'(t) \ge 0,

so the SDE is :math:`dx = -\tfrac12 B'(t)\,x\,dt + \sqrt{B'(t)}\,dw`, a VP SDE whose
:math:`\beta(t) = B'(t)` is the smooth version of :math:`N\cdot(-\log(1-\beta_k))`. The
half-log-SNR is :math:`\lambda = -\tfrac12\log\mathrm{expm1}(B)`, inverted exactly as
:math:`B = \mathrm{softplus}(-2\lambda)` followed by a search of the monotone cubic
(:meth:`DiscreteVPSDE.t_of_lambda`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ._checks import as_float64
from .sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["DiscreteVPSDE", "betas_for_schedule", "BETA_SCHEDULES"]

#: The ``beta_schedule`` names of diffusers understood by :func:`betas_for_schedule`.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def betas_for_schedule(
    beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
) -> Tensor:
    r"""The betas of a diffusers ``beta_schedule`` (float64; diffusers builds them in float32).

    * ``"linear"``: :math:`\beta_k` evenly spaced from ``beta_start`` to ``beta_end`` (DDPM).
    * ``"scaled_linear"``: :math:`\sqrt{\beta_k}` evenly spaced from :math:`\sqrt{\text{beta\_start}}`
      to :math:`\sqrt{\text{beta\_end}}` (Stable Diffusion; typically 0.00085 and 0.012).
    * ``"squaredcos_cap_v2"``: :math:`\beta_k = \min(1 - \bar a((k+1)/N)/\bar a(k/N), 0.999)` with
      :math:`\bar a(u) = \cos^2\big(\tfrac{\pi}{2}\tfrac{u + 0.008}{1.008}\big)` (Nichol & Dhariwal
      2021; ``beta_start``/``beta_end`` are ignored, as in diffusers).

    Raises:
        ValueError: on an unknown ``beta_schedule``, ``num_train_timesteps < 2`` or betas outside (0, 1).
    """
    if not isinstance(beta_schedule, str) or beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
    n = num_train_timesteps
    if beta_schedule == "squaredcos_cap_v2":
        u = torch.arange(n + 1, dtype=torch.float64) / n
        abar = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v < 1.0):
            raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


def _pchip_slopes(y: Tensor, h: float) -> Tensor:
    """Fritsch-Carlson slopes of a strictly increasing sequence on a uniform grid of spacing ``h``."""
    d = torch.diff(y) / h
    m = torch.empty_like(y)
    m[1:-1] = 2.0 / (1.0 / d[:-1] + 1.0 / d[1:])  # harmonic mean (equal spacing), both d > 0
    for end, d0, d1 in ((0, d[0], d[1]), (-1, d[-1], d[-2])):
        s = (3.0 * d0 - d1) / 2.0  # scipy's one-sided three-point end condition
        if s < 0:
            s = torch.zeros_like(s)
        elif s > 3.0 * d0:
            s = 3.0 * d0
        m[end] = s
    return m


class DiscreteVPSDE(LinearSDE):
    r"""The VP SDE through the marginals of a discrete DDPM schedule (see the module docstring).

    Args:
        alphas_cumprod: :math:`\bar\alpha_k` for the ``N`` training timesteps: a 1-D sequence or
            tensor, strictly decreasing, every value in (0, 1).
        eps: smallest sampling time (default :math:`1/N`, training timestep 0).

    Attributes:
        num_train_timesteps: ``N``.
        alphas_cumprod: float64 tensor of shape ``(N,)``.

    Raises:
        ValueError: if ``alphas_cumprod`` is not 1-D with at least 2 entries, is not finite, leaves
            (0, 1) (zero terminal SNR is not supported: :math:`\sigma/\alpha` would be infinite at
            T) or is not strictly decreasing.

    Example:
        >>> sde = DiscreteVPSDE.from_betas("linear", num_train_timesteps=1000)
        >>> t = sde.time_of_timestep(torch.tensor([0.0, 499.0, 999.0]))
        >>> [round(float(v), 6) for v in t]
        [0.001, 0.5, 1.0]
        >>> acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        >>> bool(torch.allclose(sde.alpha(t) ** 2, acp[[0, 499, 999]], rtol=1e-12))
        True
    """

    def __init__(self, alphas_cumprod: Union[Sequence[float], Tensor, np.ndarray], *, eps: Optional[float] = None) -> None:
        try:
            acp = torch.as_tensor(np.asarray(alphas_cumprod.detach().cpu() if isinstance(alphas_cumprod, Tensor) else alphas_cumprod, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"alphas_cumprod must be a 1-D sequence of numbers, got {type(alphas_cumprod).__name__}") from None
        if acp.dim() != 1 or acp.numel() < 2:
            raise ValueError(f"alphas_cumprod must be 1-D with at least 2 timesteps, got shape {tuple(acp.shape)}")
        if not bool(torch.isfinite(acp).all()):
            raise ValueError("alphas_cumprod must be finite")
        if not bool(((acp > 0) & (acp < 1)).all()):
            raise ValueError(
                f"alphas_cumprod must lie in (0, 1) (zero terminal SNR is not supported), got values in "
                f"[{float(acp.min())}, {float(acp.max())}]"
            )
        if not bool((acp[1:] < acp[:-1]).all()):
            k = int(torch.nonzero(acp[1:] >= acp[:-1])[0])
            raise ValueError(f"alphas_cumprod must be strictly decreasing, but entry {k + 1} >= entry {k}")
        n = acp.numel()
        self.num_train_timesteps = n
        self.alphas_cumprod = acp
        super().__init__(T=1.0, eps=1.0 / n if eps is None else eps, prior_std=1.0)
        self._B = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.log(acp)])  # knots at t = j/N
        self._m = _pchip_slopes(self._B, 1.0 / n)

    # -------------------------------------------------------------- constructors (diffusers' names)

    @classmethod
    def from_betas(
        cls, beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 0.0001,
        beta_end: float = 0.02, *, trained_betas: Optional[Any] = None, eps: Optional[float] = None,
    ) -> "DiscreteVPSDE":
        r"""From diffusers' scheduler arguments: ``trained_betas`` if given, else
        :func:`betas_for_schedule`; :math:`\bar\alpha_k = \prod_{j\le k}(1-\beta_j)`."""
        if trained_betas is not None:
            betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
            if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
                raise ValueError("trained_betas must be a 1-D sequence of values in (0, 1)")
        else:
            betas = betas_for_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end)
        return cls(torch.cumprod(1.0 - betas, 0), eps=eps)

    # -------------------------------------------------------------- time map

    def timestep_of(self, t: Tensor) -> Tensor:
        r"""Fractional training timestep :math:`\tau = N t - 1` of times ``t`` (float64)."""
        return as_float64(t) * self.num_train_timesteps - 1.0

    def time_of_timestep(self, timestep: Any) -> Tensor:
        r"""Time :math:`t = (\tau + 1)/N` of (fractional) training timesteps (float64)."""
        return (as_float64(timestep) + 1.0) / self.num_train_timesteps

    # -------------------------------------------------------------- schedule

    def _segment(self, t: Tensor):
        n = self.num_train_timesteps
        u = t * n
        j = torch.clamp(torch.floor(u), 0, n - 1).long()
        s = u - j.to(u.dtype)
        B, m = self._B.to(t.device), self._m.to(t.device)
        return s, B[j], B[j + 1], m[j] / n, m[j + 1] / n

    def int_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = -\log\bar\alpha(t)`, the monotone cubic through the knots."""
        s, y0, y1, m0, m1 = self._segment(t)
        s2, s3 = s * s, s * s * s
        return (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * m0 + (3 * s2 - 2 * s3) * y1 + (s3 - s2) * m1

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`B'(t) = g(t)^2 \ge 0`."""
        s, y0, y1, m0, m1 = self._segment(t)
        s2 = s * s
        ds = (6 * s2 - 6 * s) * y0 + (3 * s2 - 4 * s + 1) * m0 + (6 * s - 6 * s2) * y1 + (3 * s2 - 2 * s) * m1
        return ds * self.num_train_timesteps

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.int_beta(t)

    def sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.int_beta(t))

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        return self.beta(t) * torch.exp(-self.int_beta(t))

    def diffusion2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Exact inverse of :math:`\lambda(t)`: :math:`B = \mathrm{softplus}(-2\lambda)`, the knot
        interval by ``searchsorted``, then 60 bisections of the (monotone) cubic on that interval
        (resolution :math:`2^{-60}/N`). Values beyond the schedule clamp to ``[0, T]``."""
        lam = as_float64(lam)
        target = torch.nn.functional.softplus(-2.0 * lam)
        n = self.num_train_timesteps
        B = self._B.to(lam.device)
        j = torch.clamp(torch.searchsorted(B, target.reshape(-1)).reshape(target.shape) - 1, 0, n - 1)
        a = j.to(torch.float64) / n
        b = a + 1.0 / n
        for _ in range(60):
            mid = 0.5 * (a + b)
            below = self.int_beta(mid) < target
            a = torch.where(below, mid, a)
            b = torch.where(below, b, mid)
        return torch.clamp(0.5 * (a + b), 0.0, self.T)

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(num_train_timesteps={self.num_train_timesteps}, eps={self.eps})"

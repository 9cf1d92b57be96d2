r"""Forward SDEs of score-based generative models, as genuine torchsde SDEs.

Every SDE here is *linear*: it is described by its Gaussian perturbation kernel

.. math::

    p_t(x \mid x_0) = \mathcal N\big(\alpha(t)\, x_0,\ \sigma(t)^2 I\big),

and the drift and diffusion follow from one identity (DESIGN.md section 3):

.. math::

    f(x, t) = \frac{d \log\alpha}{dt}\, x, \qquad
    g(t)^2 = \frac{d\sigma^2}{dt} - 2\,\frac{d\log\alpha}{dt}\,\sigma^2 .

With :math:`x(0) \sim p_0` and these coefficients, the Ito SDE
:math:`dx = f(x,t)\,dt + g(t)\,dw` has exactly the marginals
:math:`p_t = \int p_t(x \mid x_0)\, p_{\mathrm{data}}(x_0)\, dx_0` for every t in [0, T]. When
:math:`\sigma(0) > 0` (the VE SDE of Song et al.), the process starts from the data convolved
with :math:`\mathcal N(0, \sigma(0)^2 I)`; this is the convention of score_sde and it is stated
on each class.

Shapes: times ``t`` may be a Python float, a 0-d tensor or a ``(B,)`` tensor; states are
``(B, *shape)``. The torchsde-facing methods ``f``, ``g``, ``g_prod``, ``f_and_g`` and
``f_and_g_prod`` take ``(B, d)`` states as torchsde requires, and in fact work for any shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch

from ._checks import TimeLike, as_float64, as_time64, check_batch, check_generator, check_positive
from .seeds import randn as _randn

Tensor = torch.Tensor

__all__ = [
    "LinearSDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "CosineVPSDE",
    "EDMSDE",
    "expand_to",
]


def expand_to(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient so that it broadcasts against ``x``.

    Args:
        c: a 0-d tensor or a ``(B,)`` tensor.
        x: a tensor of shape ``(B, *shape)``.

    Returns:
        ``c`` cast to ``x``'s dtype and device, with shape ``()`` or ``(B, 1, ..., 1)``.
    """
    c = c.to(dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))


class LinearSDE:
    r"""A linear forward SDE defined by its schedule :math:`\alpha(t)`, :math:`\sigma(t)`.

    ``f`` and ``g`` are derived from the schedule through
    :math:`f = (\log\alpha)'\,x` and :math:`g^2 = (\sigma^2)' - 2(\log\alpha)'\sigma^2`, so one
    schedule determines the whole SDE. Subclasses override :meth:`log_alpha` and :meth:`sigma2`
    (and, where a closed form exists, their derivatives); a custom schedule can instead be passed
    as two callables, whose derivatives are then taken by autograd.

    The object is a torchsde SDE (``sde_type="ito"``, ``noise_type="diagonal"``): since ``g``
    depends on ``t`` only, Ito and Stratonovich calculus coincide for it.

    Args:
        alpha: optional callable ``t -> alpha(t)`` on float64 tensors (custom schedules only).
        sigma: optional callable ``t -> sigma(t)`` on float64 tensors (custom schedules only).
        T: final time; the SDE lives on ``[0, T]``.
        eps: smallest time used by samplers and likelihoods (``0 < eps < T``).
        prior_std: standard deviation of the standard prior :math:`\mathcal N(0, s^2 I)`;
            defaults to :math:`\sigma(T)`.

    Example:
        >>> import torch, math
        >>> sde = LinearSDE(alpha=lambda t: torch.cos(t * math.pi / 2),
        ...                 sigma=lambda t: torch.sin(t * math.pi / 2), T=0.99, eps=1e-3)
        >>> float(sde.sigma(0.5)) ** 2 + float(sde.alpha(0.5)) ** 2
        1.0
    """

    sde_type: str = "ito"
    noise_type: str = "diagonal"

    def __init__(
        self,
        alpha: Optional[Callable[[Tensor], Tensor]] = None,
        sigma: Optional[Callable[[Tensor], Tensor]] = None,
        *,
        T: float = 1.0,
        eps: float = 1e-3,
        prior_std: Optional[float] = None,
    ) -> None:
        self.T = check_positive("T", T)
        self.eps = check_positive("eps", eps)
        if self.eps >= self.T:
            raise ValueError(f"eps must be smaller than T={self.T}, got eps={self.eps}")
        if (alpha is None) != (sigma is None):
            raise TypeError("alpha and sigma must be given together (both callables) or not at all")
        if alpha is not None and not (callable(alpha) and callable(sigma)):
            raise TypeError("alpha and sigma must be callables t -> tensor")
        self._alpha_fn = alpha
        self._sigma_fn = sigma
        if type(self) is LinearSDE and alpha is None:
            raise TypeError(
                "LinearSDE needs a schedule: pass alpha= and sigma= callables, or use a subclass "
                "such as VPSDE or VESDE"
            )
        self._prior_std = None if prior_std is None else check_positive("prior_std", prior_std)
        if alpha is not None:
            _check_custom_schedule(self)

    # ------------------------------------------------------------------ discrete schedules

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Any, **kwargs: Any) -> "LinearSDE":
        """The VP SDE through a discrete DDPM schedule: :class:`~sdesolve_gen.DiscreteVPSDE`."""
        from .discrete import DiscreteVPSDE

        return DiscreteVPSDE(alphas_cumprod, **kwargs)

    @classmethod
    def from_betas(
        cls, beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 0.0001,
        beta_end: float = 0.02, *, trained_betas: Optional[Any] = None, eps: Optional[float] = None,
    ) -> "LinearSDE":
        """The VP SDE of a diffusers ``beta_schedule``: :meth:`~sdesolve_gen.DiscreteVPSDE.from_betas`."""
        from .discrete import DiscreteVPSDE

        return DiscreteVPSDE.from_betas(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                        trained_betas=trained_betas, eps=eps)

    # ------------------------------------------------------------------ schedule primitives
    # These take float64 tensors of any shape and do no argument checking (hot path).

    def log_alpha(self, t: Tensor) -> Tensor:
        r""":math:`\log\alpha(t)`, elementwise on a tensor of times."""
        if self._alpha_fn is None:
            raise NotImplementedError
        return torch.log(self._alpha_fn(t))

    def sigma2(self, t: Tensor) -> Tensor:
        r""":math:`\sigma(t)^2`, elementwise on a tensor of times."""
        if self._sigma_fn is None:
            raise NotImplementedError
        return self._sigma_fn(t) ** 2

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        r""":math:`d\log\alpha/dt`; by autograd unless a subclass gives the closed form."""
        return _time_derivative(self.log_alpha, t)

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        r""":math:`d\sigma^2/dt`; by autograd unless a subclass gives the closed form."""
        return _time_derivative(self.sigma2, t)

    def drift_coef(self, t: Tensor) -> Tensor:
        r"""Scalar drift coefficient :math:`a(t) = d\log\alpha/dt`, so that :math:`f = a(t)\,x`."""
        return self.dlog_alpha_dt(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        r""":math:`g(t)^2 = (\sigma^2)' - 2(\log\alpha)'\sigma^2` (the identity of DESIGN.md §3)."""
        return self.dsigma2_dt(t) - 2.0 * self.dlog_alpha_dt(t) * self.sigma2(t)

    # ------------------------------------------------------------------ public, checked

    def half_log_snr(self, t: Tensor) -> Tensor:
        r""":math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)` (strictly decreasing in t), float64 tensors."""
        return self.log_alpha(t) - 0.5 * torch.log(self.sigma2(t))

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Invert :math:`\lambda(t) = \log(\alpha/\sigma)`: the time with half-log-SNR ``lam``.

        Subclasses give closed forms; this generic version (custom schedules) bisects on
        :math:`[0, T]` 100 times, which reaches float64 resolution since :math:`\lambda` is
        strictly decreasing.

        Args:
            lam: half-log-SNR values, any shape (float64).

        Returns:
            float64 times of the same shape.
        """
        lam = as_float64(lam)
        a = torch.zeros_like(lam)
        b = torch.full_like(lam, self.T)
        for _ in range(100):
            mid = 0.5 * (a + b)
            too_early = self.half_log_snr(mid) > lam  # lambda(mid) > target -> t is later
            a = torch.where(too_early, mid, a)
            b = torch.where(too_early, b, mid)
        return 0.5 * (a + b)

    def time(self, t: TimeLike, *, name: str = "t", batch: Optional[int] = None) -> Tensor:
        """Validate a time argument and return it as a float64 tensor (0-d or ``(B,)``).

        Raises:
            TypeError: if ``t`` is not a number or a tensor.
            ValueError: if ``t`` is not finite, not in ``[0, T]``, has more than one dimension,
                or its length does not match ``batch``.
        """
        if isinstance(t, bool):
            raise TypeError(f"{name} must be a float or a tensor of times, got bool")
        if isinstance(t, (int, float)):
            tt = torch.tensor(float(t), dtype=torch.float64, device="cpu")
        elif isinstance(t, torch.Tensor):
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
            tt = t.to(torch.float64)
        else:
            raise TypeError(f"{name} must be a float or a tensor of times, got {type(t).__name__}")
        if tt.dim() > 1:
            raise ValueError(f"{name} must be a scalar or a 1-D tensor of shape (B,), got shape {tuple(tt.shape)}")
        if batch is not None and tt.dim() == 1 and tt.shape[0] not in (1, batch):
            raise ValueError(f"{name} has {tt.shape[0]} times but the batch has {batch} samples")
        if not bool(torch.isfinite(tt).all()):
            raise ValueError(f"{name} must be finite, got {t}")
        lo, hi = float(tt.min()), float(tt.max())
        if lo < 0.0 or hi > self.T * (1.0 + 1e-12):
            raise ValueError(f"{name} must lie in [0, T] = [0, {self.T}], got values in [{lo}, {hi}]")
        return tt

    def alpha(self, t: TimeLike) -> Tensor:
        r"""Mean coefficient :math:`\alpha(t)` (float64, same shape as ``t``)."""
        return torch.exp(self.log_alpha(self.time(t)))

    def sigma(self, t: TimeLike) -> Tensor:
        r"""Noise level :math:`\sigma(t)` (float64, same shape as ``t``)."""
        return torch.sqrt(self.sigma2(self.time(t)))

    def g2(self, t: TimeLike) -> Tensor:
        r"""Squared diffusion :math:`g(t)^2` (float64, same shape as ``t``)."""
        return self.diffusion2(self.time(t))

    def log_snr(self, t: TimeLike) -> Tensor:
        r"""Log signal-to-noise ratio :math:`\log(\alpha^2/\sigma^2) = 2\lambda(t)` (float64)."""
        tt = self.time(t)
        return 2.0 * self.log_alpha(tt) - torch.log(self.sigma2(tt))

    def marginal(self, x0: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        r"""Mean and standard deviation of :math:`p_t(x \mid x_0)`.

        Args:
            x0: clean data, shape ``(B, *shape)``.
            t: time(s), a float, 0-d tensor or ``(B,)`` tensor in ``[0, T]``.

        Returns:
            ``(alpha(t) * x0, sigma(t))``: the mean, shape ``(B, *shape)``, and the standard
            deviation, shape ``()`` or ``(B, 1, ..., 1)``; both in ``x0``'s dtype.
        """
        x0 = check_batch("x0", x0)
        tt = self.time(t, batch=x0.shape[0])
        alpha = expand_to(torch.exp(self.log_alpha(tt)), x0)
        sigma = expand_to(torch.sqrt(self.sigma2(tt)), x0)
        return alpha * x0, sigma

    def perturb(
        self, x0: Tensor, t: TimeLike, *, generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        r"""Draw :math:`x_t = \alpha(t) x_0 + \sigma(t)\,\epsilon` with :math:`\epsilon\sim\mathcal N(0,I)`.

        Returns:
            ``(x_t, eps)``, both of shape ``(B, *shape)``.
        """
        mean, std = self.marginal(x0, t)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return mean + std * noise, noise

    @property
    def prior_std(self) -> float:
        r"""Standard deviation :math:`s` of the standard prior :math:`\pi = \mathcal N(0, s^2 I)`."""
        if self._prior_std is not None:
            return self._prior_std
        return math.sqrt(float(self.sigma2(torch.tensor(self.T, dtype=torch.float64, device="cpu"))))

    def prior_sample(
        self,
        shape: Union[Sequence[int], torch.Size],
        *,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> Tensor:
        r"""Sample the standard prior :math:`\mathcal N(0, s^2 I)` with ``s = prior_std``.

        Args:
            shape: ``(B, *data_shape)``.
            generator: optional ``torch.Generator`` (or :class:`~sdesolve_gen.seeds.SeedStreams`) for reproducibility.
            dtype, device: of the result.
        """
        if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in shape
        ):
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
        if len(shape) < 2 or any(s <= 0 for s in shape):
            raise ValueError(f"shape must be (batch, *data_shape) with positive sizes, got {tuple(shape)}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if isinstance(generator, torch.Generator):
            check_generator(generator, torch.device(device) if device is not None else torch.device("cpu"), "device")
        z = _randn(tuple(shape), generator, dtype=dtype, device=device)  # torch.Generator or SeedStreams
        return self.prior_std * z

    def prior_log_prob(self, x: Tensor) -> Tensor:
        r"""Log density of the standard prior, summed over data dimensions.

        .. math:: \log\pi(x) = -\tfrac{D}{2}\log(2\pi s^2) - \tfrac{\|x\|^2}{2 s^2}

        Args:
            x: shape ``(B, *shape)``.

        Returns:
            shape ``(B,)``, in nats.
        """
        x = check_batch("x", x)
        s2 = self.prior_std**2
        D = x[0].numel()
        sq = x.flatten(1).pow(2).sum(dim=1)
        return -0.5 * D * math.log(2.0 * math.pi * s2) - 0.5 * sq / s2

    # ------------------------------------------------------------------ vector field, any shape

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        r"""Forward drift :math:`f(x, t) = (\log\alpha)'(t)\,x` for ``x`` of shape ``(B, *shape)``."""
        return expand_to(self.drift_coef(as_time64(t)), x) * x

    def diffusion(self, t: TimeLike) -> Tensor:
        r"""Diffusion coefficient :math:`g(t)` (float64, same shape as ``t``; no range check)."""
        return torch.sqrt(self.diffusion2(as_time64(t)))

    # ------------------------------------------------------------------ torchsde interface

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde drift: ``f(t, y)`` with ``t`` a 0-d tensor and ``y`` of shape ``(B, d)``."""
        return self.drift(y, t)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde diagonal diffusion: ``g(t)`` broadcast to ``y``'s shape ``(B, d)``."""
        return expand_to(self.diffusion(t), y).expand_as(y)

    def g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """torchsde ``g(t, y) * v`` for diagonal noise (cheaper than materialising ``g``)."""
        return expand_to(self.diffusion(t), y) * v

    def f_and_g(self, t: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        """torchsde fused drift and diffusion."""
        return self.f(t, y), self.g(t, y)

    def f_and_g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """torchsde fused drift and ``g * v``."""
        return self.f(t, y), self.g_prod(t, y, v)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, eps={self.eps}, prior_std={self.prior_std:.6g})"


def _time_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Elementwise ``d fn / dt`` by autograd (``fn`` must act elementwise); 0 where ``fn`` ignores ``t``."""
    with torch.enable_grad():
        tt = t.detach().to(torch.float64).requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:  # a constant schedule, e.g. alpha = torch.ones_like(t)
            return torch.zeros_like(tt.detach())
        (grad,) = torch.autograd.grad(out.sum(), tt, allow_unused=True)
    return torch.zeros_like(tt.detach()) if grad is None else grad


def _check_custom_schedule(sde: "LinearSDE") -> None:
    """Check a custom ``alpha``/``sigma`` schedule on a grid of ``[0, T]`` before it is used.

    Raises:
        TypeError: if a callable does not map a float64 tensor to a tensor of the same shape.
        ValueError: if alpha or sigma is not finite and > 0 on ``(0, T]`` (alpha also at 0), or
            :math:`g^2 = (\\sigma^2)' - 2(\\log\alpha)'\\sigma^2` is negative somewhere.
    """
    t = torch.linspace(0.0, sde.T, 65, dtype=torch.float64)
    for name, fn in (("alpha", sde._alpha_fn), ("sigma", sde._sigma_fn)):
        try:
            out = fn(t)  # type: ignore[misc]
        except Exception as err:
            raise TypeError(f"{name} must map a float64 tensor of times to a tensor (use torch functions, not math): "
                            f"{type(err).__name__}: {err}") from None
        if not isinstance(out, torch.Tensor) or out.shape != t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"{name} must return a tensor of the input's shape {tuple(t.shape)} (elementwise), got {got}")
        inner = out if name == "alpha" else out[1:]
        if not bool(torch.isfinite(inner).all()) or not bool((inner > 0).all()):
            where = "[0, T]" if name == "alpha" else "(0, T]"
            raise ValueError(f"{name}(t) must be finite and > 0 on {where}, got min {float(inner.min()):.3g}")
    g2 = sde.diffusion2(t[1:])
    scale = sde.sigma2(t[1:]).abs().max() / sde.T
    if not bool(torch.isfinite(g2).all()) or bool((g2 < -1e-9 * float(scale)).any()):
        k = int(torch.argmin(g2))
        raise ValueError(f"the schedule gives g(t)^2 = (sigma^2)' - 2 (log alpha)' sigma^2 < 0 (e.g. {float(g2[k]):.3g} at "
                         f"t={float(t[1 + k]):.3g}): sigma must grow relative to alpha (a forward SDE adds noise)")


class VESDE(LinearSDE):
    r"""Variance-exploding SDE of SMLD / NCSN (Song et al. 2021).

    .. math::

        \alpha(t) = 1,\quad \sigma(t) = \sigma_{\min}\Big(\frac{\sigma_{\max}}{\sigma_{\min}}\Big)^t,
        \quad f = 0,\quad g(t)^2 = 2\sigma(t)^2 \log\frac{\sigma_{\max}}{\sigma_{\min}}.

    Convention (as in score_sde): :math:`p_t(x\mid x_0) = \mathcal N(x_0, \sigma(t)^2 I)` for all
    t, so at t=0 the process is the data convolved with :math:`\mathcal N(0, \sigma_{\min}^2 I)`.
    The standard prior is :math:`\mathcal N(0, \sigma_{\max}^2 I)`; the exact marginal at T is
    :math:`p_{\mathrm{data}} * \mathcal N(0, \sigma_{\max}^2 I)` (use
    ``analytic.GaussianMixture.marginal(sde.T, sde)`` to remove the prior mismatch in tests).

    Args:
        sigma_min: :math:`\sigma(0) > 0` (default 0.01).
        sigma_max: :math:`\sigma(T) > \sigma_{\min}` (default 50, the CIFAR-10 setting).
        T: final time (default 1).
        eps: smallest time for sampling/likelihood (default 1e-5).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, T: float = 1.0, eps: float = 1e-5) -> None:
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min={self.sigma_min}, got sigma_max={self.sigma_max}")
        super().__init__(T=T, eps=eps, prior_std=self.sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma2(self, t: Tensor) -> Tensor:
        return self.sigma_min**2 * torch.exp(2.0 * self._log_ratio * t / self.T)

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        return (2.0 * self._log_ratio / self.T) * self.sigma2(t)

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Closed form: :math:`\lambda = -\log\sigma_{\min} - (t/T)\log(\sigma_{\max}/\sigma_{\min})`,
        so :math:`t = T(-\lambda - \log\sigma_{\min}) / \log(\sigma_{\max}/\sigma_{\min})`."""
        lam = as_float64(lam)
        return self.T * (-lam - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, eps={self.eps})"


class _BetaLinearSDE(LinearSDE):
    """Shared part of VP and sub-VP: the linear rate :math:`\beta(t)` and :math:`\alpha = e^{-B/2}`."""

    def __init__(self, beta_min: float, beta_max: float, *, T: float, eps: float) -> None:
        if isinstance(beta_min, bool) or not isinstance(beta_min, (int, float)):
            raise TypeError(f"beta_min must be a real number, got {type(beta_min).__name__}")
        if not math.isfinite(beta_min) or beta_min < 0:
            raise ValueError(f"beta_min must be a finite number >= 0, got {beta_min}")
        beta_max = check_positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_max must be >= beta_min={beta_min}, got beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), beta_max
        super().__init__(T=T, eps=eps, prior_std=1.0)
        half_B = 0.5 * (self.beta_min * self.T + 0.5 * (beta_max - self.beta_min) * self.T**2)
        if half_B > 700.0:  # alpha(T) = exp(-B(T)/2) would be 0 or subnormal in float64
            raise ValueError(f"beta_max={beta_max} (with beta_min={self.beta_min}, T={self.T}) gives alpha(T) = "
                             f"exp(-{half_B:.4g}), which underflows float64; every sampler divides by alpha")

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = \int_0^t \beta = \beta_{\min} t + \tfrac12 (\beta_{\max}-\beta_{\min}) t^2`."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_of_int_beta(self, B: Tensor) -> Tensor:
        r"""Invert :math:`B(t) = \int_0^t\beta = \beta_0 t + \tfrac12(\beta_1 - \beta_0)t^2` stably:
        :math:`t = 2B / (\beta_0 + \sqrt{\beta_0^2 + 2(\beta_1 - \beta_0)B})`."""
        b0, b1 = float(self.beta_min), float(self.beta_max)
        return 2.0 * B / (b0 + torch.sqrt(b0 * b0 + 2.0 * (b1 - b0) * B))

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self.int_beta(t)

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, eps={self.eps})"


class VPSDE(_BetaLinearSDE):
    r"""Variance-preserving SDE, the continuous limit of DDPM (Song et al. 2021).

    .. math::

        dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw,\qquad
        \alpha(t) = e^{-B(t)/2},\quad \sigma(t)^2 = -\mathrm{expm1}(-B(t)),

    with :math:`\beta(t) = \beta_{\min} + t(\beta_{\max}-\beta_{\min})` and
    :math:`B(t) = \int_0^t\beta`. ``expm1`` keeps :math:`\sigma` accurate at small t (the naive
    ``1 - exp`` is 23% wrong at t=1e-6 in float32). Standard prior :math:`\mathcal N(0, I)`, the
    stationary law of the SDE.

    Args:
        beta_min: default 0.1.
        beta_max: default 20.
        T: default 1.
        eps: default 1e-3 (score_sde's sampling eps; use 1e-5 for likelihoods).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(beta_min, beta_max, T=T, eps=eps)

    def sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.int_beta(t))

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        return self.beta(t) * torch.exp(-self.int_beta(t))

    def diffusion2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Closed form (Lu et al. 2022, appendix): :math:`e^{2\lambda} = \alpha^2/(1-\alpha^2)` gives
        :math:`B = -\log\alpha^2 = \mathrm{softplus}(-2\lambda)`, then ``t_of_int_beta``."""
        lam = as_float64(lam)
        return self.t_of_int_beta(torch.nn.functional.softplus(-2.0 * lam))


class SubVPSDE(_BetaLinearSDE):
    r"""Sub-VP SDE (Song et al. 2021): VP's drift with a smaller diffusion.

    .. math::

        dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)\big(1 - e^{-2B(t)}\big)}\,dw,\qquad
        \alpha(t) = e^{-B(t)/2},\quad \sigma(t) = -\mathrm{expm1}(-B(t)).

    Its marginal variance is bounded by VP's at every t. Standard prior :math:`\mathcal N(0, I)`.

    Args:
        beta_min: default 0.1.
        beta_max: default 20.
        T: default 1.
        eps: default 1e-3.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(beta_min, beta_max, T=T, eps=eps)

    def sigma2(self, t: Tensor) -> Tensor:
        return torch.expm1(-self.int_beta(t)) ** 2

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        B = self.int_beta(t)
        return -2.0 * torch.expm1(-B) * self.beta(t) * torch.exp(-B)

    def diffusion2(self, t: Tensor) -> Tensor:
        return -self.beta(t) * torch.expm1(-2.0 * self.int_beta(t))

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Closed form: with :math:`u = \alpha = e^{-B/2}` and :math:`\sigma = 1 - u^2`,
        :math:`e^\lambda = u/(1-u^2)` is the quadratic :math:`e^\lambda u^2 + u - e^\lambda = 0`, so
        :math:`u = 2e^\lambda/(1 + \sqrt{1 + 4e^{2\lambda}})`, :math:`B = -2\log u`, then ``t_of_int_beta``."""
        lam = as_float64(lam)
        # log u = lambda + log 2 - log(1 + sqrt(1 + 4 e^{2 lambda})), evaluated without overflow
        log_u = lam + math.log(2.0) - torch.logaddexp(torch.zeros_like(lam), 0.5 * torch.logaddexp(torch.zeros_like(lam), 2.0 * lam + math.log(4.0)))
        return self.t_of_int_beta(-2.0 * log_u)


class CosineVPSDE(LinearSDE):
    r"""VP SDE with the cosine schedule of Nichol & Dhariwal (2021).

    .. math::

        \alpha(t)^2 = \frac{\cos^2\!\big(\tfrac{\pi}{2}\tfrac{t+s}{1+s}\big)}{\cos^2\!\big(\tfrac{\pi}{2}\tfrac{s}{1+s}\big)},
        \quad \sigma(t)^2 = 1 - \alpha(t)^2,\quad
        g(t)^2 = -2\,\frac{d\log\alpha}{dt} = \frac{\pi}{1+s}\tan\!\Big(\frac{\pi}{2}\frac{t+s}{1+s}\Big).

    :math:`g` blows up at t=1, so T defaults to 0.9946 (as in DPM-Solver). Standard prior
    :math:`\mathcal N(0, I)`.

    Args:
        s: offset (default 0.008).
        T: final time, must be < 1 (default 0.9946).
        eps: default 1e-3.
    """

    def __init__(self, s: float = 0.008, *, T: float = 0.9946, eps: float = 1e-3) -> None:
        self.s = check_positive("s", s)
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (g is infinite at t=1), got T={T}")
        super().__init__(T=T, eps=eps, prior_std=1.0)
        self._log_cos0 = math.log(math.cos(0.5 * math.pi * self.s / (1.0 + self.s)))

    def _phase(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos(self._phase(t))) - self._log_cos0

    def sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(2.0 * self.log_alpha(t))

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return -torch.tan(self._phase(t)) * (0.5 * math.pi / (1.0 + self.s))

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        return -2.0 * torch.exp(2.0 * self.log_alpha(t)) * self.dlog_alpha_dt(t)

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Closed form: :math:`\alpha^2 = \mathrm{sigmoid}(2\lambda)`, :math:`\cos\phi(t) = \alpha\cos\phi(0)`,
        :math:`t = \tfrac{2}{\pi}(1+s)\,\phi - s`."""
        lam = as_float64(lam)
        alpha = torch.exp(0.5 * torch.nn.functional.logsigmoid(2.0 * lam))
        phase = torch.arccos(alpha * math.exp(self._log_cos0))
        return phase * (1.0 + self.s) / (0.5 * math.pi) - self.s

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.s}, T={self.T}, eps={self.eps})"


class EDMSDE(LinearSDE):
    r"""The SDE of Karras et al. (2022, "EDM"): :math:`\alpha = 1`, :math:`\sigma(t) = t`.

    .. math:: dx = \sqrt{2t}\,dw,\qquad p_t(x\mid x_0) = \mathcal N(x_0, t^2 I).

    Time equals noise level, so ``T = sigma_max`` and ``eps = sigma_min``; :math:`\sigma(0)=0`, so
    the process starts exactly at the data. Standard prior :math:`\mathcal N(0, \sigma_{\max}^2 I)`.

    Args:
        sigma_min: smallest noise level used by samplers (default 0.002).
        sigma_max: largest noise level, the final time (default 80).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        sigma_min = check_positive("sigma_min", sigma_min)
        sigma_max = check_positive("sigma_max", sigma_max)
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min={sigma_min}, got sigma_max={sigma_max}")
        super().__init__(T=sigma_max, eps=sigma_min, prior_std=sigma_max)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def sigma2(self, t: Tensor) -> Tensor:
        return t**2

    def dlog_alpha_dt(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def dsigma2_dt(self, t: Tensor) -> Tensor:
        return 2.0 * t

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        r"""Closed form: :math:`\alpha = 1`, :math:`\sigma = t`, so :math:`t = e^{-\lambda}`."""
        return torch.exp(-as_float64(lam))

    def __repr__(self) -> str:
        return f"EDMSDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


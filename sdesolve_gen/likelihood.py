r"""Exact log-likelihoods through the probability-flow ODE (instantaneous change of variables).

The probability-flow ODE :math:`dx/dt = v(x,t) = a(t)\,x - \tfrac12 g(t)^2 s(x,t)` (with
:math:`a = d\log\alpha/dt`) transports :math:`p_t` exactly when :math:`s = \nabla\log p_t`, and
along a trajectory :math:`d\log p_t(x_t)/dt = -\nabla\cdot v(x_t, t)` (Chen et al. 2018). Hence,
integrating the augmented state :math:`(x, \delta)` from ``eps`` to ``T``,

.. math::

    \frac{d}{dt}\begin{pmatrix} x \\ \delta \end{pmatrix} =
    \begin{pmatrix} v(x, t) \\ \nabla\cdot v(x, t) \end{pmatrix}, \qquad
    \nabla\cdot v = D\,a(t) - \tfrac12 g(t)^2\,\nabla\cdot s(x, t),

    \log p_{\varepsilon}(x) = \log \pi(z_T) + \delta(T), \qquad z_T = x(T),\ \delta(\varepsilon) = 0.

:math:`\pi` is the prior (the SDE's standard prior, or any object with ``log_prob``, e.g. the
exact marginal :math:`p_T` of an analytic target). The divergence is the exact Jacobian trace or
Hutchinson's estimator (:mod:`sdesolve_gen.divergence`).

**Solver.** torchdiffeq with a tuple state ``(x, delta)``, times ``[eps, T]`` and the option
``step_t=[eps, T]`` so adaptive solvers land exactly on ``T`` instead of stepping past it. The
only other evaluation torchdiffeq may request outside ``[eps, T]`` is the probe of its initial
step-size heuristic (at ``t0 + h0``); such a time is clamped into ``[eps, T]`` before the score
is called (it only affects the step-size guess, never the solution), so the score is never
evaluated outside ``[eps, T]`` (tested).

**Batches share a step size.** torchdiffeq controls the error of the whole state with one step
size, so a sample's result depends on what else is in its batch at the level of the solver
tolerance (measured on a 2-D mixture at rtol=atol=1e-5, float64: see the docs page). Use
``per_sample=True`` (one solve per sample; slow) or ``chunk_size`` to make results independent
of the batch composition (per_sample) or of the batch size beyond a chunk.

**Distributed.** No collective operations are used: under ``torch.distributed`` each rank calls
:func:`log_likelihood` on its own shard of the data and the caller gathers the ``(B,)`` results.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
import torchdiffeq

from ._checks import NonFiniteError, check_batch, check_positive
from .bpd import bits_per_dim as _bits_per_dim
from .divergence import PROBES, draw_probes, score_divergence
from .integrate import ADAPTIVE_ODE_METHODS
from .sde import LinearSDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["LikelihoodResult", "log_likelihood", "log_likelihood_bound", "encode", "decode", "interpolate", "METHODS"]

METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "rk4", "midpoint", "euler", "explicit_adams", "implicit_adams")
_DIVERGENCES = ("exact", "hutchinson")


@dataclass
class LikelihoodResult:
    r"""What :func:`log_likelihood` returns (all tensors detached, shape ``(B,)`` unless stated).

    Attributes:
        log_prob: :math:`\log p_\varepsilon(x)` in nats (mean over probes for Hutchinson).
        stderr: standard error of ``log_prob`` from the probes,
            :math:`\mathrm{std}_k(\ell_k)/\sqrt{K}` (0 for the exact divergence; NaN for a single
            probe, where it cannot be estimated).
        prior_log_prob: :math:`\log\pi(z_T)`.
        delta_log_prob: :math:`\int_\varepsilon^T \nabla\cdot v\,dt` (mean over probes).
        nfe: number of score evaluations (each one also pays for the divergence's backward pass).
        z: the latent :math:`z_T`, shape of ``x``.
        per_probe: per-probe estimates :math:`\ell_k`, shape ``(B, K)`` (``(B, 1)`` for exact).
        bits_per_dim: :func:`~sdesolve_gen.bits_per_dim` of ``log_prob`` if ``data_range`` was
            given, else ``None`` (call :meth:`bpd`).
        wall_time: seconds spent.
    """

    log_prob: Tensor
    stderr: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    nfe: int
    z: Tensor
    per_probe: Tensor
    bits_per_dim: Optional[Tensor] = None
    wall_time: float = 0.0

    def bpd(self, data_range: Optional[Sequence[float]] = None, n_bins: int = 256) -> Tensor:
        """Bits per dimension of ``log_prob`` (see :func:`~sdesolve_gen.bits_per_dim`)."""
        return _bits_per_dim(self.log_prob, tuple(self.z.shape[1:]), data_range=data_range, n_bins=n_bins)


class _Augmented(torch.nn.Module):
    """Vector field of the augmented state ``(x, delta)`` in physical time (flattened x)."""

    def __init__(self, sde: LinearSDE, score_fn: ScoreFn, shape: Tuple[int, ...], probes: Optional[Tensor], t_lo: float, t_hi: float, chunk: Optional[int]) -> None:
        super().__init__()
        self.sde, self.score_fn, self.shape = sde, score_fn, shape
        self.probes, self.t_lo, self.t_hi, self.chunk = probes, t_lo, t_hi, chunk
        self.nfe = 0

    def forward(self, t: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
        x, _ = state
        t64 = t.detach().to(torch.float64).clamp(self.t_lo, self.t_hi)
        B, D = x.shape

        def score(xf: Tensor) -> Tensor:
            s = self.score_fn(xf.reshape(B, *self.shape), t64)
            if not isinstance(s, torch.Tensor) or s.shape != (B, *self.shape):
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"score_fn returned {got}, expected shape {(B, *self.shape)}")
            return s.reshape(B, D)

        s, div_s = score_divergence(score, x, self.probes, chunk=self.chunk)
        self.nfe += 1
        # one reduction: a sum is NaN/inf whenever an element is (overflow of finite values is
        # confirmed element-wise before raising)
        if not bool(torch.isfinite(s.sum() + div_s.sum())) and not (
            bool(torch.isfinite(s).all()) and bool(torch.isfinite(div_s).all())
        ):
            raise NonFiniteError(f"the score or its divergence became non-finite (NaN/inf) at t={float(t64):.6g}")
        a = self.sde.drift_coef(t64).to(x)
        g2 = self.sde.diffusion2(t64).to(x)
        dx = a * x - 0.5 * g2 * s
        ddelta = D * a - 0.5 * g2 * div_s
        return dx, ddelta


def _check_common(sde: Any, score_fn: Any, x: Any, method: str, rtol: float, atol: float) -> Tensor:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (e.g. VPSDE()), got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    x = check_batch("x", x)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one sample, got batch size 0")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or inf)")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    return x


def _solver_options(method: str, ts: Tensor, step_size: Optional[float]) -> dict:
    if method in ADAPTIVE_ODE_METHODS:
        return {"step_t": ts}
    # fixed-step: default 100 steps over the interval
    h = step_size if step_size is not None else float(abs(ts[-1] - ts[0])) / 100.0
    return {"step_size": h}


def _check_eps(sde: LinearSDE, eps: Optional[float]) -> float:
    if eps is None:
        return float(sde.eps)
    eps = check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
    return eps


def _prior_log_prob(sde: LinearSDE, prior: Any, z: Tensor) -> Tensor:
    if isinstance(prior, str):
        return sde.prior_log_prob(z)
    return prior.log_prob(z).to(z)


def _solve_chunk(sde, score_fn, x, probes, eps, method, rtol, atol, prior, step_size, div_chunk):
    B = x.shape[0]
    shape = tuple(x.shape[1:])
    xf = x.reshape(B, -1)
    K = 1 if probes is None else probes.shape[0]
    func = _Augmented(sde, score_fn, shape, probes, eps, float(sde.T), div_chunk)
    ts = torch.tensor([eps, float(sde.T)], dtype=torch.float64, device=x.device)
    delta0 = torch.zeros(B, K, dtype=x.dtype, device=x.device)
    opts = _solver_options(method, ts, step_size)
    with torch.no_grad():
        zs, deltas = torchdiffeq.odeint(func, (xf, delta0), ts, method=method, rtol=rtol, atol=atol, options=opts)
    z = zs[-1].reshape(x.shape)
    delta = deltas[-1]  # (B, K)
    prior_lp = _prior_log_prob(sde, prior, z)
    return z, delta, prior_lp, func.nfe


def log_likelihood(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    eps: Optional[float] = None,
    prior: Any = "standard",
    chunk_size: Optional[int] = None,
    per_sample: bool = False,
    progress: bool = False,
    data_range: Optional[Sequence[float]] = None,
    n_bins: int = 256,
    step_size: Optional[float] = None,
    divergence_chunk: Optional[int] = None,
) -> LikelihoodResult:
    r"""Log-likelihood :math:`\log p_\varepsilon(x)` by the probability-flow ODE.

    .. math:: \log p_\varepsilon(x) = \log\pi(z_T) + \int_\varepsilon^T \nabla\cdot v(x_t, t)\,dt,
              \quad v = a(t)\,x - \tfrac12 g(t)^2 s(x, t).

    Note this is the density of :math:`x_\varepsilon`, not of clean data :math:`x_0`; see
    :func:`log_likelihood_bound` for a bound on :math:`\log p_0(x_0)`.

    Args:
        sde: the forward linear SDE.
        score_fn: ``(x, t) -> score``, ``x`` of shape ``(B, *shape)``, ``t`` a 0-d float64 tensor;
            must be differentiable in ``x`` with its graph kept (raises ``ValueError`` otherwise).
        x: data, shape ``(B, *shape)``, finite.
        method: torchdiffeq method; adaptive ones (``dopri5`` default) use ``rtol``/``atol``,
            fixed-step ones use ``step_size`` (default ``(T - eps)/100``).
        rtol, atol: adaptive tolerances (applied to the whole state ``(x, delta)``).
        divergence: ``"exact"`` (Jacobian trace, ~D backward passes per evaluation) or
            ``"hutchinson"`` (``n_probes`` backward passes per evaluation).
        n_probes: number K of Hutchinson probes (drawn once per solve, held fixed; >= 1).
        probe: ``"rademacher"`` or ``"gaussian"``.
        generator: ``torch.Generator`` for the probes.
        eps: start time (default ``sde.eps``), in ``(0, T)``.
        prior: ``"standard"`` (``sde.prior_log_prob``) or an object with ``log_prob(z) -> (B,)``,
            e.g. ``data.prior(sde)`` (the exact :math:`p_T` of an analytic target).
        chunk_size: solve the batch in chunks of this many samples (bounds memory; each chunk
            has its own adaptive step sizes).
        per_sample: solve each sample on its own (results independent of the batch; slow).
        progress: show a tqdm bar over chunks.
        data_range, n_bins: if ``data_range`` is given, also fill ``bits_per_dim`` (see
            :func:`~sdesolve_gen.bits_per_dim`).
        step_size: step for fixed-step methods.
        divergence_chunk: basis vectors per backward pass for the exact trace (memory bound).

    Returns:
        :class:`LikelihoodResult`.

    Raises:
        ValueError: bad arguments (named), or a score without an autograd graph.
        NonFiniteError: NaN/inf in the score or its divergence (with the time).
    """
    x = _check_common(sde, score_fn, x, method, rtol, atol)
    if divergence not in _DIVERGENCES:
        raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    eps_f = _check_eps(sde, eps)
    if isinstance(prior, str):
        if prior != "standard":
            raise ValueError(f"prior must be 'standard' or an object with log_prob(z), got {prior!r}")
    elif not callable(getattr(prior, "log_prob", None)):
        raise TypeError(f"prior must be 'standard' or an object with a log_prob(z) method, got {type(prior).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if step_size is not None:
        check_positive("step_size", step_size)

    B = x.shape[0]
    D = x[0].numel()
    probes = None
    if divergence == "hutchinson":
        probes = draw_probes(probe, n_probes, torch.Size((B, D)), generator=generator, dtype=x.dtype, device=x.device)
    size = 1 if per_sample else (chunk_size or B)
    starts = list(range(0, B, size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="log_likelihood")
    t0 = _time.perf_counter()
    zs, deltas, priors, nfe = [], [], [], 0
    for i in starts:
        p = None if probes is None else probes[:, i : i + size]
        z, delta, plp, n = _solve_chunk(sde, score_fn, x[i : i + size], p, eps_f, method, rtol, atol, prior, step_size, divergence_chunk)
        zs.append(z)
        deltas.append(delta)
        priors.append(plp)
        nfe += n
    z = torch.cat(zs)
    delta = torch.cat(deltas)  # (B, K)
    prior_lp = torch.cat(priors)
    per_probe = prior_lp[:, None] + delta
    log_prob = per_probe.mean(1)
    K = per_probe.shape[1]
    if divergence == "exact":
        stderr = torch.zeros_like(log_prob)
    elif K == 1:
        stderr = torch.full_like(log_prob, float("nan"))
    else:
        stderr = per_probe.std(1, unbiased=True) / math.sqrt(K)
    res = LikelihoodResult(
        log_prob=log_prob,
        stderr=stderr,
        prior_log_prob=prior_lp,
        delta_log_prob=delta.mean(1),
        nfe=nfe,
        z=z,
        per_probe=per_probe,
        wall_time=_time.perf_counter() - t0,
    )
    if data_range is not None:
        res.bits_per_dim = res.bpd(data_range, n_bins)
    return res


def log_likelihood_bound(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    decoder_var: Optional[Union[float, Tensor]] = None,
    **kwargs: Any,
) -> Tuple[LikelihoodResult, Tensor]:
    r"""A variational lower bound on :math:`\log p_0(x_0)` that accounts for the ``t = eps`` gap.

    The ODE gives :math:`\log p_\varepsilon`, the density of the *noised* point
    :math:`x_\varepsilon \sim q(x_\varepsilon\mid x_0) = \mathcal N(\alpha x_0, \sigma^2 I)`
    (:math:`\alpha, \sigma` at ``eps``). Following the idea of Song et al. (2021, "Maximum
    likelihood training of score-based diffusion models"), a decoder
    :math:`p(x_0\mid x_\varepsilon)` closes the gap:

    .. math::

        \log p_0(x_0) \ge \mathbb E_{q(x_\varepsilon\mid x_0)}\big[\log p_\varepsilon(x_\varepsilon)
            + \log p(x_0\mid x_\varepsilon) - \log q(x_\varepsilon\mid x_0)\big].

    What is implemented: a single draw :math:`x_\varepsilon = \alpha x_0 + \sigma z` per sample
    (an unbiased estimate of the bound); the Gaussian decoder
    :math:`p(x_0\mid x_\varepsilon) = \mathcal N(\hat x_0, \tau^2 I)` with the Tweedie mean
    :math:`\hat x_0 = (x_\varepsilon + \sigma^2 s(x_\varepsilon, \varepsilon))/\alpha` and, by
    default, :math:`\tau^2 = \sigma^2/\alpha^2` (the posterior variance when the data density is
    flat on the scale :math:`\sigma/\alpha`); ``decoder_var`` overrides :math:`\tau^2`. If the
    decoder equals the true posterior (e.g. Gaussian data :math:`\mathcal N(\mu, s_0^2 I)` with
    :math:`\tau^2 = (1/s_0^2 + \alpha^2/\sigma^2)^{-1}`) the bound is tight for every draw. Valid
    for any linear SDE (VP, sub-VP, VE, ...).

    Args:
        sde, score_fn: as in :func:`log_likelihood`.
        x0: clean data, shape ``(B, *shape)``.
        generator: draws :math:`z` (and then the probes, if any).
        decoder_var: :math:`\tau^2` (scalar or ``(B,)``), default :math:`\sigma^2/\alpha^2`.
        **kwargs: passed to :func:`log_likelihood` (``eps`` sets the time of the bound).

    Returns:
        ``(result, bound)``: the :class:`LikelihoodResult` of :math:`x_\varepsilon` and the bound
        estimate, shape ``(B,)`` nats.
    """
    x0 = _check_common(sde, score_fn, x0, kwargs.get("method", "dopri5"), kwargs.get("rtol", 1e-5), kwargs.get("atol", 1e-5))
    eps_f = _check_eps(sde, kwargs.pop("eps", None))
    t = torch.tensor(eps_f, dtype=torch.float64)
    alpha = float(torch.exp(sde.log_alpha(t)))
    sigma2 = float(sde.sigma2(t))
    if decoder_var is None:
        tau2: Union[float, Tensor] = sigma2 / alpha**2
    elif isinstance(decoder_var, torch.Tensor):
        tau2 = decoder_var.to(x0)
        if tau2.dim() == 1:
            tau2 = tau2.reshape(-1, *([1] * (x0.dim() - 1)))
        if not bool((tau2 > 0).all()):
            raise ValueError("decoder_var must be > 0")
    else:
        tau2 = check_positive("decoder_var", decoder_var)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_eps = alpha * x0 + math.sqrt(sigma2) * z
    res = log_likelihood(sde, score_fn, x_eps, eps=eps_f, generator=generator, **kwargs)
    D = x0[0].numel()
    with torch.no_grad():
        s = score_fn(x_eps, t)
        x0_hat = (x_eps + sigma2 * s) / alpha
        tau2_t = torch.as_tensor(tau2, dtype=x0.dtype, device=x0.device)
        log_dec = (-0.5 * (x0 - x0_hat) ** 2 / tau2_t - 0.5 * torch.log(2 * math.pi * tau2_t)).flatten(1).sum(1)
        if log_dec.dim() == 0 or log_dec.shape[0] != x0.shape[0]:
            log_dec = log_dec.expand(x0.shape[0])
        log_q = -0.5 * z.flatten(1).pow(2).sum(1) - 0.5 * D * math.log(2 * math.pi * sigma2)
    return res, res.log_prob + log_dec - log_q


def _pf_velocity(sde: LinearSDE, score_fn: ScoreFn, t_lo: float, t_hi: float) -> Callable[[Tensor, Tensor], Tensor]:
    def v(t: Tensor, x: Tensor) -> Tensor:
        t64 = t.detach().to(torch.float64).clamp(t_lo, t_hi)
        s = score_fn(x, t64)
        if not bool(torch.isfinite(s).all()):
            raise NonFiniteError(f"score_fn's output became non-finite (NaN/inf) at t={float(t64):.6g}")
        return sde.drift_coef(t64).to(x) * x - 0.5 * sde.diffusion2(t64).to(x) * s

    return v


def _flow(sde, score_fn, x, t_from, t_to, method, rtol, atol, step_size):
    ts = torch.tensor([t_from, t_to], dtype=torch.float64, device=x.device)
    lo, hi = min(t_from, t_to), max(t_from, t_to)
    opts = _solver_options(method, ts, step_size)
    with torch.no_grad():
        return torchdiffeq.odeint(_pf_velocity(sde, score_fn, lo, hi), x, ts, method=method, rtol=rtol, atol=atol, options=opts)[-1]


def encode(
    sde: LinearSDE, score_fn: ScoreFn, x: Tensor, *, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    eps: Optional[float] = None, step_size: Optional[float] = None,
) -> Tensor:
    r"""Map data :math:`x_\varepsilon` to its latent :math:`z_T` by the probability-flow ODE (eps -> T).

    Args:
        x: shape ``(B, *shape)``. Other arguments as in :func:`log_likelihood`.

    Returns:
        ``z`` of the shape of ``x``.
    """
    x = _check_common(sde, score_fn, x, method, rtol, atol)
    return _flow(sde, score_fn, x, _check_eps(sde, eps), float(sde.T), method, rtol, atol, step_size)


def decode(
    sde: LinearSDE, score_fn: ScoreFn, z: Tensor, *, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    eps: Optional[float] = None, step_size: Optional[float] = None,
) -> Tensor:
    r"""Map a latent :math:`z_T` back to data :math:`x_\varepsilon` by the probability-flow ODE (T -> eps).

    Args:
        z: shape ``(B, *shape)``. Other arguments as in :func:`log_likelihood`.

    Returns:
        ``x`` of the shape of ``z``.
    """
    z = _check_common(sde, score_fn, z, method, rtol, atol)
    return _flow(sde, score_fn, z, float(sde.T), _check_eps(sde, eps), method, rtol, atol, step_size)


def interpolate(
    sde: LinearSDE, score_fn: ScoreFn, x_a: Tensor, x_b: Tensor, n: int, **kwargs: Any
) -> Tensor:
    r"""Spherical interpolation in latent space, decoded: ``(n, *shape)``.

    :math:`z(w) = \frac{\sin((1-w)\theta)}{\sin\theta} z_a + \frac{\sin(w\theta)}{\sin\theta} z_b`,
    :math:`\cos\theta = \langle z_a, z_b\rangle / (\|z_a\|\|z_b\|)`, ``w`` on ``n`` points of [0, 1].

    Args:
        x_a, x_b: two data points, shape ``(1, *shape)`` each.
        n: number of points (>= 2).
        **kwargs: passed to :func:`encode` and :func:`decode`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    x_a = check_batch("x_a", x_a)
    x_b = check_batch("x_b", x_b)
    if x_a.shape != x_b.shape or x_a.shape[0] != 1:
        raise ValueError(f"x_a and x_b must both have shape (1, *shape), got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    z = encode(sde, score_fn, torch.cat([x_a, x_b]), **kwargs)
    za, zb = z[0].flatten(), z[1].flatten()
    cos = torch.clamp(za @ zb / (za.norm() * zb.norm()), -1.0, 1.0)
    theta = torch.arccos(cos)
    w = torch.linspace(0.0, 1.0, n, dtype=z.dtype, device=z.device)[:, None]
    if float(theta) < 1e-6:
        zs = (1 - w) * za + w * zb
    else:
        zs = (torch.sin((1 - w) * theta) * za + torch.sin(w * theta) * zb) / torch.sin(theta)
    return decode(sde, score_fn, zs.reshape(n, *x_a.shape[1:]), **kwargs)

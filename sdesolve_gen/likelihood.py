r"""Log-likelihoods through the probability-flow ODE (instantaneous change of variables).

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
Hutchinson's estimator (:mod:`sdesolve_gen.divergence`); the linear drift's divergence
:math:`D\,a(t)` is always exact, only the score's divergence is estimated.

**Per-sample error control (default, ``error_control="per_sample"``).** torchdiffeq's default
norm is one RMS over every element of the whole batch, so a single hard point can carry errors
far above the tolerance (measured: max error 2400 x tol at B=256, d=16). Here the step-size
controller's norm is the *maximum over samples* of each sample's own error ratio, and the
log-density increment :math:`\delta` is controlled in *absolute* nats:

* every accepted step keeps, for **each** sample, the RMS over its ``D`` coordinates of the
  local error of ``x`` below ``atol + rtol * |x|`` (element-wise), and
* the local error of that sample's :math:`\delta` (each probe's) below ``atol`` nats (``rtol``
  does not apply to :math:`\delta`: a relative error of a log density has no meaning, and
  :math:`|\delta|` is ~D nats, which made the old tolerance ~D x looser than stated).

**What the tolerance means per sample.** ``atol`` is a per-sample budget in nats for
``log_prob``. The controller bounds local (per-step) errors and the global error is their sum,
so the controller is run at ``c * (rtol, atol)`` with a per-method factor ``c`` calibrated
against analytic densities (:data:`SOLVER_TOL_FACTOR`; 10 for the default ``dopri8``, whose
embedded error estimate overstates its true local error by orders of magnitude, 0.25 for
``dopri5_ps``, 1 for the other methods). Measured with the defaults on the benchmark mixtures (d = 2, 16, 64; VP, VE, sub-VP;
B = 256; tol 1e-5; see the docs page): the worst sample's error was at most 1.6 x ``atol``.
Diagnosis behind the choice: with dopri5 under the same per-sample norm the worst samples
erred by 20-66 x tol, on VP and sub-VP almost all of it in the log-density state (the ``x``
error and the prior term contributed < 1 x tol; on VE about a quarter came through the prior
term, from ``x`` errors at ``|z| ~ 180``), accumulated in the middle of the trajectory where the mixture's modes merge
and steps are smallest, not near ``eps``. ``error_estimate=True`` re-solves at ``tol / 10``
and reports the per-sample difference. The
absolute control on :math:`\delta` is realised by storing :math:`\delta\cdot 2^{-20}` in the
solver state (an exact power-of-two scaling, so no round-off changes) and undoing the scale in
the norm. ``error_control="batch"`` restores torchdiffeq's batch-shared default.

**Solver.** :func:`sdesolve_gen.odeint` with a tuple state ``(x, delta)``, times ``[eps, T]``
(adaptive methods land exactly on ``T``). The only other evaluation torchdiffeq may request
outside ``[eps, T]`` is the probe of its initial step-size heuristic; such a time is clamped
into ``[eps, T]`` before the score is called, so the score is never evaluated outside
``[eps, T]`` (tested). No autograd graph is held across steps: each evaluation differentiates
a detached copy of ``x`` and returns detached values.

**Batches share a step size** (torchdiffeq methods). Even with per-sample error control, all
samples of a chunk take the same steps, so a sample's result depends on its batch at the level of
the tolerance. ``per_sample=True`` (one solve per sample; slow) or ``chunk_size`` fix the
composition.

**Independent steps per sample** (``method="dopri5_ps"``, :data:`PER_SAMPLE_METHODS`). Every
sample has its own time, step, Dormand-Prince 5(4) error estimate and accept/reject decision
(:func:`sdesolve_gen.rk_batched.solve_per_sample`, same per-sample norm as above, controller at
:data:`SOLVER_TOL_FACTOR` ``= 0.25`` x tol); each batched score call advances all unfinished
samples at their own times, so ``score_fn`` receives ``t`` of shape ``(B,)``, and finished
samples leave the batch. A sample's result does not depend on its batch (bit-for-bit on scalar
ODEs; ``log_prob`` alone and in a batch agree to 1e-12 nats in the tests).
``nfe`` counts batched calls; ``extra["n_evals"]``, ``extra["n_steps"]`` and
``extra["n_rejected"]`` are per sample ``(B,)``. ``gbs8_ps`` is the extrapolated midpoint rule of
order 8 (17 calls per step; measured more expensive than ``dopri5_ps`` here). Both are also
available for :func:`encode` / :func:`decode`; with ``progress`` the bar shows the slowest sample's
progress in time (percent), the active samples and the batched calls.

**Distributed.** :func:`log_likelihood` itself uses no collective operations; see
:func:`dataset_log_likelihood` for a rank-sharded evaluation over a data set whose results are
identical to one process.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ._checks import (
    NonFiniteError,
    check_batch,
    check_bool,
    check_generator,
    check_in_data_range,
    check_positive,
    check_probe_options,
    check_score_output,
    checked_prior,
)
from ._gather import gather_in_order
from .bpd import bits_per_dim as _bits_per_dim
from .divergence import PROBES, DivergenceEngine, GaussianControlVariate, draw_probes
from .integrate import ADAPTIVE_ODE_METHODS, odeint, resolve_tolerances
from .reverse import check_model_kwargs, pf_velocity
from .rk_batched import DOPRI5, Tableau, extrapolation_tableau, rms_error_ratio, solve_per_sample
from .sde import LinearSDE
from .solution import Solution

Tensor = torch.Tensor
ScoreFn = Callable[..., Tensor]

__all__ = [
    "LikelihoodResult", "LikelihoodBound", "DatasetLikelihood", "log_likelihood", "log_likelihood_bound",
    "dataset_log_likelihood", "encode", "decode", "interpolate", "METHODS", "AUTO_EXACT_MAX_DIM", "SOLVER_TOL_FACTOR",
    "PER_SAMPLE_METHODS",
]

#: methods with an independent time, step and accept/reject decision per sample
#: (:mod:`sdesolve_gen.rk_batched`): Dormand-Prince 5(4) and the extrapolated midpoint rule 8(6)
PER_SAMPLE_METHODS: Mapping[str, Tableau] = MappingProxyType(
    {"dopri5_ps": DOPRI5, "gbs8_ps": extrapolation_tableau((2, 4, 6, 8))})
METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "rk4", "midpoint", "euler", "explicit_adams",
           "implicit_adams", *PER_SAMPLE_METHODS)
_DIVERGENCES = ("auto", "exact", "hutchinson")
_ERROR_CONTROLS = ("per_sample", "batch")
#: ``divergence="auto"`` uses the exact trace up to this many dimensions per sample, Hutchinson
#: above. Measured per evaluation, B = 16, float64, one thread (``python -m
#: benchmarks.likelihood_scaling --crossover``): exact / one-probe time was 3.2 at D = 16 and 106 at
#: D = 64 for an MLP score, 7.0 at D = 16 and 29 at D = 64 for the project's U-Net (``base=32``);
#: the old threshold (128, from MLPs only) made the digits U-Net pay ~30 probes' cost per step.
#: Pass ``divergence="exact"`` when probe noise must be zero.
AUTO_EXACT_MAX_DIM = 16
#: power-of-two scale of the stored log-density increment (see the module docstring)
_DELTA_SCALE = 2.0**-20
#: Per-sample control runs the step-size controller at ``factor * (rtol, atol)`` for these methods.
#: torchdiffeq's dopri8 error estimate (a blend of its 5th- and 3rd-order embedded solutions) is far
#: more pessimistic than its real local error: at ``tol = 1e-5`` the worst of 256 samples erred by
#: 0.01 x tol (GMM d=16, VP) for 3.6x the batch-shared dopri5 NFE. Measured max per-sample error
#: with factor 10: 0.2-1.6 x tol on the benchmark mixtures at tol 1e-5 (``benchmarks/likelihood.py``,
#: docs table) and within 10 x tol on the condition-100 mixture at tol 1e-6 (tested); factor 30
#: was cheaper (1.4-7.6 x tol on the mixtures) but erred by 13.5 x tol on that tested mixture.
#: ``dopri5_ps`` (independent steps per sample) runs at 0.25: its worst sample erred by 15.5 /
#: 8.0 / 3.4 x tol at factor 1 / 0.5 / 0.25 on GMM16-VE (B = 256, tol 1e-5) and by 17.5 / 10.6 /
#: 5.7 x tol on GMM64-VE (B = 64), almost all through the prior term (``x`` errors at large ``|z|``,
#: coherent over the ``D`` coordinates); at 0.25 every measured mixture stayed within 5.7 x tol
#: at B = 64 and within 5.9 x tol at B = 256 (GMM64-VE, ``benchmarks/likelihood_frontier.py``).
#: ``gbs8_ps`` runs at 0.1: on GMM2 / GMM16 (VP, VE, sub-VP; B = 256, tol 1e-5) its worst sample
#: erred by up to 73 / 10.6 / 1.5 x tol at factor 1 / 0.3 / 0.1 (0.1: 0.18-1.5 x tol, at 3.2-5.1x
#: the batched calls of the batch-shared dopri5, against 1.6-2.3x for ``dopri5_ps``).
SOLVER_TOL_FACTOR: Mapping[str, float] = MappingProxyType({"dopri8": 10.0, "dopri5_ps": 0.25, "gbs8_ps": 0.1})


@dataclass(kw_only=True, repr=False)
class LikelihoodResult(Solution):
    r"""What :func:`log_likelihood` returns: a :class:`~sdesolve_gen.Solution` whose ``x`` is the
    latent :math:`z_T` (all tensors detached, shape ``(B,)`` unless stated).

    Attributes:
        x: the latent :math:`z_T`, shape of the data (also available as ``z``).
        log_prob: :math:`\log p_\varepsilon(x)` in nats (mean over probes for Hutchinson).
        stderr: standard error of ``log_prob`` from the probes,
            :math:`\mathrm{std}_k(\ell_k)/\sqrt{K}` (0 for the exact divergence; NaN for a single
            probe, where it cannot be estimated).
        per_probe: per-probe estimates :math:`\ell_k`, shape ``(B, K)`` (``(B, 1)`` for exact).
        prior_log_prob: :math:`\log\pi(z_T)`.
        delta_log_prob: :math:`\int_\varepsilon^T \nabla\cdot v\,dt` (mean over probes).
        error_estimate: per-sample solver-error estimate ``|log_prob - log_prob(tol / 10)|``
            (same probes) if ``error_estimate=True`` was passed, else ``None``.
        bits_per_dim: :func:`~sdesolve_gen.bits_per_dim` of ``log_prob`` if ``data_range`` was
            given, else ``None`` (call :meth:`bpd`).
        divergence: ``"exact"`` or ``"hutchinson"`` (what ``"auto"`` resolved to).
        nfe, n_steps, n_rejected, wall_time: summed over chunks (and the tighter solve).
    """

    log_prob: Tensor
    stderr: Tensor
    per_probe: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    error_estimate: Optional[Tensor] = None
    bits_per_dim: Optional[Tensor] = None
    divergence: str = "exact"

    @property
    def z(self) -> Tensor:
        """The latent :math:`z_T` (same as ``x``)."""
        return self.x  # type: ignore[return-value]

    def bpd(self, data_range: Optional[Sequence[float]] = None, n_bins: int = 256) -> Tensor:
        """Bits per dimension of ``log_prob`` (see :func:`~sdesolve_gen.bits_per_dim`)."""
        return _bits_per_dim(self.log_prob, tuple(self.z.shape[1:]), data_range=data_range, n_bins=n_bins)

    def __repr__(self) -> str:
        return (
            f"LikelihoodResult(B={self.log_prob.shape[0]}, divergence={self.divergence!r}, "
            f"mean log_prob={float(self.log_prob.mean()):.6g}, method={self.method!r}, nfe={self.nfe}, "
            f"n_steps={self.n_steps}, n_rejected={self.n_rejected}, wall_time={self.wall_time:.3g})"
        )


@dataclass(kw_only=True)
class LikelihoodBound:
    r"""What :func:`log_likelihood_bound` returns (a named result; it does not unpack).

    Attributes:
        result: the :class:`LikelihoodResult` of the noised points :math:`x_\varepsilon`.
        bound: the bound estimate on :math:`\log p_0(x_0)`, ``(B,)`` nats.
        log_decoder: :math:`\log p(x_0\mid x_\varepsilon)`, ``(B,)``.
        log_q: :math:`\log q(x_\varepsilon\mid x_0)`, ``(B,)``.
    """

    result: LikelihoodResult
    bound: Tensor
    log_decoder: Tensor
    log_q: Tensor


def _slice_kwargs(kwargs: Dict[str, Any], B: int, sl: Union[slice, Tensor]) -> Dict[str, Any]:
    """Slice every tensor whose first dimension is the batch size (conditioning per sample)."""
    return {k: (v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == B else v) for k, v in kwargs.items()}


def _sample_ratio(rx: Tensor, rd: Tensor) -> Tensor:
    """Per sample (``(B,)``): max(RMS over D of the x error ratios ``rx`` ``(B, D)``, max over the
    K probes of the log-density error ratios ``|rd|`` ``(B, K)``): the one per-sample norm of both
    the shared-step and the independent-step solves."""
    return torch.maximum(rx.reshape(rx.shape[0], -1).pow(2).mean(1).sqrt(), rd.abs().amax(1))


def _per_sample_norm(scale: float) -> Callable[[Tuple[Tensor, Tensor]], Tensor]:
    """torchdiffeq ``norm`` (it receives error ratios already divided by ``atol + rtol |y|``):
    the max over samples of :func:`_sample_ratio`, the delta ratio undone by ``scale`` (the stored
    increment is ``delta * scale``, so its ratio is in units of ``atol`` nats)."""

    def norm(ratios: Tuple[Tensor, Tensor]) -> Tensor:
        ex, ed = ratios
        return _sample_ratio(ex, ed / scale).max()

    return norm


class _Augmented(torch.nn.Module):
    """Vector field of the augmented state ``(x, delta * scale)`` in physical time (flattened x)."""

    differentiable = False  # sg.odeint detaches the initial state: no graph across steps

    def __init__(self, sde: LinearSDE, score_fn: ScoreFn, shape: Tuple[int, ...], probes: Optional[Tensor],
                 t_lo: float, t_hi: float, chunk: Optional[int], kwargs: Dict[str, Any], scale: float,
                 batch: int = 0, control: Optional[GaussianControlVariate] = None) -> None:
        super().__init__()
        self.batch = batch  # full batch size: per-sample solves pass the active samples' index
        self.sde, self.score_fn, self.shape = sde, score_fn, shape
        self.probes, self.t_lo, self.t_hi = probes, t_lo, t_hi
        self.kwargs, self.scale = kwargs, scale
        self.engine = DivergenceEngine(chunk)
        self.control = control

    def forward(self, t: Tensor, state: Tuple[Tensor, Tensor], index: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``t`` 0-d, or ``(B,)`` per-sample times with ``index`` ``(B,)`` the samples' positions in the batch."""
        x, _ = state
        t64 = t.detach().to(torch.float64).clamp(self.t_lo, self.t_hi)
        B, D = x.shape
        shape, kwargs, probes = (B, *self.shape), self.kwargs, self.probes
        if index is not None:
            kwargs = _slice_kwargs(kwargs, self.batch, index)
            probes = None if probes is None else probes[:, index]

        def score(xf: Tensor) -> Tensor:
            xs = xf.reshape(shape)
            return check_score_output(self.score_fn(xs, t64, **kwargs), xs).reshape(B, D)

        s, div_s = self.engine(score, x, probes)
        if self.control is not None and probes is not None:
            div_s = div_s + self.control.correction(self.sde, t64, probes)
        # one reduction: a sum is NaN/inf whenever an element is (overflow of finite values is
        # confirmed element-wise before raising)
        if not bool(torch.isfinite(s.sum() + div_s.sum())) and not (
            bool(torch.isfinite(s).all()) and bool(torch.isfinite(div_s).all())
        ):
            where = f"{float(t64):.6g}" if t64.dim() == 0 else f"one of {float(t64.min()):.6g}..{float(t64.max()):.6g}"
            raise NonFiniteError(f"the score or its divergence became non-finite (NaN/inf) at t={where}")
        a = self.sde.drift_coef(t64).to(x)
        g2 = self.sde.diffusion2(t64).to(x)
        if t64.dim() == 1:
            a, g2 = a[:, None], g2[:, None]
        dx = pf_velocity(self.sde, x, s, t64)
        ddelta = D * a - 0.5 * g2 * div_s
        return dx, ddelta * self.scale


def _check_common(sde: Any, score_fn: Any, x: Any, method: str, rtol: Optional[float],
                  atol: Optional[float]) -> Tuple[Tensor, Optional[float], Optional[float]]:
    """The checked ``x`` and the tolerances ``method`` uses (:func:`~sdesolve_gen.integrate.resolve_tolerances`)."""
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
    rtol, atol = resolve_tolerances(method, rtol, atol)
    return x, rtol, atol


def _check_step_size(method: str, step_size: Optional[float]) -> None:
    """``step_size`` is positive and given only to fixed-step methods (adaptive ones would ignore it)."""
    if step_size is None:
        return
    check_positive("step_size", step_size)
    if method in ADAPTIVE_ODE_METHODS or method in PER_SAMPLE_METHODS:
        raise ValueError(f"step_size only applies to fixed-step methods; method={method!r} is adaptive "
                         "(it uses rtol/atol) and would ignore it")


#: fixed-step methods' default number of equal steps over ``[eps, T]`` (when no ``step_size`` is given)
DEFAULT_FIXED_STEPS = 100


def _uniform_grid(f: Any, y0: Any, t: Tensor) -> Tensor:
    """torchdiffeq ``grid_constructor``: :data:`DEFAULT_FIXED_STEPS` equal steps from ``t[0]`` to
    ``t[-1]`` (exactly that many; ``step_size = (T - eps) / 100`` can round up to 101 steps)."""
    return torch.linspace(float(t[0]), float(t[-1]), DEFAULT_FIXED_STEPS + 1, dtype=t.dtype, device=t.device)


def _solver_options(method: str, step_size: Optional[float]) -> dict:
    _check_step_size(method, step_size)
    if method in ADAPTIVE_ODE_METHODS:
        return {}
    if step_size is None:
        return {"grid_constructor": _uniform_grid}
    return {"step_size": step_size}


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


def _per_sample_ratio(rtol: float, atol: float) -> Callable[[Tuple[Tensor, ...], Tuple[Tensor, ...], Tuple[Tensor, ...]], Tensor]:
    """Per sample (``(B,)``): max(RMS_D of e_x / (atol + rtol max(|x|, |x+|)), max_K |e_delta| / atol)."""

    def ratio(err: Tuple[Tensor, ...], y0: Tuple[Tensor, ...], y1: Tuple[Tensor, ...]) -> Tensor:
        ex, ed = err
        return _sample_ratio(ex / (atol + rtol * torch.maximum(y0[0].abs(), y1[0].abs())), ed / atol)

    return ratio


def _solve_chunk_independent(sde, score_fn, x, probes, eps, method, rtol, atol, prior, div_chunk, kwargs, cv=None,
                             progress=False):
    """One chunk under :func:`~sdesolve_gen.rk_batched.solve_per_sample` (own steps per sample)."""
    B = x.shape[0]
    K = 1 if probes is None else probes.shape[0]
    func = _Augmented(sde, score_fn, tuple(x.shape[1:]), probes, eps, float(sde.T), div_chunk, kwargs, 1.0, batch=B, control=cv)
    factor = SOLVER_TOL_FACTOR.get(method, 1.0)
    t0 = _time.perf_counter()
    with torch.no_grad():
        sol = solve_per_sample(lambda t, y, i: func(t, (y[0], y[1]), i), (x.reshape(B, -1), x.new_zeros(B, K)), eps,
                               float(sde.T), error_ratio=_per_sample_ratio(factor * rtol, factor * atol),
                               tableau=PER_SAMPLE_METHODS[method], progress=progress)
    zf, delta = sol.y
    z = zf.reshape(x.shape)
    out = Solution(x=(zf, delta), method=method, nfe=sol.nfe, n_steps=int(sol.n_steps.max()),
                   n_rejected=int(sol.n_rejected.max()), wall_time=_time.perf_counter() - t0,
                   extra={"n_evals": sol.n_evals, "n_steps": sol.n_steps, "n_rejected": sol.n_rejected,
                          "active_sizes": sol.active_sizes})
    return z, delta, _prior_log_prob(sde, prior, z), out


def _solve_chunk(sde, score_fn, x, probes, eps, method, rtol, atol, prior, step_size, div_chunk, kwargs, control, progress,
                 cv=None):
    if method in PER_SAMPLE_METHODS:
        return _solve_chunk_independent(sde, score_fn, x, probes, eps, method, rtol, atol, prior, div_chunk, kwargs, cv,
                                        progress)
    B = x.shape[0]
    shape = tuple(x.shape[1:])
    xf = x.reshape(B, -1)
    K = 1 if probes is None else probes.shape[0]
    per_sample = control == "per_sample" and method in ADAPTIVE_ODE_METHODS
    scale = _DELTA_SCALE if per_sample else 1.0
    func = _Augmented(sde, score_fn, shape, probes, eps, float(sde.T), div_chunk, kwargs, scale, control=cv)
    ts = torch.tensor([eps, float(sde.T)], dtype=torch.float64, device=x.device)
    delta0 = torch.zeros(B, K, dtype=x.dtype, device=x.device)
    opts = _solver_options(method, step_size)
    if per_sample:
        opts["norm"] = _per_sample_norm(scale)
        factor = SOLVER_TOL_FACTOR.get(method, 1.0)
        rtol, atol = factor * rtol, factor * atol
    with torch.no_grad():
        sol = odeint(func, (xf, delta0), ts, method=method, rtol=rtol, atol=atol, options=opts, save="final", progress=progress)
    zf, dscaled = sol.x
    z = zf.reshape(x.shape)
    delta = dscaled / scale  # (B, K), exact: scale is a power of two
    return z, delta, _prior_log_prob(sde, prior, z), sol


def _per_sample_counts(sols: List[Solution]) -> Dict[str, Tensor]:
    """Per-sample ``n_evals`` / ``n_steps`` / ``n_rejected`` ``(B,)`` of independent-step solves ({} otherwise)."""
    if not sols or "n_evals" not in sols[0].extra:
        return {}
    return {k: torch.cat([s.extra[k] for s in sols]) for k in ("n_evals", "n_steps", "n_rejected")}


def _resolve_divergence(divergence: Any, D: int) -> str:
    if isinstance(divergence, GaussianControlVariate):
        if divergence.dim != D:
            raise ValueError(f"divergence: the GaussianControlVariate has D={divergence.dim}, but x has D={D} per sample")
        return "hutchinson"
    if not isinstance(divergence, str) or divergence not in _DIVERGENCES:
        raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}")
    if divergence == "auto":
        return "exact" if D <= AUTO_EXACT_MAX_DIM else "hutchinson"
    return divergence


def log_likelihood(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    method: str = "dopri8",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    divergence: Union[str, GaussianControlVariate] = "auto",
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    probes: Optional[Tensor] = None,
    eps: Optional[float] = None,
    prior: Any = "standard",
    chunk_size: Optional[int] = None,
    per_sample: bool = False,
    error_control: str = "per_sample",
    error_estimate: bool = False,
    progress: bool = False,
    data_range: Optional[Sequence[float]] = None,
    n_bins: int = 256,
    step_size: Optional[float] = None,
    divergence_chunk: Optional[int] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> LikelihoodResult:
    r"""Log-likelihood :math:`\log p_\varepsilon(x)` by the probability-flow ODE.

    .. math:: \log p_\varepsilon(x) = \log\pi(z_T) + \int_\varepsilon^T \nabla\cdot v(x_t, t)\,dt,
              \quad v = a(t)\,x - \tfrac12 g(t)^2 s(x, t).

    Note this is the density of :math:`x_\varepsilon`, not of clean data :math:`x_0`; see
    :func:`log_likelihood_bound` for a bound on :math:`\log p_0(x_0)`.

    Args:
        sde: the forward linear SDE.
        score_fn: ``(x, t, **model_kwargs) -> score``, ``x`` of shape ``(B, *shape)``, ``t`` a 0-d
            float64 tensor (``(B,)`` per-sample times for :data:`PER_SAMPLE_METHODS`); must be
            differentiable in ``x`` with its graph kept (raises ``ValueError`` otherwise).
        x: data, shape ``(B, *shape)``, finite.
        method: torchdiffeq method; adaptive ones (``dopri8`` default) use ``rtol``/``atol``,
            fixed-step ones use ``step_size`` (default: exactly 100 equal steps of ``(T - eps)/100``); ``"dopri5_ps"`` /
            ``"gbs8_ps"``: independent steps per sample (see the module docstring; needs
            ``error_control="per_sample"``).
        rtol, atol: adaptive tolerances (default ``1e-5`` each; fixed-step methods refuse them). With ``error_control="per_sample"`` (default) ``atol``
            is the per-sample budget of ``log_prob`` in nats: per sample and per step, the RMS
            local error estimate of ``x`` is kept below ``c (atol + rtol|x|)`` and that of the
            log-density increment below ``c atol`` nats, with ``c`` =
            :data:`~sdesolve_gen.likelihood.SOLVER_TOL_FACTOR` for the method (10 for dopri8, whose
            embedded estimate is pessimistic; 0.25 for dopri5_ps; 1 otherwise). Measured with the defaults: max
            per-sample error 0.2-1.6 x ``atol`` on the benchmark mixtures (see the module docstring).
        divergence: ``"auto"`` (default: ``"exact"`` for ``D <=`` :data:`~sdesolve_gen.likelihood.AUTO_EXACT_MAX_DIM`, else
            ``"hutchinson"``), ``"exact"`` (Jacobian trace, ``D`` backward passes per evaluation)
            or ``"hutchinson"`` (``n_probes`` backward passes per evaluation), or a
            :class:`~sdesolve_gen.divergence.GaussianControlVariate` (Hutchinson with a Gaussian
            fit's score Jacobian as control variate: same cost; measured 1.2x lower per-probe
            variance on the digits U-Net, but higher on strongly non-Gaussian mixtures).
        n_probes: number K of Hutchinson probes (drawn once per solve, held fixed; >= 1).
        probe: ``"rademacher"`` (default; lower variance) or ``"gaussian"``.
        generator: ``torch.Generator`` for the probes.
        probes: explicit probes ``(K, B, D)`` (overrides ``n_probes``/``probe``/``generator``).
        eps: start time (default ``sde.eps``), in ``(0, T)``.
        prior: ``"standard"`` (``sde.prior_log_prob``) or an object with ``log_prob(z) -> (B,)``,
            e.g. ``data.prior(sde)`` (the exact :math:`p_T` of an analytic target).
        chunk_size: solve the batch in chunks of this many samples (bounds memory; each chunk
            has its own adaptive step sizes).
        per_sample: solve each sample on its own (results independent of the batch; slow).
        error_control: ``"per_sample"`` (default) or ``"batch"`` (torchdiffeq's norm shared by the
            whole batch, with ``rtol`` also applied to the log-density increment).
        error_estimate: also solve at ``rtol/10, atol/10`` with the same probes and report
            ``|log_prob - tighter|`` per sample in ``error_estimate`` (about 1.6x the cost).
        progress: tqdm bars over accepted solver steps (and over chunks when there are several).
        data_range, n_bins: if ``data_range`` is given, also fill ``bits_per_dim`` (see
            :func:`~sdesolve_gen.bits_per_dim`).
        step_size: step for fixed-step methods.
        divergence_chunk: basis vectors per vectorised backward pass for the exact trace
            (default :func:`~sdesolve_gen.divergence.default_chunk`; memory ``chunk * B * D``).
        model_kwargs: keyword arguments for every ``score_fn`` call (conditioning); tensors
            whose first dimension is ``B`` are sliced with the samples (per chunk / per sample).

    Returns:
        :class:`LikelihoodResult`.

    Raises:
        ValueError: bad arguments (named), or a score without an autograd graph.
        NonFiniteError: NaN/inf in the score or its divergence (with the time).
    """
    prior = checked_prior(prior)  # a user prior's log_prob must return exactly (B,)
    check_probe_options(divergence, n_probes, probe, probes)
    if isinstance(x, torch.Tensor):
        check_in_data_range("x", x, data_range)
        check_generator(generator, x.device, "x")
    x, rtol, atol = _check_common(sde, score_fn, x, method, rtol, atol)
    if check_bool("error_estimate", error_estimate) and rtol is None:
        raise ValueError(f"error_estimate needs an adaptive method (it re-solves at rtol/10, atol/10); method={method!r} "
                         "is fixed-step and would solve the same grid twice")
    B = x.shape[0]
    D = x[0].numel()
    div = _resolve_divergence(divergence, D)
    cv = divergence if isinstance(divergence, GaussianControlVariate) else None
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if error_control not in _ERROR_CONTROLS:
        raise ValueError(f"error_control must be one of {_ERROR_CONTROLS}, got {error_control!r}")
    if error_control == "batch" and method in PER_SAMPLE_METHODS:
        raise ValueError(f"error_control='batch' needs a shared-step method; method={method!r} controls each sample on its own")
    eps_f = _check_eps(sde, eps)
    if isinstance(prior, str):
        if prior != "standard":
            raise ValueError(f"prior must be 'standard' or an object with log_prob(z), got {prior!r}")
    elif not callable(getattr(prior, "log_prob", None)):
        raise TypeError(f"prior must be 'standard' or an object with a log_prob(z) method, got {type(prior).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    _check_step_size(method, step_size)
    kwargs = check_model_kwargs(model_kwargs)
    if div == "hutchinson":
        if probes is None:
            probes = draw_probes(probe, n_probes, torch.Size((B, D)), generator=generator, dtype=x.dtype, device=x.device)
        elif not isinstance(probes, torch.Tensor) or probes.dim() != 3 or tuple(probes.shape[1:]) != (B, D):
            raise ValueError(f"probes must be a tensor of shape (K, {B}, {D})")
        probes = probes.to(x)
    else:
        probes = None
    size = 1 if per_sample else (chunk_size or B)
    starts: Iterable[int] = list(range(0, B, size))
    if progress and B > size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="log_likelihood", unit="chunk")
    t0 = _time.perf_counter()

    def run(rt: Optional[float], at: Optional[float], chunks: Iterable[int]) -> Tuple[Tensor, Tensor, Tensor, List[Solution]]:
        zs, deltas, priors, sols = [], [], [], []
        for i in chunks:
            sl = slice(i, i + size)
            p = None if probes is None else probes[:, sl]
            z, delta, plp, sol = _solve_chunk(sde, score_fn, x[sl], p, eps_f, method, rt, at, prior, step_size,
                                              divergence_chunk, _slice_kwargs(kwargs, B, sl), error_control, progress, cv)
            zs.append(z)
            deltas.append(delta)
            priors.append(plp)
            sols.append(sol)
        return torch.cat(zs), torch.cat(deltas), torch.cat(priors), sols

    z, delta, prior_lp, sols = run(rtol, atol, starts)
    counts = _per_sample_counts(sols)  # of this solve (not the tighter error-estimate one)
    per_probe = prior_lp[:, None] + delta
    log_prob = per_probe.mean(1)
    K = per_probe.shape[1]
    if div == "exact":
        stderr = torch.zeros_like(log_prob)
    elif K == 1:
        stderr = torch.full_like(log_prob, float("nan"))
    else:
        stderr = per_probe.std(1, unbiased=True) / math.sqrt(K)
    err = None
    if error_estimate and rtol is not None and atol is not None:  # not None: checked above
        _, d2, p2, sols2 = run(rtol / 10, atol / 10, range(0, B, size))
        signed = log_prob - (p2[:, None] + d2).mean(1)
        err = signed.abs()
        sols = sols + sols2
    res = LikelihoodResult(
        x=z, method=f"pf-ode likelihood ({sols[0].method})",
        nfe=sum(s.nfe for s in sols), n_steps=sum(s.n_steps for s in sols), n_rejected=sum(s.n_rejected for s in sols),
        wall_time=_time.perf_counter() - t0,
        extra={"method": method, "rtol": rtol, "atol": atol, "error_control": error_control, "eps": eps_f, "n_chunks": len(sols) // (2 if error_estimate else 1),
               "signed_error": signed if error_estimate else None, **counts},
        log_prob=log_prob, stderr=stderr, per_probe=per_probe, prior_log_prob=prior_lp, delta_log_prob=delta.mean(1),
        error_estimate=err, divergence=div,
    )
    if data_range is not None:
        res.bits_per_dim = res.bpd(data_range, n_bins)
    return res


@dataclass(kw_only=True)
class DatasetLikelihood:
    r"""What :func:`dataset_log_likelihood` returns: per-sample values in data-set order and the
    mean bits/dim with its error split into the estimator's and the data's.

    Attributes:
        log_prob: :math:`\log p_\varepsilon(x_i)`, ``(N,)`` nats.
        bits_per_dim: per-sample bits/dim, ``(N,)`` (discrete code length if ``data_range`` was
            given, else continuous).
        stderr: per-sample probe standard error of ``log_prob`` (0 exact, NaN for one probe).
        error_estimate: per-sample ``|log_prob - log_prob(tol/10)|`` or ``None``.
        mean_bpd: mean of ``bits_per_dim`` over the data set.
        data_stderr: :math:`\mathrm{std}_i(\mathrm{bpd}_i)/\sqrt N`, the spread of the data (how far
            the test-set mean is from the population mean); includes probe noise when ``K = 1``.
        probe_stderr: standard error of ``mean_bpd`` from the probes,
            :math:`\sqrt{\sum_i \mathrm{se}_i^2}/N` in bits/dim (0 exact; NaN for ``K = 1``).
        solver_error: :math:`|\mathrm{mean}_i(\ell_i - \ell_i^{tol/10})|` in bits/dim if
            ``error_estimate`` was requested, else ``None`` (the solver's bias of the mean).
        nfe, wall_time: summed over this rank's batches (nfe: all ranks).
        world_size: number of ranks that shared the work.
    """

    log_prob: Tensor
    bits_per_dim: Tensor
    stderr: Tensor
    error_estimate: Optional[Tensor]
    mean_bpd: float
    data_stderr: float
    probe_stderr: float
    solver_error: Optional[float]
    nfe: int
    wall_time: float
    world_size: int = 1


def _batches(data: Any, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"data batches must be tensors or (tensor, ...) tuples, got {type(item).__name__}")
        yield item


def dataset_log_likelihood(
    sde: LinearSDE,
    score_fn: ScoreFn,
    data: Any,
    *,
    batch_size: int = 256,
    seed: int = 0,
    data_range: Optional[Sequence[float]] = None,
    n_bins: int = 256,
    distributed: Optional[bool] = None,
    **kwargs: Any,
) -> DatasetLikelihood:
    r"""Bits/dim of a whole data set (a tensor or an iterable of batches such as a ``DataLoader``).

    Batch ``k`` (of ``batch_size`` samples for a tensor, or as the loader yields them) is solved by
    :func:`log_likelihood` with probes from ``torch.Generator().manual_seed(seed + k)``. Under
    ``torch.distributed`` (``distributed=None``: whenever it is initialised), rank ``r`` solves
    the batches ``k`` with ``k % world_size == r`` and the per-sample results are gathered
    (``all_gather_object``, works with gloo) back into data-set order, so every rank returns
    exactly what one process would (same batches, same probes, same steps). A DataLoader must
    then yield the same batches on every rank (no ``DistributedSampler``: sharding is done here).

    The reported error of ``mean_bpd`` is split: ``probe_stderr`` (Hutchinson noise, needs
    ``n_probes >= 2``) and ``solver_error`` (``error_estimate=True``) are the estimator's error;
    ``data_stderr`` is the data's own spread.

    Args:
        sde, score_fn: as in :func:`log_likelihood`.
        data: ``(N, *shape)`` tensor, or an iterable of tensors / ``(tensor, ...)`` tuples.
        batch_size: for a tensor input.
        seed: base seed of the per-batch probe generators.
        data_range, n_bins: as in :func:`~sdesolve_gen.bits_per_dim` (``None``: continuous).
        distributed: shard over ranks (default: if ``torch.distributed`` is initialised).
        **kwargs: passed to :func:`log_likelihood` (``divergence``, ``n_probes``, ``rtol``, ...;
            ``model_kwargs`` tensors are not sliced per batch here: pass per-sample conditioning
            through the loader instead). With ``progress=True`` there is also a bar over this
            rank's batches showing the running mean bits/dim of the batches solved so far.

    Returns:
        :class:`DatasetLikelihood`.
    """
    if isinstance(data, torch.Tensor):  # (an iterable of batches is not range-checked here)
        check_in_data_range("data", data, data_range)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if "generator" in kwargs or "probes" in kwargs:
        raise ValueError("dataset_log_likelihood draws its own probes per batch from seed; do not pass generator/probes")
    import torch.distributed as dist

    use_dist = (dist.is_available() and dist.is_initialized()) if distributed is None else bool(distributed)
    rank, world = (dist.get_rank(), dist.get_world_size()) if use_dist else (0, 1)
    t0 = _time.perf_counter()
    mine: List[Tuple[int, Dict[str, Any]]] = []
    shape: Optional[Tuple[int, ...]] = None
    batches: Iterable[Tensor] = _batches(data, batch_size)
    bar, bpd_sum, bpd_n = None, 0.0, 0
    if kwargs.get("progress", False):  # a bar over this rank's batches, with the running mean bits/dim
        from tqdm.auto import tqdm

        n_all = math.ceil(data.shape[0] / batch_size) if isinstance(data, torch.Tensor) else (len(data) if hasattr(data, "__len__") else None)
        bar = tqdm(desc=f"dataset_log_likelihood[rank {rank}]", unit="batch", leave=False,
                   total=None if n_all is None else len(range(rank, n_all, world)))
    try:
        for k, xb in enumerate(batches):
            shape = tuple(xb.shape[1:])
            if k % world != rank:
                continue
            res = log_likelihood(sde, score_fn, xb, generator=torch.Generator().manual_seed(seed + k), **kwargs)
            mine.append((k, {"log_prob": res.log_prob.cpu(), "stderr": res.stderr.cpu(), "nfe": res.nfe,
                             "err": None if res.error_estimate is None else res.error_estimate.cpu(),
                             "signed": None if res.error_estimate is None else res.extra.get("signed_error")}))
            if bar is not None:  # running mean from running sums (no re-concatenation per batch)
                bpd_sum += float(_bits_per_dim(res.log_prob, shape, data_range=data_range, n_bins=n_bins).sum())
                bpd_n += res.log_prob.numel()
                bar.set_postfix(bpd=f"{bpd_sum / bpd_n:.4f}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if shape is None:
        raise ValueError("data holds no samples")
    allb = gather_in_order(mine, world, use_dist)
    lp = torch.cat([b["log_prob"] for _, b in allb])
    se = torch.cat([b["stderr"] for _, b in allb])
    D = math.prod(shape)
    bpd = _bits_per_dim(lp, shape, data_range=data_range, n_bins=n_bins)
    N = lp.numel()
    to_bits = 1.0 / (D * math.log(2.0))
    has_err = all(b["err"] is not None for _, b in allb)
    err = torch.cat([b["err"] for _, b in allb]) if has_err else None
    signed = torch.cat([b["signed"] for _, b in allb]) if has_err else None
    return DatasetLikelihood(
        log_prob=lp, bits_per_dim=bpd, stderr=se, error_estimate=err,
        mean_bpd=float(bpd.mean()),
        data_stderr=float(bpd.std()) / math.sqrt(N) if N > 1 else float("nan"),
        probe_stderr=float(se.pow(2).sum().sqrt()) / N * to_bits,
        solver_error=None if signed is None else abs(float(signed.mean())) * to_bits,
        nfe=sum(b["nfe"] for _, b in allb), wall_time=_time.perf_counter() - t0, world_size=world,
    )


def log_likelihood_bound(
    sde: LinearSDE,
    score_fn: ScoreFn,
    x0: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    decoder_var: Optional[Union[float, Tensor]] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> LikelihoodBound:
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
        model_kwargs: keyword arguments for every score call (as in :func:`log_likelihood`).
        **kwargs: passed to :func:`log_likelihood` (``eps`` sets the time of the bound).

    Returns:
        :class:`LikelihoodBound` with ``.result`` (the :class:`LikelihoodResult` of
        :math:`x_\varepsilon`) and ``.bound`` (shape ``(B,)`` nats). It is not a tuple.
    """
    x0 = _check_common(sde, score_fn, x0, kwargs.get("method", "dopri8"), kwargs.get("rtol"), kwargs.get("atol"))[0]
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
    mk = check_model_kwargs(model_kwargs)
    res = log_likelihood(sde, score_fn, x_eps, eps=eps_f, generator=generator, model_kwargs=mk, **kwargs)
    D = x0[0].numel()
    with torch.no_grad():
        s = score_fn(x_eps, t, **mk)
        x0_hat = (x_eps + sigma2 * s) / alpha
        tau2_t = torch.as_tensor(tau2, dtype=x0.dtype, device=x0.device)
        log_dec = (-0.5 * (x0 - x0_hat) ** 2 / tau2_t - 0.5 * torch.log(2 * math.pi * tau2_t)).flatten(1).sum(1)
        if log_dec.dim() == 0 or log_dec.shape[0] != x0.shape[0]:
            log_dec = log_dec.expand(x0.shape[0])
        log_q = -0.5 * z.flatten(1).pow(2).sum(1) - 0.5 * D * math.log(2 * math.pi * sigma2)
    return LikelihoodBound(result=res, bound=res.log_prob + log_dec - log_q, log_decoder=log_dec, log_q=log_q)


class _Flow(torch.nn.Module):
    """Probability-flow velocity with times clamped into the solve's interval (no graph across steps).

    ``t`` is 0-d (one solve for the batch), or ``(b,)`` per-sample times with ``index`` ``(b,)`` the
    active samples' positions in the full batch of ``batch`` samples (independent-step solves:
    per-sample ``model_kwargs`` are sliced to follow their samples)."""

    differentiable = False

    def __init__(self, sde: LinearSDE, score_fn: ScoreFn, lo: float, hi: float, kwargs: Dict[str, Any], batch: int = 0) -> None:
        super().__init__()
        self.sde, self.score_fn, self.lo, self.hi, self.kwargs, self.batch = sde, score_fn, lo, hi, kwargs, batch

    def forward(self, t: Tensor, x: Tensor, index: Optional[Tensor] = None) -> Tensor:
        t64 = t.detach().to(torch.float64).clamp(self.lo, self.hi)
        kwargs = self.kwargs if index is None else _slice_kwargs(self.kwargs, self.batch, index)
        s = self.score_fn(x, t64, **kwargs)
        if not bool(torch.isfinite(s).all()):
            where = f"t={float(t64):.6g}" if t64.dim() == 0 else f"one of t={float(t64.min()):.6g}..{float(t64.max()):.6g}"
            raise NonFiniteError(f"score_fn's output became non-finite (NaN/inf) at {where}")
        return pf_velocity(self.sde, x, s, t64)


def _flow(sde, score_fn, x, t_from, t_to, method, rtol, atol, step_size, model_kwargs, progress=False):
    lo, hi = min(t_from, t_to), max(t_from, t_to)
    kwargs = check_model_kwargs(model_kwargs)
    if method in PER_SAMPLE_METHODS:
        _check_step_size(method, step_size)
        B = x.shape[0]
        func = _Flow(sde, score_fn, lo, hi, kwargs, batch=B)
        factor = SOLVER_TOL_FACTOR.get(method, 1.0)
        with torch.no_grad():
            sol = solve_per_sample(lambda t, y, i: (func(t, y[0], i),), (x,), t_from, t_to,
                                   error_ratio=rms_error_ratio(factor * rtol, factor * atol),
                                   tableau=PER_SAMPLE_METHODS[method], progress=progress)
        return sol.y[0]
    opts = _solver_options(method, step_size)
    ts = torch.tensor([t_from, t_to], dtype=torch.float64, device=x.device)
    func = _Flow(sde, score_fn, lo, hi, kwargs)
    with torch.no_grad():
        return odeint(func, x, ts, method=method, rtol=rtol, atol=atol, options=opts, save="final", progress=progress).x


def encode(
    sde: LinearSDE, score_fn: ScoreFn, x: Tensor, *, method: str = "dopri5", rtol: Optional[float] = None, atol: Optional[float] = None,
    eps: Optional[float] = None, step_size: Optional[float] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> Tensor:
    r"""Map data :math:`x_\varepsilon` to its latent :math:`z_T` by the probability-flow ODE (eps -> T).

    Args:
        x: shape ``(B, *shape)``. Other arguments as in :func:`log_likelihood`. With a
            torchdiffeq method the whole batch is one solve and ``model_kwargs`` reach every score
            call unchanged; with ``method="dopri5_ps"`` / ``"gbs8_ps"`` every sample has its own
            steps (controller at :data:`~sdesolve_gen.likelihood.SOLVER_TOL_FACTOR` x tol on the per-sample RMS of the
            ``x`` error), the result of a sample does not depend on the rest of the batch, and
            tensors in ``model_kwargs`` whose first dimension is ``B`` follow their samples.

    Returns:
        ``z`` of the shape of ``x``.
    """
    x, rtol, atol = _check_common(sde, score_fn, x, method, rtol, atol)
    return _flow(sde, score_fn, x, _check_eps(sde, eps), float(sde.T), method, rtol, atol, step_size, model_kwargs, progress)


def decode(
    sde: LinearSDE, score_fn: ScoreFn, z: Tensor, *, method: str = "dopri5", rtol: Optional[float] = None, atol: Optional[float] = None,
    eps: Optional[float] = None, step_size: Optional[float] = None, model_kwargs: Optional[Mapping[str, Any]] = None,
    progress: bool = False,
) -> Tensor:
    r"""Map a latent :math:`z_T` back to data :math:`x_\varepsilon` by the probability-flow ODE (T -> eps).

    Args:
        z: shape ``(B, *shape)``. Other arguments as in :func:`encode` (``method="dopri5_ps"``
            included).

    Returns:
        ``x`` of the shape of ``z``.
    """
    z, rtol, atol = _check_common(sde, score_fn, z, method, rtol, atol)
    return _flow(sde, score_fn, z, float(sde.T), _check_eps(sde, eps), method, rtol, atol, step_size, model_kwargs, progress)


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

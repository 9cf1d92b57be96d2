r"""The reverse-time SDE (a torchsde SDE) and the probability-flow ODE (a torchdiffeq function).

Given a forward SDE :math:`dx = f(x,t)\,dt + g(t)\,dw` and a score :math:`s(x,t)\approx\nabla\log p_t(x)`:

* reverse-time SDE (Anderson 1982): :math:`dx = [f(x,t) - g(t)^2 s(x,t)]\,dt + g(t)\,d\bar w`,
  run from t=T down to t=eps;
* probability-flow ODE: :math:`dx/dt = f(x,t) - \tfrac12 g(t)^2 s(x,t)`, deterministic, with the
  same marginals :math:`p_t`.

torchsde needs strictly increasing solver time, so :class:`ReverseSDE` is re-timed with
:math:`u = T - t` (solver time ``u`` runs from ``T - t_start`` upwards):

.. math:: dx = -\big[f(x, T-u) - g(T-u)^2 s(x, T-u)\big]\,du + g(T-u)\,dw_u .

Because :math:`g` depends on time only, the Ito and Stratonovich forms coincide, so
Stratonovich-only torchsde methods (midpoint, heun, reversible_heun) are valid with
``sde_type="stratonovich"``. torchdiffeq accepts decreasing time directly, so
:class:`ProbabilityFlowODE` is written in physical time.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ._checks import NonFiniteError, TimeLike, as_float64, as_time64, check_score_output
from .sde import LinearSDE, expand_to

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, TimeLike], Tensor]

__all__ = ["ReverseSDE", "ProbabilityFlowODE", "ScoreFn", "pf_velocity", "check_model_kwargs", "CHECK_FINITE"]


def _check_sde_score(sde: object, score_fn: object) -> None:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (e.g. VPSDE()), got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")


def _check_data_shape(data_shape: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
    if data_shape is None:
        return None
    shape = tuple(int(s) for s in data_shape)
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise ValueError(f"data_shape must be a non-empty tuple of positive ints, got {data_shape!r}")
    return shape


#: Modes of the score's finiteness check (per evaluation with one host sync each, once at the end, or none).
CHECK_FINITE = ("step", "end", "off")


def _check_mode(check_finite: Any) -> str:
    if check_finite is True:
        return "step"
    if check_finite is False:
        return "off"
    if check_finite not in CHECK_FINITE:
        raise ValueError(f"check_finite must be one of {CHECK_FINITE} (or True/False), got {check_finite!r}")
    return str(check_finite)


def check_model_kwargs(model_kwargs: Any) -> Dict[str, Any]:
    """``model_kwargs`` as a fresh dict of keyword arguments for the score (``{}`` for ``None``)."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, Mapping):
        raise TypeError(f"model_kwargs must be a mapping of keyword arguments for score_fn, got {type(model_kwargs).__name__}")
    bad = [k for k in model_kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"model_kwargs keys must be argument names, got {bad!r}")
    return dict(model_kwargs)


class _ScoreCaller(nn.Module):
    """Shared plumbing: reshape to the data shape, call the score with its keyword arguments, count and check it.

    Finiteness (``check_finite``): ``"step"`` raises as soon as a score is NaN/inf (one host
    synchronisation per evaluation); ``"end"`` keeps one device-side flag per evaluation and
    :meth:`raise_if_nonfinite` (called by every solve of this library when it finishes) raises
    for the first bad evaluation, naming its time, with one synchronisation in all; ``"off"``.

    Gradients: unless ``differentiable``, the score is evaluated under ``torch.no_grad()``, so no
    autograd graph is built across steps (a score that needs autograd inside, such as classifier
    guidance, enables it locally and still works).
    """

    def __init__(
        self,
        sde: LinearSDE,
        score_fn: ScoreFn,
        data_shape: Optional[Sequence[int]],
        check_finite: Any,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__()
        _check_sde_score(sde, score_fn)
        if not isinstance(differentiable, bool):
            raise TypeError(f"differentiable must be a bool, got {type(differentiable).__name__}")
        self.sde = sde
        self.score_fn = score_fn
        self.data_shape = _check_data_shape(data_shape)
        self.check_finite = _check_mode(check_finite)
        self.model_kwargs = check_model_kwargs(model_kwargs)
        self.differentiable = differentiable
        self.nfe = 0
        self._flags: List[Tuple[Tensor, Tensor]] = []

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Evaluate the score at state ``x`` (any shape ``(B, ...)``) and physical time ``t``."""
        shape = x.shape
        if self.data_shape is not None:
            if math.prod(shape[1:]) != math.prod(self.data_shape):
                raise ValueError(f"data_shape {self.data_shape} does not match the state: {tuple(shape[1:])} per sample "
                                 f"({math.prod(shape[1:])} values, data_shape needs {math.prod(self.data_shape)})")
            x = x.reshape(shape[0], *self.data_shape)
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            try:
                s = self.score_fn(x, t, **self.model_kwargs)
            except TypeError as err:
                if self.model_kwargs and "keyword argument" in str(err):
                    raise TypeError(f"model_kwargs {sorted(self.model_kwargs)} were not accepted by score_fn: {err}") from err
                raise
        self.nfe += 1
        check_score_output(s, x)
        if self.check_finite == "step":
            # A sum is NaN/inf whenever an element is (cheaper than isfinite().all()); an overflowing
            # sum of finite values is confirmed element-wise before anything is raised.
            if not bool(torch.isfinite(s.sum())) and not bool(torch.isfinite(s).all()):
                self._raise(x, t)
        elif self.check_finite == "end":
            self._flags.append((torch.isfinite(s).all(), t))
        return s.reshape(shape)

    def _raise(self, x: Optional[Tensor], t: Tensor) -> None:
        what = "the state x" if x is not None and not bool(torch.isfinite(x).all()) else "score_fn's output"
        raise NonFiniteError(f"{what} became non-finite (NaN/inf) at t={float(t):.6g}")

    def raise_if_nonfinite(self) -> None:  # noqa: D401 (also documented on ReverseSDE / ProbabilityFlowODE)
        """Raise :class:`NonFiniteError` for the first non-finite score recorded since the last call
        (``check_finite="end"``; one host synchronisation), then forget the records."""
        flags, self._flags = self._flags, []
        if not flags:
            return
        ok = torch.stack([f for f, _ in flags])
        if bool(ok.all()):
            return
        first = int((~ok).nonzero()[0, 0])
        raise NonFiniteError(
            f"score_fn's output became non-finite (NaN/inf) at t={float(flags[first][1]):.6g} "
            f"(evaluation {first + 1} of {len(flags)})"
        )


class ReverseSDE(_ScoreCaller):
    r"""The reverse-time SDE :math:`dx = [f - g^2 s]\,dt + g\,d\bar w`, as a torchsde SDE.

    torchsde sees solver time :math:`u = T - t` (increasing). Convert a physical grid running
    from T down to eps with :meth:`solver_times`, e.g.::

        rsde = ReverseSDE(sde, score_fn)
        xs = torchsde.sdeint(rsde, x_T, rsde.solver_times(ts), method="euler", dt=1e-3)

    Args:
        sde: the forward linear SDE.
        score_fn: ``(x, t) -> score`` with ``x`` of shape ``(B, *data_shape)`` and ``t`` a 0-d
            float64 tensor of physical time.
        data_shape: shape of one sample if it is not flat (torchsde states are ``(B, d)``; the
            state is reshaped to ``(B, *data_shape)`` before ``score_fn`` is called).
        sde_type: ``"ito"`` (default) or ``"stratonovich"``; both are exact here because
            :math:`g` does not depend on x.
        check_finite: ``"end"`` (default): record NaN/inf scores on the device and raise
            :class:`NonFiniteError` naming the first bad time when the solve finishes
            (:func:`~sdesolve_gen.sdeint` / :func:`~sdesolve_gen.odeint` call
            ``raise_if_nonfinite()``; call it yourself after a raw torchsde/torchdiffeq solve);
            ``"step"``: raise at once (one host synchronisation per evaluation); ``"off"``.
        model_kwargs: keyword arguments passed to every ``score_fn(x, t, **model_kwargs)`` call
            (class labels, conditioning inputs).
        differentiable: build the autograd graph through the score calls (to differentiate
            through the solve); by default every score call runs under ``torch.no_grad()``.

    Attributes:
        nfe: number of score evaluations so far (reset it to 0 between solves if you count).
    """

    noise_type = "diagonal"

    def __init__(
        self,
        sde: LinearSDE,
        score_fn: ScoreFn,
        *,
        data_shape: Optional[Sequence[int]] = None,
        sde_type: str = "ito",
        check_finite: Any = "end",
        model_kwargs: Optional[Mapping[str, Any]] = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__(sde, score_fn, data_shape, check_finite, model_kwargs, differentiable)
        self._table: Optional[dict] = None
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}")
        self.sde_type = sde_type

    def solver_times(self, ts: Tensor) -> Tensor:
        r"""Map physical times ``ts`` (strictly decreasing, in ``[0, T]``) to solver times :math:`u = T - t`.

        Raises:
            ValueError: if ``ts`` is not strictly decreasing or leaves ``[0, T]``.
        """
        ts = as_float64(ts)
        if ts.dim() != 1 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("ts must be strictly decreasing for a ReverseSDE (physical time runs T -> eps)")
        T = self.sde.T
        if float(ts.max()) > T * (1 + 1e-12) or float(ts.min()) < 0:
            raise ValueError(f"ts must lie in [0, T] = [0, {T}], got [{float(ts.min())}, {float(ts.max())}]")
        return T - ts

    def physical_time(self, u: Tensor) -> Tensor:
        """Map solver time ``u`` back to physical time ``t = T - u`` (float64)."""
        return self.sde.T - u.to(torch.float64)

    def on_grid(self, us: Tensor) -> "ReverseSDE":
        r"""A copy of this SDE with the schedule tabulated at known solver times ``us``.

        A fixed-step solve evaluates the schedule at grid times only; computing
        :math:`a(t) = (\log\alpha)'`, :math:`g^2` and :math:`g` for the whole grid in one
        vectorised call and looking them up per step removes a dozen tiny tensor operations
        from every step (``sdeint`` does this for you). The copy shares the score and counts
        its own evaluations (``nfe`` starts at 0); this object is not modified.
        """
        us = as_float64(us).reshape(-1)
        t = self.physical_time(us)
        a = self.sde.drift_coef(t)
        g2 = self.sde.diffusion2(t)
        new = copy.copy(self)
        new.nfe = 0
        new._flags = []
        new._table = {
            u: (ti, ai, g2i, gi)
            for u, ti, ai, g2i, gi in zip(us.tolist(), t, a.tolist(), g2.tolist(), torch.sqrt(g2).tolist())
        }
        return new

    def _coefficients(self, u: Tensor) -> Tuple[Tensor, Any, Any, Any]:
        """``(t, a(t), g(t)^2, g(t))`` at solver time ``u`` (0-d): table lookup or computed."""
        table = getattr(self, "_table", None)
        if table is not None:
            hit = table.get(float(u))
            if hit is not None:
                return hit
        t = self.physical_time(u)
        g2 = self.sde.diffusion2(t)
        return t, self.sde.drift_coef(t), g2, torch.sqrt(g2)

    def reverse_drift(self, x: Tensor, t: Tensor) -> Tensor:
        r"""Physical-time reverse drift :math:`f(x,t) - g(t)^2 s(x,t)` (shape of ``x``)."""
        g2 = expand_to(self.sde.diffusion2(t), x)
        return self.sde.drift(x, t) - g2 * self.score(x, t)

    def f(self, u: Tensor, y: Tensor) -> Tensor:
        """torchsde drift in solver time: :math:`-(f - g^2 s)(y, T-u) = g^2 s - a y`."""
        t, a, g2, _ = self._coefficients(u)
        return g2 * self.score(y, t) - a * y

    def g(self, u: Tensor, y: Tensor) -> Tensor:
        """torchsde diagonal diffusion :math:`g(T-u)`, broadcast to ``y``."""
        g = self._coefficients(u)[3]
        return torch.as_tensor(g, dtype=y.dtype, device=y.device).expand_as(y)

    def g_prod(self, u: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """torchsde ``g * v``."""
        return self._coefficients(u)[3] * v

    def f_and_g(self, u: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
        return self.f(u, y), self.g(u, y)

    def f_and_g_prod(self, u: Tensor, y: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        """Fused drift and ``g * v`` (one schedule lookup, one score evaluation)."""
        t, a, g2, g = self._coefficients(u)
        return g2 * self.score(y, t) - a * y, g * v


class ProbabilityFlowODE(_ScoreCaller):
    r"""The probability-flow ODE :math:`dx/dt = f(x,t) - \tfrac12 g(t)^2 s(x,t)` for torchdiffeq.

    ``forward(t, x)`` takes physical time, so ``torchdiffeq.odeint(ode, x_T, ts)`` with ``ts``
    decreasing from T to eps samples, and increasing from eps to T encodes. ``x`` may have any
    shape ``(B, *data_shape)``.

    Args:
        sde: the forward linear SDE.
        score_fn: ``(x, t) -> score``.
        data_shape: optional shape of one sample, if states are passed flattened.
        check_finite: ``"end"`` (default): record NaN/inf scores on the device and raise
            :class:`NonFiniteError` naming the first bad time when the solve finishes
            (:func:`~sdesolve_gen.sdeint` / :func:`~sdesolve_gen.odeint` call
            ``raise_if_nonfinite()``; call it yourself after a raw torchsde/torchdiffeq solve);
            ``"step"``: raise at once (one host synchronisation per evaluation); ``"off"``.
        model_kwargs: keyword arguments passed to every ``score_fn(x, t, **model_kwargs)`` call
            (class labels, conditioning inputs).
        differentiable: build the autograd graph through the score calls (to differentiate
            through the solve); by default every score call runs under ``torch.no_grad()``.

    Attributes:
        nfe: number of score evaluations so far.
    """

    def __init__(
        self,
        sde: LinearSDE,
        score_fn: ScoreFn,
        *,
        data_shape: Optional[Sequence[int]] = None,
        check_finite: Any = "end",
        model_kwargs: Optional[Mapping[str, Any]] = None,
        differentiable: bool = False,
    ) -> None:
        super().__init__(sde, score_fn, data_shape, check_finite, model_kwargs, differentiable)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """Velocity :math:`dx/dt` at physical time ``t`` (0-d tensor), shape of ``x``."""
        t64 = as_time64(t)
        return pf_velocity(self.sde, x, self.score(x, t64), t64)


def pf_velocity(sde: LinearSDE, x: Tensor, score: Tensor, t: Tensor) -> Tensor:
    r"""The probability-flow velocity :math:`v = f(x, t) - \tfrac12 g(t)^2 s = a(t)\,x - \tfrac12 g(t)^2 s`.

    The one implementation used by :class:`ProbabilityFlowODE`, the likelihood and every solve
    of the PF-ODE in this library.

    Args:
        sde: the forward linear SDE.
        x: state ``(B, *shape)``.
        score: :math:`s(x, t)`, shape of ``x``.
        t: float64 time, 0-d or ``(B,)``.

    Returns:
        :math:`v`, shape of ``x``.
    """
    if score.shape != x.shape:  # (a shape comparison: no device synchronisation)
        raise ValueError(f"score has shape {tuple(score.shape)} but x has shape {tuple(x.shape)}; they must match exactly")
    return sde.drift(x, t) - 0.5 * expand_to(sde.diffusion2(t), x) * score

r"""Explicit embedded Runge-Kutta pairs with independent step-size control per sample.

A batch of ``B`` independent initial-value problems :math:`dy_i/dt = f(t, y_i)`,
:math:`y_i(t_0) = y_{0,i}`, is integrated to :math:`t_1` with **one time** :math:`t_i`, **one
step** :math:`h_i`, one error estimate and one accept/reject decision **per sample**. Every
batched call of ``f`` advances all unfinished samples together (each at its own time, so ``f``
receives a time of shape ``(b,)``), and a sample leaves the batch as soon as it reaches
:math:`t_1`, so later calls are cheaper. A sample's result therefore does not depend on which
other samples share its batch (up to the floating-point effects of batched kernels).

**Step.** With a tableau :math:`(c, A, b, \hat b)` of ``s`` stages, for every active sample

.. math::

    k_j = f\Big(t_i + c_j h_i,\; y_i + h_i \sum_{l<j} a_{jl} k_l\Big), \qquad
    y_i^{+} = y_i + h_i \sum_j b_j k_j, \qquad
    e_i = h_i \sum_j (b_j - \hat b_j)\, k_j ,

(``b`` of order :math:`p`, propagated; :math:`\hat b` of order :math:`\hat p < p`, for the
estimate only). A first-same-as-last (FSAL) tableau reuses the last stage of an accepted step
as the first stage of the next one.

**Control.** ``error_ratio(e, y, y+)`` returns one ratio :math:`r_i` per sample (``(b,)``); the
step is accepted iff :math:`r_i \le 1`, and the next step is

.. math::

    h_i \leftarrow h_i \cdot \min\big(f_{\max},\ \max(f_{\min},\
        \rho\, r_{i}^{-\beta_1/k}\, r_{i,\mathrm{prev}}^{\beta_2/k})\big), \qquad k = \hat p + 1,

a PI controller (Gustafsson; :math:`r_{i,\mathrm{prev}}` is the ratio of the sample's previous
accepted step, 1 at the start; ``beta = (1, 0)`` is the classical I controller). After a
rejection the I controller :math:`\rho\, r_i^{-1/k}` is used and the step does not grow on the
next step. :math:`\rho` = ``safety``, :math:`f_{\max}` = ``ifactor``, :math:`f_{\min}` =
``dfactor``. Steps are clipped so that they never pass :math:`t_1`; the last step lands on
:math:`t_1` exactly. The first step is chosen per sample by the usual two-evaluation
heuristic (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4): with norms
:math:`d_0 = \|y_0\|`, :math:`d_1 = \|f_0\|` measured by ``error_ratio`` against ``y_0``,
:math:`h_0 = 0.01\, d_0/d_1`, one Euler step to estimate :math:`d_2 = \|f(t_0 + h_0, y_0 + h_0 f_0) -
f_0\|/h_0`, and :math:`h = \min(100 h_0, (0.01/\max(d_1, d_2))^{1/(p+1)})`.

**State.** A tuple of tensors ``(y^{(1)}, ..., y^{(m)})`` whose first dimension is the batch.
``f(t, y, index)`` receives the active samples' times ``(b,)`` (float64), their states and their
indices ``(b,)`` into the original batch (to slice per-sample parameters), and returns a tuple of
the same shapes.

**Cost.** ``nfe`` counts batched calls of ``f`` (the wall-clock-relevant count); ``n_evals``
counts, per sample, the calls it took part in. Because all active samples attempt one step per
iteration, ``nfe`` is about ``(s - fsal) * max_i(attempts_i)`` plus the start-up calls.

Tableaux: :data:`DOPRI5` (Dormand & Prince 1980, 5(4), 7 stages, FSAL) and
:func:`extrapolation_tableau` (explicit midpoint rule with Richardson extrapolation in
:math:`h^2`, Gragg-Bulirsch-Stoer, written as one explicit RK pair; e.g. order 8 with
embedded order 6 from the step numbers 2, 4, 6, 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor
State = Tuple[Tensor, ...]
VectorField = Callable[[Tensor, State, Tensor], State]
ErrorRatio = Callable[[State, State, State], Tensor]

__all__ = ["Tableau", "DOPRI5", "extrapolation_tableau", "PerSampleSolution", "solve_per_sample", "rms_error_ratio"]


@dataclass(frozen=True)
class Tableau:
    r"""An explicit embedded Runge-Kutta pair.

    Attributes:
        c: nodes, ``s`` entries (``c[0] = 0``).
        a: strictly lower-triangular coefficients, row ``j`` has ``j`` entries :math:`a_{jl}, l<j`.
        b: weights of the propagated solution (order ``order``).
        b_hat: weights of the embedded solution (order ``embedded_order``).
        order: :math:`p`.
        embedded_order: :math:`\hat p` (sets the controller exponent :math:`1/(\hat p + 1)`).
        fsal: the last stage is evaluated at :math:`(t + h, y^+)` (``a[-1] == b``, ``c[-1] == 1``).
        name: a label.
    """

    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    b_hat: Tuple[float, ...]
    order: int
    embedded_order: int
    fsal: bool
    name: str

    @property
    def stages(self) -> int:
        """Number of stages ``s``."""
        return len(self.c)

    def matrix(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c (s,), A (s, s), b (s,), b_hat (s,))`` as float64 tensors."""
        s = self.stages
        A = torch.zeros(s, s, dtype=torch.float64)
        for j, row in enumerate(self.a):
            A[j, : len(row)] = torch.tensor(row, dtype=torch.float64) if row else A[j, :0]
        f64 = torch.float64
        return torch.tensor(self.c, dtype=f64), A, torch.tensor(self.b, dtype=f64), torch.tensor(self.b_hat, dtype=f64)


def _q(*xs: str) -> Tuple[float, ...]:
    return tuple(float(Fraction(x)) for x in xs)


#: Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comput. Appl. Math. 6:
#: the 5(4) pair "RK5(4)7M", propagating the 5th-order solution (local extrapolation).
DOPRI5 = Tableau(
    c=_q("0", "1/5", "3/10", "4/5", "8/9", "1", "1"),
    a=(
        (),
        _q("1/5"),
        _q("3/40", "9/40"),
        _q("44/45", "-56/15", "32/9"),
        _q("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        _q("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
        _q("35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84"),
    ),
    b=_q("35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84", "0"),
    b_hat=_q("5179/57600", "0", "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"),
    order=5,
    embedded_order=4,
    fsal=True,
    name="dopri5",
)


def extrapolation_tableau(steps: Sequence[int] = (2, 4, 6, 8)) -> Tableau:
    r"""The extrapolated explicit midpoint rule (Gragg-Bulirsch-Stoer) as one explicit RK pair.

    For each even step number :math:`n_j` the explicit midpoint rule on one step :math:`h`
    (:math:`\eta_0 = y_0`, :math:`\eta_1 = \eta_0 + \tfrac{h}{n_j} f(\eta_0)`,
    :math:`\eta_{m+1} = \eta_{m-1} + \tfrac{2h}{n_j} f(\eta_m)`) gives :math:`T_{j,1} = \eta_{n_j}`,
    whose error has an expansion in even powers of :math:`h` (Gragg). Aitken-Neville
    extrapolation :math:`T_{j,l+1} = T_{j,l} + (T_{j,l} - T_{j-1,l}) / ((n_j/n_{j-l})^2 - 1)`
    gives :math:`T_{k,k}` of order :math:`2k` (propagated) and :math:`T_{k,k-1}` of order
    :math:`2k-2` (embedded). Each :math:`\eta_m` is :math:`y_0` plus a linear combination of the
    stage derivatives, so the whole scheme is an explicit RK method with
    :math:`1 + \sum_j (n_j - 1)` stages sharing :math:`f(y_0)` (17 stages for 2, 4, 6, 8).

    Args:
        steps: strictly increasing even step numbers, at least two.

    Returns:
        :class:`Tableau` of order ``2 * len(steps)`` with embedded order ``2 * len(steps) - 2``.

    Raises:
        ValueError: ``steps`` not strictly increasing even ints, or fewer than two.
    """
    ns = list(steps)
    if len(ns) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2 for n in ns) or ns != sorted(set(ns)):
        raise ValueError(f"steps must be at least two strictly increasing even ints >= 2, got {steps!r}")
    s = 1 + sum(n - 1 for n in ns)
    c: List[Fraction] = [Fraction(0)]
    rows: List[List[Fraction]] = [[]]

    def vec() -> List[Fraction]:
        return [Fraction(0)] * s

    finals: List[List[Fraction]] = []
    for n in ns:
        hn = Fraction(1, n)
        # eta_m as coefficient vectors over the stage derivatives (eta_0 = y0: the zero vector);
        # stage_of[m] = global index of the stage evaluating f(eta_m)
        eta: List[List[Fraction]] = [vec()]
        stage_of = [0]
        first = vec()
        first[0] = hn
        eta.append(first)
        for m in range(1, n):
            stage_of.append(len(c))
            c.append(m * hn)
            rows.append(eta[m][: len(rows)])
            nxt = list(eta[m - 1])
            nxt[stage_of[m]] += 2 * hn
            eta.append(nxt)
        finals.append(eta[n])
    # Aitken-Neville on the coefficient vectors
    T = [finals]
    for lev in range(1, len(ns)):
        prev = T[-1]
        col = []
        for j in range(lev, len(ns)):
            r = Fraction(ns[j], ns[j - lev]) ** 2 - 1
            col.append([p + (p - q) / r for p, q in zip(prev[j - lev + 1], prev[j - lev])])
        T.append(col)
    b, b_hat = T[-1][0], T[-2][-1]
    k = len(ns)
    return Tableau(
        c=tuple(float(x) for x in c), a=tuple(tuple(float(x) for x in r) for r in rows),
        b=tuple(float(x) for x in b), b_hat=tuple(float(x) for x in b_hat),
        order=2 * k, embedded_order=2 * k - 2, fsal=False, name=f"extrapolation{tuple(ns)}",
    )


@dataclass(frozen=True)
class PerSampleSolution:
    """What :func:`solve_per_sample` returns (tensors on the state's device).

    Attributes:
        y: the state at ``t1``, a tuple of the input shapes.
        nfe: number of batched calls of ``f``.
        n_evals: ``(B,)`` calls each sample took part in.
        n_steps: ``(B,)`` accepted steps per sample.
        n_rejected: ``(B,)`` rejected steps per sample.
        active_sizes: batch size of every call of ``f`` in order (``nfe`` entries).
    """

    y: State
    nfe: int
    n_evals: Tensor
    n_steps: Tensor
    n_rejected: Tensor
    active_sizes: Tuple[int, ...]


def rms_error_ratio(rtol: float, atol: float) -> ErrorRatio:
    r"""Per-sample ratio :math:`\max_m \mathrm{RMS}_{\text{coords}}\big(e^{(m)} / (\mathrm{atol} +
    \mathrm{rtol}\max(|y^{(m)}|, |y^{+(m)}|))\big)`, shape ``(b,)`` (each component's RMS over
    its non-batch coordinates, then the max over the tuple's components)."""

    def ratio(err: State, y0: State, y1: State) -> Tensor:
        out = None
        for e, a, b in zip(err, y0, y1):
            sc = atol + rtol * torch.maximum(a.abs(), b.abs())
            r = (e / sc).reshape(e.shape[0], -1).pow(2).mean(1).sqrt()
            out = r if out is None else torch.maximum(out, r)
        assert out is not None
        return out

    return ratio


def _check_state(y0: object) -> State:
    if isinstance(y0, torch.Tensor) or not isinstance(y0, tuple) or not y0 or not all(isinstance(v, torch.Tensor) for v in y0):
        raise TypeError(f"y0 must be a non-empty tuple of tensors, got {type(y0).__name__}")
    B = y0[0].shape[0] if y0[0].dim() else -1
    if B < 1 or any(v.dim() == 0 or v.shape[0] != B for v in y0):
        raise ValueError(f"y0 must be a tuple of tensors sharing a first (batch) dimension >= 1, got shapes {[tuple(v.shape) for v in y0]}")
    if not all(bool(torch.isfinite(v).all()) for v in y0):
        raise ValueError("y0 contains non-finite values (NaN or inf)")
    return y0


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _lincomb(y: State, h: Tensor, ks: List[State], w: Sequence[float]) -> State:
    """``y + h * sum_l w_l k_l`` per component (``h`` of shape ``(b,)``, broadcast per sample)."""
    out = []
    for m, ym in enumerate(y):
        acc = torch.zeros_like(ym)
        for wl, kl in zip(w, ks):
            if wl != 0.0:
                acc = acc + wl * kl[m]
        out.append(ym + h.to(ym.dtype).reshape(-1, *([1] * (ym.dim() - 1))) * acc)
    return tuple(out)


def solve_per_sample(
    f: VectorField,
    y0: State,
    t0: float,
    t1: float,
    *,
    error_ratio: ErrorRatio,
    tableau: Tableau = DOPRI5,
    first_step: Optional[float] = None,
    safety: float = 0.9,
    ifactor: float = 10.0,
    dfactor: float = 0.2,
    beta: Tuple[float, float] = (0.7, 0.4),
    max_steps: int = 100_000,
    progress: bool = False,
) -> PerSampleSolution:
    r"""Integrate a batch of independent ODEs from ``t0`` to ``t1``, each sample under its own control.

    Args:
        f: ``f(t, y, index) -> dy/dt``: ``t`` float64 ``(b,)`` (each active sample's own stage
            time), ``y`` a tuple of ``(b, ...)`` tensors, ``index`` int64 ``(b,)`` positions of the
            active samples in the original batch; returns a tuple of the shapes of ``y``.
        y0: initial state, a tuple of tensors with a common batch dimension ``B``.
        t0, t1: start and end time (``t1 < t0`` integrates backwards).
        error_ratio: ``(e, y, y+) -> r`` of shape ``(b,)``; a step is accepted iff ``r <= 1``
            (e.g. :func:`rms_error_ratio`).
        tableau: the RK pair (default :data:`DOPRI5`).
        first_step: initial ``|h|`` for every sample (default: the per-sample heuristic).
        safety, ifactor, dfactor: controller constants :math:`\rho`, :math:`f_{\max}`,
            :math:`f_{\min}` (``0 < dfactor < 1 < ifactor``, ``0 < safety <= 1``).
        beta: PI exponents :math:`(\beta_1, \beta_2)` (see the module docstring); ``(1, 0)`` is the
            classical I controller.
        max_steps: limit on step attempts per sample.
        progress: a tqdm bar of the slowest active sample's progress
            :math:`\min_i |t_i - t_0| / |t_1 - t_0|` in percent, with the number of active samples
            and of batched calls (updated once per step attempt).

    Returns:
        :class:`PerSampleSolution`.

    Raises:
        TypeError, ValueError: bad arguments (named).
        RuntimeError: a sample exceeded ``max_steps`` or its step underflowed.
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y, index), got {type(f).__name__}")
    if not callable(error_ratio):
        raise TypeError(f"error_ratio must be callable as error_ratio(err, y0, y1), got {type(error_ratio).__name__}")
    if not isinstance(tableau, Tableau):
        raise TypeError(f"tableau must be a Tableau, got {type(tableau).__name__}")
    y0 = _check_state(y0)
    for name, tv in (("t0", t0), ("t1", t1)):
        if isinstance(tv, bool) or not isinstance(tv, (int, float)) or not math.isfinite(float(tv)):
            raise ValueError(f"{name} must be a finite number, got {tv!r}")
    if float(t0) == float(t1):
        raise ValueError(f"t1 must differ from t0, got t0 = t1 = {t0}")
    if first_step is not None:
        _positive("first_step", first_step)
    _positive("safety", safety)
    if safety > 1:
        raise ValueError(f"safety must lie in (0, 1], got {safety}")
    if not _positive("ifactor", ifactor) > 1:
        raise ValueError(f"ifactor must be > 1, got {ifactor}")
    if not 0 < _positive("dfactor", dfactor) < 1:
        raise ValueError(f"dfactor must lie in (0, 1), got {dfactor}")
    if (not isinstance(beta, tuple) or len(beta) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in beta)
            or not beta[0] > 0 or not 0 <= beta[1] < beta[0]):
        raise ValueError(f"beta must be a tuple (beta1, beta2) with 0 <= beta2 < beta1, got {beta!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc="solve_per_sample", unit="%", leave=False)
    try:
        return _solve(f, y0, float(t0), float(t1), error_ratio, tableau, first_step, safety, ifactor, dfactor, beta,
                      max_steps, bar)
    finally:
        if bar is not None:
            bar.close()


def _solve(f: VectorField, y0: State, t0f: float, t1f: float, error_ratio: ErrorRatio, tableau: Tableau,
           first_step: Optional[float], safety: float, ifactor: float, dfactor: float, beta: Tuple[float, float],
           max_steps: int, bar: Any) -> PerSampleSolution:
    """The loop of :func:`solve_per_sample` on validated arguments (``bar``: a tqdm bar or ``None``)."""

    dev = y0[0].device
    B = y0[0].shape[0]
    span = abs(t1f - t0f)
    direction = 1.0 if t1f > t0f else -1.0
    sizes: List[int] = []

    def call(t: Tensor, y: State, idx: Tensor) -> State:
        sizes.append(int(idx.numel()))
        out = f(t, y, idx)
        if not isinstance(out, tuple) or len(out) != len(y) or any(o.shape != v.shape for o, v in zip(out, y)):
            raise ValueError("f must return a tuple of tensors of the state's shapes")
        return out

    n_evals = torch.zeros(B, dtype=torch.long, device=dev)
    n_steps = torch.zeros(B, dtype=torch.long, device=dev)
    n_rej = torch.zeros(B, dtype=torch.long, device=dev)
    out_y = [v.clone() for v in y0]

    idx = torch.arange(B, device=dev)
    t = torch.full((B,), t0f, dtype=torch.float64, device=dev)
    y = y0
    k1 = call(t, y, idx)
    n_evals += 1
    if first_step is None:
        d0 = error_ratio(y, y, y).to(torch.float64)
        d1 = error_ratio(k1, y, y).to(torch.float64)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp(max=span)
        y_e = _lincomb(y, direction * h0, [k1], [1.0])
        k_e = call(t + direction * h0, y_e, idx)
        n_evals += 1
        d2 = error_ratio(tuple(a - b for a, b in zip(k_e, k1)), y, y).to(torch.float64) / h0
        dm = torch.maximum(d1, d2)
        h1 = torch.where(dm <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                         (0.01 / dm.clamp(min=1e-300)) ** (1.0 / (tableau.order + 1)))
        h = torch.minimum(100 * h0, h1).clamp(max=span)
    else:
        h = torch.full((B,), min(float(first_step), span), dtype=torch.float64, device=dev)
    rejected_last = torch.zeros(B, dtype=torch.bool, device=dev)
    r_prev = torch.ones(B, dtype=torch.float64, device=dev)  # ratio of the last accepted step (1: I step first)
    kq = float(tableau.embedded_order + 1)
    e1, e2 = -beta[0] / kq, beta[1] / kq
    c, A = tableau.c, tableau.a
    w_err = [bi - bh for bi, bh in zip(tableau.b, tableau.b_hat)]
    attempts = 0
    while idx.numel():
        attempts += 1
        if attempts > max_steps:
            raise RuntimeError(f"solve_per_sample: {idx.numel()} samples did not reach t1 within max_steps={max_steps}")
        rem = (t1f - t) * direction  # (b,) >= 0
        last = h >= rem * (1 - 1e-12)
        h = torch.where(last, rem, h)
        if bool((h <= span * 1e-14).any()):
            raise RuntimeError("solve_per_sample: step size underflow (the error ratio cannot be met)")
        hs = direction * h
        ks: List[State] = [k1]
        for j in range(1, tableau.stages):
            if tableau.fsal and j == tableau.stages - 1:
                yj = _lincomb(y, hs, ks, tableau.b)
            else:
                yj = _lincomb(y, hs, ks, A[j])
            ks.append(call(t + c[j] * hs, yj, idx))
        n_evals[idx] += tableau.stages - 1
        y_new = yj if tableau.fsal else _lincomb(y, hs, ks, tableau.b)
        err = _lincomb(tuple(torch.zeros_like(v) for v in y), hs, ks, w_err)
        r = error_ratio(err, y, y_new).to(torch.float64)
        if not bool(torch.isfinite(r).all()):
            r = torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
        ok = r <= 1.0
        rc = r.clamp(min=1e-10)
        fac_i = safety * rc ** (-1.0 / kq)  # after a rejection: the I controller, no growth
        fac_pi = safety * rc**e1 * r_prev**e2
        fac = torch.where(ok, fac_pi, fac_i).clamp(dfactor, ifactor)
        fac = torch.where(~ok | rejected_last, fac.clamp(max=1.0), fac)
        r_prev = torch.where(ok, rc, r_prev)
        fac = torch.where(torch.isfinite(r), fac, torch.full_like(fac, dfactor))
        n_steps[idx] += ok.long()
        n_rej[idx] += (~ok).long()
        t_new = torch.where(last, torch.full_like(t, t1f), t + hs)
        t = torch.where(ok, t_new, t)
        y = tuple(torch.where(ok.reshape(-1, *([1] * (a.dim() - 1))), a, b) for a, b in zip(y_new, y))
        h_next = h * fac
        done = ok & last
        if bool(done.any()):
            di = idx[done]
            for m, v in enumerate(y):
                out_y[m][di] = v[done]
        keep = ~done
        ok_k = ok[keep]
        if tableau.fsal:
            k1 = tuple(torch.where(ok.reshape(-1, *([1] * (a.dim() - 1))), a, b)[keep] for a, b in zip(ks[-1], k1))
        else:
            k1 = tuple(v[keep] for v in k1)
        idx, t, y, h, rejected_last, r_prev = idx[keep], t[keep], tuple(v[keep] for v in y), h_next[keep], ~ok[keep], r_prev[keep]
        if bar is not None:
            frac = 1.0 if not idx.numel() else float(((t - t0f) * direction).min()) / span
            bar.update(int(100 * frac) - bar.n)
            bar.set_postfix(active=int(idx.numel()), calls=len(sizes), refresh=False)
        if not tableau.fsal and idx.numel() and bool(ok_k.any()):
            sel = ok_k.nonzero().squeeze(1)
            knew = call(t[sel], tuple(v[sel] for v in y), idx[sel])
            n_evals[idx[sel]] += 1
            k1 = tuple(a.index_copy(0, sel, b) for a, b in zip(k1, knew))
    return PerSampleSolution(y=tuple(out_y), nfe=len(sizes), n_evals=n_evals, n_steps=n_steps, n_rejected=n_rej,
                             active_sizes=tuple(sizes))

r"""Calibrated step schedules: a grid optimised for one sampler, one NFE budget and one model.

:func:`calibrate_timesteps` solves a few hundred calibration trajectories tightly (dopri5,
``rtol = atol = 1e-9``) from ``x_T_calib`` and then chooses the ``n`` log-SNR increments of the
sampler's grid to minimise the sampler's error against them:

.. math::

    E_{\mathrm{cal}}(u) = \frac1B\sum_b \Big\|\frac{x^{(b)}_{\mathrm{sampler}}(\varepsilon; \lambda(u)) - x^{(b)}_{\mathrm{ref}}(\varepsilon)}{\alpha_\varepsilon}\Big\|_{\mathrm{RMS}},
    \qquad \lambda_k(u) = \lambda_T + (\lambda_\varepsilon - \lambda_T)\sum_{j\le k}\mathrm{softmax}(u)_j ,

so the end points stay at ``T`` and ``eps`` and the grid stays strictly decreasing in ``t``. The
start is the uniform log-SNR grid (:math:`u = 0`) or the best of several named grids; the optimiser is scipy's derivative-free
Powell method (scipy is imported lazily; it is an optional dependency).

With few calibration samples or many increments the minimiser of :math:`E_{\mathrm{cal}}` fits
the calibration noise. Given a separate validation batch ``x_T_val`` the function keeps the
Powell path :math:`u^{(0)}` (the start), :math:`u^{(1)}, \dots` (the iterate after each Powell
iteration) and the final point, and returns the one with the smallest validation error
:math:`E_{\mathrm{val}}` (the same functional on ``x_T_val`` and its reference): early stopping
on held-out data, so the returned grid is never worse than the start on the validation set.

The result is a float64 tensor of times, exactly like :func:`~sdesolve_gen.integrate.timesteps`;
save and reuse it with ``torch.save(ts, "grid.pt")`` / ``ts = torch.load("grid.pt")`` (or
``ts.tolist()`` into a JSON file). It is tied to the sampler, the NFE budget, the SDE and the
model it was calibrated on; evaluate it on held-out :math:`x_T` only (neither the calibration nor
the validation batch).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._checks import check_batch, check_exact_shapes, check_int, check_positive
from ..integrate import timesteps
from ..sde import LinearSDE
from .ode import ode

Tensor = torch.Tensor

__all__ = ["calibrate_timesteps", "CalibratedGrid", "trajectory_rmse"]

#: Objective value of an invalid grid (not strictly decreasing, or a non-finite sampler output).
_BAD = 1e10


def trajectory_rmse(x: Tensor, ref: Tensor, alpha: float) -> float:
    r"""Mean over samples of the per-sample RMS error in :math:`x/\alpha` units:
    :math:`\frac1B\sum_b (\mathrm{mean}_d ((x_b - r_b)/\alpha)^2)^{1/2}`, ``x, ref`` of shape ``(B, *shape)``."""
    check_exact_shapes("x", x, "ref", ref)
    alpha = check_positive("alpha", alpha)
    d = ((x - ref) / alpha).reshape(x.shape[0], -1)
    return float(d.pow(2).mean(1).sqrt().mean())


def _grid_of(sde: LinearSDE, u: Tensor, lam_T: float, lam_e: float) -> Tensor:
    w = torch.softmax(u.to(torch.float64), 0)
    lam = lam_T + (lam_e - lam_T) * torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    ts = sde.t_of_lambda(lam)
    ts[0], ts[-1] = sde.T, sde.eps
    return ts


@dataclass(frozen=True)
class CalibratedGrid:
    """What :func:`calibrate_timesteps` returns.

    Attributes:
        ts: the grid, float64 ``(steps + 1,)``, decreasing from ``T`` to ``eps`` (save it with
            ``torch.save(result.ts, path)`` and pass it to the sampler).
        sampler: the registered sampler name it was calibrated for; ``nfe`` its budget, ``steps`` = ``len(ts) - 1``.
        error_start, error_calibrated: calibration-set trajectory RMSE on the start grid (the best
            of ``start``) and on ``ts``.
        nfe_reference: batched score calls of the dopri5 references solved here (calibration and,
            without ``ref_val``, validation; 0 for references passed in); ``nfe_search``: batched
            score calls of the objective on the calibration batch; ``nfe_validation``: those on the
            validation batch; ``nfe_total`` their sum. ``evaluations``: objective evaluations;
            ``evaluations_val``: validation evaluations; ``seconds``: wall time of the whole call.
        error_start_val, error_calibrated_val: validation-set trajectory RMSE of the start grid and
            of ``ts`` (``None`` without ``x_T_val``).
        path: ``(objective evaluations so far, E_cal, E_val)`` at the start, after each Powell
            iteration and at the end (``E_val`` is ``None`` without ``x_T_val``); ``path_ts`` the
            grids of these points (``ts`` is one of them).
    """

    ts: Tensor
    sampler: str
    nfe: int
    steps: int
    error_start: float
    error_calibrated: float
    nfe_reference: int
    nfe_search: int
    nfe_total: int
    evaluations: int
    seconds: float
    error_start_val: Optional[float] = None
    error_calibrated_val: Optional[float] = None
    nfe_validation: int = 0
    evaluations_val: int = 0
    path: Tuple[Tuple[int, float, Optional[float]], ...] = ()
    path_ts: Tuple[Tensor, ...] = ()


def _check_like(name: str, x: Any, like_name: str, like: Tensor, exact: bool) -> Tensor:
    """``x`` must be a floating batch with ``like``'s dtype and device and either exactly its shape
    (``exact``) or its per-sample shape ``like.shape[1:]``."""
    x = check_batch(name, x, min_dim=1)
    if exact:
        check_exact_shapes(name, x, like_name, like)
    elif x.shape[1:] != like.shape[1:]:
        raise ValueError(f"{name} has per-sample shape {tuple(x.shape[1:])} but {like_name} has "
                         f"{tuple(like.shape[1:])}; they must match exactly")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"{name} is {x.dtype} on {x.device} but {like_name} is {like.dtype} on {like.device}; "
                         "they must match")
    return x


def calibrate_timesteps(
    sde: LinearSDE, score_fn: Any, sampler_name: str, nfe: int, x_T_calib: Tensor, *,
    ref: Optional[Tensor] = None, x_T_val: Optional[Tensor] = None, ref_val: Optional[Tensor] = None,
    max_evals: int = 400, eps: Optional[float] = None, registry: Any = None,
    start: Union[str, Sequence[str]] = "logsnr",
) -> CalibratedGrid:
    r"""Optimise the grid of registered sampler ``sampler_name`` at ``nfe`` evaluations.

    Powell minimises the calibration error :math:`E_{\mathrm{cal}}(u)` (module docstring) from
    the start :math:`u^{(0)}`. Without ``x_T_val`` the result is the final Powell point
    :math:`u^\ast`, or :math:`u^{(0)}` if :math:`E_{\mathrm{cal}}(u^\ast) > E_{\mathrm{cal}}(u^{(0)})`.
    With ``x_T_val`` it is

    .. math::

        \hat u = \operatorname*{arg\,min}_{u \in \{u^{(0)}, u^{(1)}, \dots, u^\ast\}} E_{\mathrm{val}}(u),

    over the start, the iterate after each Powell iteration and the final point (ties: the
    earliest), so :math:`E_{\mathrm{val}}(\hat u) \le E_{\mathrm{val}}(u^{(0)})` always: early
    stopping on held-out data. Each validation evaluation is one sampler run on ``x_T_val``
    (counted in ``nfe_validation``); the search itself sees only ``x_T_calib``.

    Args:
        sde, score_fn: the SDE and the model's score ``score_fn(x, t)``.
        sampler_name: a deterministic fixed-step sampler of :data:`~sdesolve_gen.samplers.SAMPLERS`.
        nfe: the budget; the grid has ``SAMPLERS[sampler_name].steps_for(nfe)`` steps.
        x_T_calib: calibration noise ``(B, *shape)`` (a few hundred samples).
        ref: reference end points for ``x_T_calib``, exactly its shape, dtype and device
            (default: dopri5 with ``rtol = atol = 1e-9``).
        x_T_val: optional validation noise ``(B_val, *shape)``, independent of ``x_T_calib``
            (same per-sample shape, dtype and device); it chooses the returned point of the path.
        ref_val: reference end points for ``x_T_val``, exactly its shape, dtype and device
            (default: dopri5 with ``rtol = atol = 1e-9``); only with ``x_T_val``.
        max_evals: cap on objective evaluations (each is one sampler run on the calibration batch).
        eps: final time (default ``sde.eps``; only ``sde.eps`` is supported).
        registry: the sampler registry (default :data:`~sdesolve_gen.samplers.SAMPLERS`).
        start: the grid kind(s) of :func:`~sdesolve_gen.integrate.timesteps` to start from
            (default ``"logsnr"``, the uniform log-SNR grid); with several (e.g. ``("logsnr", "edm")``)
            each is evaluated once and the search starts from the best on the calibration set.

    Returns:
        a :class:`CalibratedGrid`: the grid ``.ts`` (float64, ``n + 1`` decreasing times from ``T``
        to ``eps``), its calibration (and validation) errors, the path and what the calibration cost.

    Raises:
        ValueError: for a stochastic or adaptive sampler, ``eps`` other than ``sde.eps``, an
            empty ``start``, ``ref`` / ``x_T_val`` / ``ref_val`` of the wrong shape, dtype or
            device, or ``ref_val`` without ``x_T_val``.
        TypeError: for a non-tensor ``x_T_calib`` / ``ref`` / ``x_T_val`` / ``ref_val``.
    """
    try:
        from scipy.optimize import minimize
    except ImportError as err:  # pragma: no cover - scipy is optional
        raise ImportError("calibrate_timesteps needs scipy: pip install scipy") from err
    if registry is None:
        from .registry import SAMPLERS as registry
    spec = registry[sampler_name]
    if spec.stochastic or spec.adaptive:
        raise ValueError(f"calibrate_timesteps needs a deterministic fixed-step sampler, got {sampler_name!r}")
    if eps is not None and eps != sde.eps:
        raise ValueError("calibrate_timesteps uses sde.eps as the final time")
    starts = (start,) if isinstance(start, str) else tuple(start)
    if not starts or not all(isinstance(k, str) for k in starts):
        raise ValueError(f"start must be a grid kind or a non-empty sequence of grid kinds, got {start!r}")
    max_evals = check_int("max_evals", max_evals, lo=1)
    x_T_calib = check_batch("x_T_calib", x_T_calib, min_dim=1)
    if ref is not None:
        _check_like("ref", ref, "x_T_calib", x_T_calib, exact=True)
    if x_T_val is not None:
        x_T_val = _check_like("x_T_val", x_T_val, "x_T_calib", x_T_calib, exact=False)
        if ref_val is not None:
            _check_like("ref_val", ref_val, "x_T_val", x_T_val, exact=True)
    elif ref_val is not None:
        raise ValueError("ref_val was given without x_T_val; pass the validation noise x_T_val too")
    t_start = time.perf_counter()
    n = spec.steps_for(nfe)
    nfe_ref = 0
    if ref is None:
        sol = ode(sde, score_fn, x_T_calib, timesteps(sde, 1), rtol=1e-9, atol=1e-9)
        ref, nfe_ref = sol.x, nfe_ref + sol.nfe
    if x_T_val is not None and ref_val is None:
        sol = ode(sde, score_fn, x_T_val, timesteps(sde, 1), rtol=1e-9, atol=1e-9)
        ref_val, nfe_ref = sol.x, nfe_ref + sol.nfe
    tT, te = torch.tensor(sde.T, dtype=torch.float64), torch.tensor(sde.eps, dtype=torch.float64)
    lam_T = float(sde.log_alpha(tT) - 0.5 * torch.log(sde.sigma2(tT)))
    lam_e = float(sde.log_alpha(te) - 0.5 * torch.log(sde.sigma2(te)))
    alpha_e = math.exp(float(sde.log_alpha(te)))
    count = {"evals": 0, "nfe": 0, "val_evals": 0, "val_nfe": 0}
    cache: Dict[bytes, float] = {}

    def error_on(u: Any, x_T: Tensor, x_ref: Tensor, key: str) -> float:
        ts = _grid_of(sde, torch.as_tensor(u, dtype=torch.float64), lam_T, lam_e)
        if not bool((ts[1:] < ts[:-1]).all()):
            return _BAD
        try:
            sol = spec(sde, score_fn, x_T, ts, check_finite="off")
        except ValueError:
            return _BAD
        count[key + "evals"] += 1
        count[key + "nfe"] += sol.nfe
        if not bool(torch.isfinite(sol.x).all()):
            return _BAD
        return trajectory_rmse(sol.x, x_ref, alpha_e)

    def objective(u: Any) -> float:
        k = torch.as_tensor(u, dtype=torch.float64).numpy().tobytes()
        if k not in cache:  # Powell re-visits its current point; a repeated evaluation costs nothing
            cache[k] = error_on(u, x_T_calib, ref, "")
        return cache[k]

    def validation(u: Any) -> Optional[float]:
        if x_T_val is None or ref_val is None:
            return None
        return error_on(u, x_T_val, ref_val, "val_")

    def u_of(kind: str) -> Tensor:
        # softmax(u) = the start grid's log-SNR increments / their sum, so u = log(increments)
        tk = timesteps(sde, n, kind=kind).to(torch.float64)
        lam = sde.log_alpha(tk) - 0.5 * torch.log(sde.sigma2(tk))
        inc = (lam[1:] - lam[:-1]).to(torch.float64)
        if not bool((inc > 0).all()):
            raise ValueError(f"start grid {kind!r} is not strictly increasing in log-SNR")
        return torch.log(inc / inc.sum())

    cands = [u_of(k) for k in starts]
    errs = [objective(u.numpy()) for u in cands]
    j = min(range(len(errs)), key=errs.__getitem__)
    u0, err0 = cands[j], errs[j]
    path_u: List[Tensor] = [u0]
    path: List[Tuple[int, float, Optional[float]]] = [(count["evals"], err0, validation(u0))]

    def on_iterate(xk: Any) -> None:  # scipy calls it after each Powell iteration with the current point
        u = torch.as_tensor(xk, dtype=torch.float64).clone()
        path_u.append(u)
        path.append((count["evals"], objective(u.numpy()), validation(u)))

    res = minimize(objective, u0.numpy(), method="Powell", callback=on_iterate,
                   options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-4})
    u_fin = torch.as_tensor(res.x, dtype=torch.float64)
    if not torch.equal(u_fin, path_u[-1]):
        on_iterate(u_fin)
    if x_T_val is None:  # never return a grid worse than the start on the calibration set
        i = len(path) - 1 if path[-1][1] <= err0 else 0
    else:  # early stopping: the point of the path best on the validation set (ties: the earliest)
        i = min(range(len(path)), key=lambda k: (path[k][2], k))
    nfe_search, nfe_val = count["nfe"], count["val_nfe"]
    path_ts = tuple(_grid_of(sde, u, lam_T, lam_e) for u in path_u)
    return CalibratedGrid(
        ts=path_ts[i], sampler=sampler_name, nfe=nfe, steps=n, error_start=err0,
        error_calibrated=path[i][1], nfe_reference=nfe_ref, nfe_search=nfe_search,
        nfe_total=nfe_ref + nfe_search + nfe_val, evaluations=count["evals"], seconds=time.perf_counter() - t_start,
        error_start_val=path[0][2], error_calibrated_val=path[i][2], nfe_validation=nfe_val,
        evaluations_val=count["val_evals"], path=tuple(path),
        path_ts=path_ts,
    )

r"""Calibrated step schedules: a grid optimised for one sampler, one NFE budget and one model.

:func:`calibrate_timesteps` solves a few hundred calibration trajectories tightly (dopri5,
``rtol = atol = 1e-9``) from ``x_T_calib`` and then chooses the ``n`` log-SNR increments of the
sampler's grid to minimise the sampler's error against them:

.. math::

    \min_{u\in\mathbb R^n}\ \frac1B\sum_b \Big\|\frac{x^{(b)}_{\mathrm{sampler}}(\varepsilon; \lambda(u)) - x^{(b)}_{\mathrm{ref}}(\varepsilon)}{\alpha_\varepsilon}\Big\|_{\mathrm{RMS}},
    \qquad \lambda_k(u) = \lambda_T + (\lambda_\varepsilon - \lambda_T)\sum_{j\le k}\mathrm{softmax}(u)_j ,

so the end points stay at ``T`` and ``eps`` and the grid stays strictly decreasing in ``t``. The
start is the uniform log-SNR grid (:math:`u = 0`) or the best of several named grids; the optimiser is scipy's derivative-free
Powell method (scipy is imported lazily; it is an optional dependency).

The result is a float64 tensor of times, exactly like :func:`~sdesolve_gen.integrate.timesteps`;
save and reuse it with ``torch.save(ts, "grid.pt")`` / ``ts = torch.load("grid.pt")`` (or
``ts.tolist()`` into a JSON file). It is tied to the sampler, the NFE budget, the SDE and the
model it was calibrated on; evaluate it on held-out :math:`x_T` only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from .._checks import check_exact_shapes, check_positive
from ..integrate import timesteps
from ..sde import LinearSDE
from .ode import ode

Tensor = torch.Tensor

__all__ = ["calibrate_timesteps", "CalibratedGrid", "trajectory_rmse"]


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
        nfe_reference, nfe_search, nfe_total: batched score calls on the calibration batch (the
            reference's are dopri5's); ``evaluations``: objective evaluations; ``seconds``: wall time.
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


def calibrate_timesteps(
    sde: LinearSDE, score_fn: Any, sampler_name: str, nfe: int, x_T_calib: Tensor, *,
    ref: Optional[Tensor] = None, max_evals: int = 400, eps: Optional[float] = None,
    registry: Any = None, start: Union[str, Sequence[str]] = "logsnr",
) -> CalibratedGrid:
    r"""Optimise the grid of registered sampler ``sampler_name`` at ``nfe`` evaluations.

    Args:
        sde, score_fn: the SDE and the model's score ``score_fn(x, t)``.
        sampler_name: a deterministic fixed-step sampler of :data:`~sdesolve_gen.samplers.SAMPLERS`.
        nfe: the budget; the grid has ``SAMPLERS[sampler_name].steps_for(nfe)`` steps.
        x_T_calib: calibration noise ``(B, *shape)`` (a few hundred samples).
        ref: reference end points for ``x_T_calib`` (default: dopri5 with ``rtol = atol = 1e-9``).
        max_evals: cap on objective evaluations (each is one sampler run on the batch).
        eps: final time (default ``sde.eps``; only ``sde.eps`` is supported).
        registry: the sampler registry (default :data:`~sdesolve_gen.samplers.SAMPLERS`).
        start: the grid kind(s) of :func:`~sdesolve_gen.integrate.timesteps` to start from
            (default ``"logsnr"``, the uniform log-SNR grid); with several (e.g. ``("logsnr", "edm")``)
            each is evaluated once and the search starts from the best on the calibration set.

    Returns:
        a :class:`CalibratedGrid`: the grid ``.ts`` (float64, ``n + 1`` decreasing times from ``T``
        to ``eps``), its calibration errors and what the calibration cost.

    Raises:
        ValueError: for a stochastic or adaptive sampler, ``eps`` other than ``sde.eps``, or an
            empty ``start``.
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
    t_start = time.perf_counter()
    n = spec.steps_for(nfe)
    nfe_ref = 0
    if ref is None:
        sol = ode(sde, score_fn, x_T_calib, timesteps(sde, 1), rtol=1e-9, atol=1e-9)
        ref, nfe_ref = sol.x, sol.nfe
    tT, te = torch.tensor(sde.T, dtype=torch.float64), torch.tensor(sde.eps, dtype=torch.float64)
    lam_T = float(sde.log_alpha(tT) - 0.5 * torch.log(sde.sigma2(tT)))
    lam_e = float(sde.log_alpha(te) - 0.5 * torch.log(sde.sigma2(te)))
    alpha_e = math.exp(float(sde.log_alpha(te)))
    count = {"evals": 0, "nfe": 0}

    def objective(u: Any) -> float:
        ts = _grid_of(sde, torch.as_tensor(u, dtype=torch.float64), lam_T, lam_e)
        if not bool((ts[1:] < ts[:-1]).all()):
            return 1e10
        try:
            sol = spec(sde, score_fn, x_T_calib, ts, check_finite="off")
        except ValueError:
            return 1e10
        count["evals"] += 1
        count["nfe"] += sol.nfe
        if not bool(torch.isfinite(sol.x).all()):
            return 1e10
        return trajectory_rmse(sol.x, ref, alpha_e)

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
    res = minimize(objective, u0.numpy(), method="Powell", options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-4})
    u = torch.as_tensor(res.x, dtype=torch.float64)
    err_cal = objective(res.x)
    if err_cal > err0:  # never return a grid worse than the start on the calibration set
        u, err_cal = u0, err0
    return CalibratedGrid(
        ts=_grid_of(sde, u, lam_T, lam_e), sampler=sampler_name, nfe=nfe, steps=n, error_start=err0,
        error_calibrated=err_cal, nfe_reference=nfe_ref, nfe_search=count["nfe"], nfe_total=nfe_ref + count["nfe"],
        evaluations=count["evals"], seconds=time.perf_counter() - t_start,
    )

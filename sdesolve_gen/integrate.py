r"""Thin, exact wrappers over torchsde and torchdiffeq: ``sdeint``, ``odeint``, ``timesteps``.

What the wrappers add to the raw libraries (DESIGN.md section 2 and 4):

* physical time grids in the direction the equation runs (a reverse SDE runs T -> eps);
* any state shape ``(B, *shape)`` (torchsde needs ``(B, d)``);
* fixed-step SDE solves that land *exactly* on every requested output time. torchsde itself
  steps with a constant ``dt`` and linearly interpolates at output times that are not on its
  step grid, which shrinks the variance of the Brownian part; here torchsde's own solver
  classes are stepped over an exact grid instead;
* a Brownian path that draws one Gaussian increment per step from a ``torch.Generator``
  (:class:`GridBrownian`), so a fixed-step solve is reproducible and cheap (torchsde's default
  ``BrownianInterval`` draws from numpy's global RNG and costs several times a bare loop);
* ``odeint`` never evaluates the vector field outside ``[min(ts), max(ts)]``: adaptive
  torchdiffeq solvers otherwise step past the final time and interpolate back, and a VP
  schedule is NaN at t < 0;
* function-evaluation counts in a :class:`~sdesolve_gen.result.SolveInfo`, and a tqdm bar.
"""

from __future__ import annotations

import math
import time as _time
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torchdiffeq
import torchsde
from torchsde._brownian import BaseBrownian
from torchsde._core import methods as _sde_methods
from torchsde._core.base_sde import ForwardSDE as _TorchsdeWrapped

from ._checks import check_batch, check_positive
from .result import SolveInfo
from .reverse import ReverseSDE
from .sde import LinearSDE

Tensor = torch.Tensor

__all__ = ["timesteps", "sdeint", "odeint", "GridBrownian", "t_of_lambda", "ADAPTIVE_ODE_METHODS"]

#: torchsde methods that only ask the Brownian object for plain increments W(tb) - W(ta).
_INCREMENT_ONLY = {"euler", "milstein", "heun", "midpoint", "reversible_heun", "euler_heun"}
_SDE_METHODS = _INCREMENT_ONLY | {"srk", "log_ode"}
_STRATONOVICH_ONLY = {"heun", "midpoint", "reversible_heun", "euler_heun", "log_ode"}
_ODE_FIXED = {"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun3"}
#: torchdiffeq methods with adaptive step-size control (they accept rtol/atol and step_t).
ADAPTIVE_ODE_METHODS = frozenset({"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver"})


# ---------------------------------------------------------------------------------- time grids


def _half_log_snr(sde: LinearSDE, t: Tensor) -> Tensor:
    r""":math:`\lambda(t) = \log\alpha(t) - \log\sigma(t)` (strictly decreasing in t)."""
    return sde.log_alpha(t) - 0.5 * torch.log(sde.sigma2(t))


def t_of_lambda(sde: LinearSDE, lam: Tensor, *, lo: Optional[float] = None, hi: Optional[float] = None) -> Tensor:
    r"""Invert :math:`\lambda(t) = \log(\alpha/\sigma)` by vectorised bisection (float64).

    :math:`\lambda` is strictly decreasing for every SDE here (the SNR falls with t), so 100
    bisection steps on ``[lo, hi]`` (default ``[0, T]``) reach float64 resolution.

    Args:
        sde: a linear SDE.
        lam: target half-log-SNR values, any shape.

    Returns:
        times with ``lambda(t) = lam``, same shape as ``lam`` (float64).
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    a = torch.full_like(lam, 0.0 if lo is None else lo)
    b = torch.full_like(lam, sde.T if hi is None else hi)
    for _ in range(100):
        mid = 0.5 * (a + b)
        too_early = _half_log_snr(sde, mid) > lam  # lambda(mid) > target -> t is later
        a = torch.where(too_early, mid, a)
        b = torch.where(too_early, b, mid)
    return 0.5 * (a + b)


def timesteps(
    sde: LinearSDE,
    n: int,
    *,
    kind: str = "uniform",
    eps: Optional[float] = None,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    r"""A sampling grid of ``n`` steps: ``n + 1`` strictly decreasing times from ``T`` to ``eps``.

    Kinds:

    * ``"uniform"``: uniform in t.
    * ``"logsnr"``: uniform in :math:`\lambda = \log(\alpha/\sigma)` (DPM-Solver's choice).
    * ``"edm"``: Karras et al.'s :math:`\rho`-schedule in the noise level
      :math:`\tilde\sigma = \sigma/\alpha = e^{-\lambda}`:
      :math:`\tilde\sigma_i = (\tilde\sigma_{\max}^{1/\rho} + \tfrac{i}{n}(\tilde\sigma_{\min}^{1/\rho} -
      \tilde\sigma_{\max}^{1/\rho}))^\rho`, mapped back to t.

    Args:
        sde: the forward SDE.
        n: number of steps (>= 1).
        kind: ``"uniform"``, ``"logsnr"`` or ``"edm"``.
        eps: final time (default ``sde.eps``), ``0 < eps < T``.
        rho: EDM exponent (default 7).
        dtype: dtype of the result (default float64; the grid is always built in float64).
        device: device of the result.

    Returns:
        tensor of shape ``(n + 1,)``; ``ts[0] == T`` and ``ts[-1] == eps`` exactly.

    Raises:
        TypeError: if ``sde`` is not a :class:`~sdesolve_gen.sde.LinearSDE`.
        ValueError: on a bad ``n``, ``kind``, ``eps`` or ``rho``.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (number of steps), got {n!r}")
    eps = sde.eps if eps is None else check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must be smaller than T={sde.T}, got eps={eps}")
    T = sde.T
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + u * (eps - T)
    elif kind in ("logsnr", "edm"):
        lam_T = _half_log_snr(sde, torch.tensor(T, dtype=torch.float64))
        lam_e = _half_log_snr(sde, torch.tensor(eps, dtype=torch.float64))
        if kind == "logsnr":
            lam = lam_T + u * (lam_e - lam_T)
        else:
            rho = check_positive("rho", rho)
            s_max, s_min = torch.exp(-lam_T), torch.exp(-lam_e)
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = t_of_lambda(sde, lam, lo=eps, hi=T)
    else:
        raise ValueError(f"kind must be 'uniform', 'logsnr' or 'edm', got {kind!r}")
    ts[0], ts[-1] = T, eps
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"n={n} is too large for a strictly decreasing {kind!r} grid in float64")
    return ts.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------- Brownian path


class GridBrownian(BaseBrownian):
    r"""A Brownian path sampled on a known time grid: one Gaussian draw per step.

    ``W(t_{j+1}) - W(t_j) = \sqrt{t_{j+1} - t_j}\,z_j`` with :math:`z_j \sim \mathcal N(0, I)` drawn
    from ``generator`` in step order, so the path is reproducible and costs exactly one
    ``randn`` per step. Queries must be grid intervals ``(t_j, t_k)``, ``j < k`` (the sum of the
    increments); this is all torchsde's increment-only methods (euler, milstein, heun, midpoint,
    reversible_heun) ask for on a fixed grid. Space-time Levy area is not provided.

    Args:
        grid: strictly increasing float64 times, shape ``(n + 1,)``.
        shape: ``(B, m)`` shape of one increment.
        dtype, device: of the increments.
        generator: ``torch.Generator`` on ``device`` (default: a fresh one seeded from torch's
            global RNG, so ``torch.manual_seed`` makes it reproducible).
    """

    __slots__ = ("_grid", "_index", "_shape", "_dtype", "_device", "_gen", "_sqrt_h", "_drawn", "_last")

    def __init__(
        self,
        grid: Tensor,
        shape: Tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
        if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("grid must be a strictly increasing 1-D tensor with at least 2 times")
        self._grid = grid.tolist()
        self._index = {t: j for j, t in enumerate(self._grid)}
        self._sqrt_h = [math.sqrt(b - a) for a, b in zip(self._grid[:-1], self._grid[1:])]
        self._shape = tuple(shape)
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        if generator is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=self._device).manual_seed(seed)
        self._gen = generator
        self._drawn = 0  # increments drawn so far
        self._last: Dict[int, Tensor] = {}

    def _increment(self, j: int) -> Tensor:
        while self._drawn <= j:
            z = torch.randn(self._shape, generator=self._gen, dtype=self._dtype, device=self._device)
            self._last = {self._drawn: z * self._sqrt_h[self._drawn]}
            self._drawn += 1
        if j not in self._last:
            raise RuntimeError(f"GridBrownian: increment {j} was already consumed (paths are drawn once, in order)")
        return self._last[j]

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 (torchsde's names)
        if return_U or return_A:
            raise ValueError("GridBrownian has no Levy area: use torchsde.BrownianInterval for srk/log_ode")
        if tb is None:
            raise ValueError("GridBrownian only answers interval queries W(tb) - W(ta)")
        try:
            j, k = self._index[float(ta)], self._index[float(tb)]
        except KeyError:
            raise ValueError(f"GridBrownian was asked for ({float(ta)}, {float(tb)}), which is not a grid interval") from None
        if k <= j:
            raise ValueError("GridBrownian needs ta < tb")
        out = self._increment(j)
        for i in range(j + 1, k):
            out = out + self._increment(i)
        return out

    def __repr__(self) -> str:
        return f"GridBrownian(n_steps={len(self._grid) - 1}, shape={self._shape}, dtype={self._dtype})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return "none"


# ---------------------------------------------------------------------------------- sdeint


def _check_grid(name: str, ts: Any) -> Tensor:
    if not isinstance(ts, torch.Tensor):
        try:
            ts = torch.as_tensor(ts, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D tensor of times") from None
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor with at least 2 times, got shape {tuple(ts.shape)}")
    ts = ts.to(torch.float64)
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} must be finite")
    return ts


def _seed_from(generator: Optional[torch.Generator], seed: Optional[int]) -> Tuple[torch.Generator, int]:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator, int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return torch.Generator().manual_seed(seed), seed
    s = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(s), s


def _step_grid(us: Tensor, dt: Optional[float]) -> Tuple[Tensor, list]:
    """Full increasing step grid containing every output time exactly, and output indices."""
    if dt is None:
        return us, list(range(us.numel()))
    pieces, out_idx, count = [us[:1]], [0], 0
    for a, b in zip(us[:-1].tolist(), us[1:].tolist()):
        k = max(1, math.ceil((b - a) / dt * (1 - 1e-9)))
        inner = torch.linspace(a, b, k + 1, dtype=torch.float64)[1:]
        inner[-1] = b
        pieces.append(inner)
        count += k
        out_idx.append(count)
    return torch.cat(pieces), out_idx


def sdeint(
    sde: Any,
    x0: Tensor,
    ts: Any,
    *,
    method: str = "euler",
    dt: Optional[float] = None,
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    bm: Optional[BaseBrownian] = None,
    progress: bool = False,
    return_info: bool = False,
    **options: Any,
) -> Union[Tensor, Tuple[Tensor, SolveInfo]]:
    r"""Solve an SDE with torchsde, on physical time, for states of any shape.

    Args:
        sde: a :class:`~sdesolve_gen.ReverseSDE` (``ts`` decreasing physical time, T -> eps), a
            forward :class:`~sdesolve_gen.sde.LinearSDE` (``ts`` increasing), or any torchsde SDE
            (``ts`` increasing solver time, used as is).
        x0: initial state at ``ts[0]``, shape ``(B, *shape)``.
        ts: output times, 1-D, strictly monotone in the direction the equation runs.
        method: any torchsde method valid for the SDE: ``"euler"`` (default; Euler-Maruyama),
            ``"milstein"``, ``"srk"``; with ``ReverseSDE(..., sde_type="stratonovich")`` also
            ``"heun"``, ``"midpoint"``, ``"reversible_heun"``.
        dt: step size. ``None`` (default) takes exactly one step per interval of ``ts``;
            otherwise each interval is split into ``ceil(interval / dt)`` equal steps, so every
            output time is hit exactly. For ``adaptive=True`` it is the initial step
            (default: the first interval / 10).
        adaptive: use torchsde's adaptive stepping (``rtol``, ``atol``; torchsde's
            ``BrownianInterval``).
        generator, seed: randomness of the Brownian path (one of them; same value, same path).
        bm: a torchsde Brownian object of shape ``(B, d)`` over the solver-time span, instead.
        progress: show a tqdm bar over steps.
        return_info: also return a :class:`~sdesolve_gen.result.SolveInfo`.
        **options: extra torchsde solver options (e.g. ``milstein``'s ``grad_free=True``).

    Returns:
        ``xs`` of shape ``(len(ts), B, *shape)`` with ``xs[0] == x0``; and the info if asked.

    Raises:
        TypeError, ValueError: on bad arguments (named in the message).
        NonFiniteError: if the score becomes NaN/inf (``ReverseSDE`` checks it), with the time.
    """
    x0 = check_batch("x0", x0, min_dim=2)
    ts = _check_grid("ts", ts)
    if not isinstance(method, str) or method not in _SDE_METHODS:
        raise ValueError(f"method must be one of {sorted(_SDE_METHODS)}, got {method!r}")
    if dt is not None:
        dt = check_positive("dt", dt)
    if adaptive:
        check_positive("rtol", rtol)
        check_positive("atol", atol)
    if bm is not None and (generator is not None or seed is not None):
        raise ValueError("pass bm, or generator/seed, not both")
    sde_type = getattr(sde, "sde_type", None)
    if method in _STRATONOVICH_ONLY and sde_type != "stratonovich":
        raise ValueError(
            f"method={method!r} needs a Stratonovich SDE: use ReverseSDE(..., sde_type='stratonovich') "
            "(exact here, since g depends on t only)"
        )

    # ---- map to increasing solver time
    restore_shape = None
    if isinstance(sde, ReverseSDE):
        if not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError("ts must be strictly decreasing for a ReverseSDE (physical time runs T -> eps)")
        if float(ts.max()) > sde.sde.T * (1 + 1e-12) or float(ts.min()) < 0:
            raise ValueError(f"ts must lie in [0, T] = [0, {sde.sde.T}], got [{float(ts.min())}, {float(ts.max())}]")
        us = sde.solver_times(ts)
        if x0.dim() > 2:
            restore_shape = sde.data_shape
            sde.data_shape = tuple(x0.shape[1:])
    else:
        if not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("ts must be strictly increasing for a forward SDE")
        if isinstance(sde, LinearSDE) and (float(ts.min()) < 0 or float(ts.max()) > sde.T * (1 + 1e-12)):
            raise ValueError(f"ts must lie in [0, T] = [0, {sde.T}], got [{float(ts.min())}, {float(ts.max())}]")
        us = ts
    y0 = x0.reshape(x0.shape[0], -1)
    nfe0 = getattr(sde, "nfe", 0)
    start = _time.perf_counter()
    try:
        if adaptive:
            ys, n_steps = _sdeint_adaptive(sde, y0, us, method, dt, rtol, atol, generator, seed, bm, options)
        else:
            ys, n_steps = _sdeint_fixed(sde, y0, us, method, dt, generator, seed, bm, progress, options)
    finally:
        if isinstance(sde, ReverseSDE) and x0.dim() > 2:
            sde.data_shape = restore_shape
    xs = ys.reshape(ys.shape[0], *x0.shape)
    if not return_info:
        return xs
    info = SolveInfo(
        method=f"torchsde.{method}" + ("+adaptive" if adaptive else ""),
        nfe=getattr(sde, "nfe", 0) - nfe0,
        n_steps=n_steps,
        wall_time=_time.perf_counter() - start,
        extra={"dt": dt, "adaptive": adaptive},
    )
    return xs, info


def _sdeint_fixed(sde, y0, us, method, dt, generator, seed, bm, progress, options):
    grid, out_idx = _step_grid(us, dt)
    if bm is None:
        if method in _INCREMENT_ONLY:
            gen, _ = _seed_from(generator, seed)
            bm = GridBrownian(grid, tuple(y0.shape), dtype=y0.dtype, device=y0.device, generator=gen)
        else:
            _, s = _seed_from(generator, seed)
            bm = torchsde.BrownianInterval(
                t0=float(grid[0]), t1=float(grid[-1]), size=tuple(y0.shape), dtype=y0.dtype, device=y0.device,
                entropy=s, levy_area_approximation="space-time",
            )
    if tuple(bm.shape) != tuple(y0.shape):
        raise ValueError(f"bm must have shape {tuple(y0.shape)} (batch, state size), got {tuple(bm.shape)}")
    # torchsde's own solver classes, stepped over our exact grid. (torchsde.sdeint's contract
    # check would evaluate f and g three extra times at ts[0]; shapes are checked by the score.)
    wrapped = _TorchsdeWrapped(sde)
    solver = _sde_methods.select(method=method, sde_type=wrapped.sde_type)(
        sde=wrapped, bm=bm, dt=float(grid[1] - grid[0]), adaptive=False, rtol=0.0, atol=0.0, dt_min=0.0,
        options=dict(options or {}),
    )
    y0c = y0
    times = [grid[j] for j in range(grid.numel())]  # 0-d float64 tensors, exact grid values
    extra = solver.init_extra_solver_state(times[0], y0c)
    ys, y = [y0c], y0c
    outputs = set(out_idx)
    if isinstance(sde, ReverseSDE):
        sde.precompute(grid)
    steps = range(grid.numel() - 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"sdeint[{method}]", leave=False)
    try:
        for j in steps:
            y, extra = solver.step(times[j], times[j + 1], y, extra)
            if j + 1 in outputs:
                ys.append(y)
    finally:
        if isinstance(sde, ReverseSDE):
            sde.precompute(None)
    return torch.stack(ys, 0), grid.numel() - 1


def _sdeint_adaptive(sde, y0, us, method, dt, rtol, atol, generator, seed, bm, options):
    if bm is None:
        _, s = _seed_from(generator, seed)
        bm = torchsde.BrownianInterval(
            t0=float(us[0]), t1=float(us[-1]), size=tuple(y0.shape), dtype=y0.dtype, device=y0.device,
            entropy=s, levy_area_approximation="space-time" if method in ("srk", "log_ode") else "none",
        )
    dt0 = float(us[1] - us[0]) / 10 if dt is None else dt
    ys = torchsde.sdeint(sde, y0, us, bm=bm, method=method, dt=dt0, adaptive=True, rtol=rtol, atol=atol, options=options)
    return ys, -1


# ---------------------------------------------------------------------------------- odeint


class _CountingFunc(torch.nn.Module):
    """Wrap ``func(t, x)``: reshape flat states, count evaluations, record times if asked."""

    def __init__(self, func, record: bool) -> None:
        super().__init__()
        self.func = func
        self.nfe = 0
        self.times: Optional[list] = [] if record else None

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        if self.times is not None:
            self.times.append(float(t))
        return self.func(t, x)


def odeint(
    func: Any,
    x0: Tensor,
    ts: Any,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    return_info: bool = False,
    record_times: bool = False,
) -> Union[Tensor, Tuple[Tensor, SolveInfo]]:
    r"""Solve an ODE with torchdiffeq, safely, for states of any shape.

    ``func(t, x)`` is any torchdiffeq function, e.g. :class:`~sdesolve_gen.ProbabilityFlowODE`;
    ``ts`` runs in the direction of integration (decreasing from T to eps samples, increasing
    encodes). Tolerances are always explicit (torchdiffeq's own defaults are 1e-7 / 1e-9).

    Safety: adaptive solvers are told to step onto every time in ``ts`` (torchdiffeq's
    ``step_t`` option), so the last step ends exactly at ``ts[-1]`` instead of overshooting it
    and interpolating back; the vector field is never evaluated outside
    ``[min(ts), max(ts)]`` (tested), which matters because e.g. VP's :math:`\sigma(t)` is NaN
    for t < 0. Fixed-step methods step on ``ts`` unless ``options["step_size"]`` is given.

    Args:
        func: callable ``(t, x) -> dx/dt``.
        x0: initial state, shape ``(B, *shape)``.
        ts: 1-D strictly monotone times.
        method: a torchdiffeq method (``"dopri5"`` default, ``"bosh3"``, ``"dopri8"``,
            ``"adaptive_heun"``, ``"rk4"``, ``"midpoint"``, ``"euler"``, ...).
        rtol, atol: tolerances for adaptive methods.
        options: extra torchdiffeq options (``step_size`` for fixed-step methods, ...).
        progress: print a one-line summary with NFE after the solve (adaptive solvers have no
            known step count to show a bar for).
        return_info: also return a :class:`~sdesolve_gen.result.SolveInfo`.
        record_times: store every evaluation time in ``info.extra["times"]``.

    Returns:
        ``xs`` of shape ``(len(ts), B, *shape)``; and the info if asked.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, x), got {type(func).__name__}")
    x0 = check_batch("x0", x0, min_dim=1)
    ts = _check_grid("ts", ts)
    d = ts[1:] - ts[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError("ts must be strictly monotone (increasing or decreasing)")
    if not isinstance(method, str) or method not in _ODE_FIXED | ADAPTIVE_ODE_METHODS:
        raise ValueError(f"method must be one of {sorted(_ODE_FIXED | ADAPTIVE_ODE_METHODS)}, got {method!r}")
    opts = dict(options or {})
    if method in ADAPTIVE_ODE_METHODS:
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        unknown = set(opts) - {"step_t", "jump_t", "first_step", "max_num_steps", "safety", "ifactor", "dfactor", "dtype", "norm"}
        if unknown:
            raise ValueError(f"options has keys unknown to adaptive torchdiffeq solvers: {sorted(unknown)}")
        opts.setdefault("step_t", ts)
    else:
        unknown = set(opts) - {"step_size", "grid_constructor", "perturb", "interp"}
        if unknown:
            raise ValueError(f"options has keys unknown to fixed-step torchdiffeq solvers: {sorted(unknown)}")
        if "step_size" in opts:
            check_positive("options['step_size']", opts["step_size"])
    counted = _CountingFunc(func, record_times)
    ts_x = ts.to(device=x0.device)
    start = _time.perf_counter()
    xs = torchdiffeq.odeint(counted, x0, ts_x, method=method, rtol=rtol, atol=atol, options=opts)
    wall = _time.perf_counter() - start
    if progress:
        print(f"odeint[{method}]: {counted.nfe} evaluations in {wall:.2f} s")
    if not return_info:
        return xs
    extra: Dict[str, Any] = {"rtol": rtol, "atol": atol}
    if record_times:
        extra["times"] = counted.times
    return xs, SolveInfo(method=f"torchdiffeq.{method}", nfe=counted.nfe, wall_time=wall, extra=extra)

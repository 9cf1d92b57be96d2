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
* one result, a :class:`~sdesolve_gen.solution.Solution` with evaluation and step counts, and a
  tqdm bar.
"""

from __future__ import annotations

import math
import time as _time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torchdiffeq
import torchsde

from . import _torchsde_contract as _contract
from ._checks import as_float64, check_batch, check_bool, check_generator, check_int, check_positive, host_values
from .sde import LinearSDE
from .seeds import SeedStreams
from .seeds import randn as _randn
from .solution import Solution

Tensor = torch.Tensor

__all__ = ["timesteps", "sdeint", "odeint", "GridBrownian", "t_of_lambda", "ADAPTIVE_ODE_METHODS", "FIXED_ODE_METHODS"]

#: torchsde methods that only ask the Brownian object for plain increments W(tb) - W(ta).
_INCREMENT_ONLY = {"euler", "milstein", "heun", "midpoint", "reversible_heun", "euler_heun"}
_SDE_METHODS = _INCREMENT_ONLY | {"srk", "log_ode"}
_STRATONOVICH_ONLY = {"heun", "midpoint", "reversible_heun", "euler_heun", "log_ode"}


# ---------------------------------------------------------------------------------- time grids


def t_of_lambda(sde: LinearSDE, lam: Tensor) -> Tensor:
    r"""The time with half-log-SNR :math:`\lambda(t) = \log(\alpha/\sigma)` = ``lam`` (float64).

    Delegates to :meth:`~sdesolve_gen.sde.LinearSDE.t_of_lambda`: closed forms for VP, sub-VP,
    VE, cosine and EDM, vectorised bisection for custom schedules.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE, got {type(sde).__name__}")
    if not isinstance(lam, (torch.Tensor, int, float, list, tuple)) or isinstance(lam, bool):
        raise TypeError(f"lam must be a tensor or number(s) of half-log-SNR values, got {type(lam).__name__}")
    lam64 = as_float64(lam)
    v = host_values(lam64)
    if v is not None and not bool((~torch.isnan(v)).all()):
        raise ValueError("lam must not hold NaN (a half-log-SNR is a real number or +-inf)")
    return sde.t_of_lambda(lam64)


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
    n = check_int("n", n, 1)  # (the number of steps)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    eps = sde.eps if eps is None else check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must be smaller than T={sde.T}, got eps={eps}")
    T = sde.T
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + u * (eps - T)
    elif kind in ("logsnr", "edm"):
        lam_T = sde.half_log_snr(torch.tensor(T, dtype=torch.float64, device="cpu"))
        lam_e = sde.half_log_snr(torch.tensor(eps, dtype=torch.float64, device="cpu"))
        if kind == "logsnr":
            lam = lam_T + u * (lam_e - lam_T)
        else:
            rho = check_positive("rho", rho)
            s_max, s_min = torch.exp(-lam_T), torch.exp(-lam_e)
            sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = sde.t_of_lambda(lam)
    else:
        raise ValueError(f"kind must be 'uniform', 'logsnr' or 'edm', got {kind!r}")
    ts[0], ts[-1] = T, eps
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"n={n} is too large for a strictly decreasing {kind!r} grid in float64")
    return ts.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------- Brownian path


class GridBrownian(torchsde.BaseBrownian):
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
            global RNG, so ``torch.manual_seed`` makes it reproducible), or a
            :class:`~sdesolve_gen.seeds.SeedStreams` with one stream per row (per-sample paths).
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
        grid = as_float64(grid).cpu()
        if grid.dim() != 1 or grid.numel() < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("grid must be a strictly increasing 1-D tensor with at least 2 times")
        self._grid = grid.tolist()
        self._index = {t: j for j, t in enumerate(self._grid)}
        self._sqrt_h = [math.sqrt(b - a) for a, b in zip(self._grid[:-1], self._grid[1:])]
        if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
            raise TypeError(f"shape must be a tuple of ints (the shape of one increment), got {shape!r}")
        for k, s in enumerate(shape):
            check_int(f"shape[{k}]", s, 1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
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
            z = _randn(self._shape, self._gen, dtype=self._dtype, device=self._device)
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
            ts = as_float64(ts)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D tensor of times") from None
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor with at least 2 times, got shape {tuple(ts.shape)}")
    ts = ts.detach().to(torch.float64)
    if not bool(torch.isfinite(ts).all()):
        raise ValueError(f"{name} must be finite")
    return ts


def _seed_from(generator: Optional[torch.Generator], seed: Optional[int]) -> Tuple[torch.Generator, int]:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if isinstance(generator, SeedStreams):
        raise ValueError("generator=SeedStreams (per-sample paths) needs a fixed-step solve (adaptive=False) "
                         f"with an increment-only method ({', '.join(sorted(_INCREMENT_ONLY))})")
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


def _step_grid(us: Tensor, dt: Optional[float]) -> Tuple[Tensor, List[int]]:
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


def _save_indices(save: Any, n_out: int) -> List[int]:
    """Indices into the output times to keep: ``"all"``, ``"final"`` or a sequence of indices."""
    if isinstance(save, str):
        if save == "all":
            return list(range(n_out))
        if save == "final":
            return [n_out - 1]
        raise ValueError(f"save must be 'all', 'final' or a sequence of indices into ts, got {save!r}")
    try:
        idx = [int(i) for i in save]
    except TypeError:
        raise TypeError(f"save must be 'all', 'final' or a sequence of indices into ts, got {type(save).__name__}") from None
    if not idx or any(isinstance(i, bool) for i in save):
        raise ValueError("save must hold at least one integer index into ts")
    idx = [i % n_out if -n_out <= i < n_out else -1 for i in idx]
    if min(idx) < 0 or sorted(set(idx)) != idx:
        raise ValueError(f"save must be strictly increasing indices in [-{n_out}, {n_out}), got {list(save)}")
    return idx


class _FlatSDE:
    """View a diagonal-noise SDE on ``(B, *shape)`` states as one on ``(B, D)`` states (torchsde's contract)."""

    def __init__(self, sde: Any, shape: Tuple[int, ...]) -> None:
        self.sde, self.shape = sde, shape
        self.sde_type, self.noise_type = sde.sde_type, sde.noise_type

    def _x(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], *self.shape)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.f(t, self._x(y)).reshape(y.shape)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.g(t, self._x(y)).reshape(y.shape)

    def g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return self.sde.g_prod(t, self._x(y), self._x(v)).reshape(y.shape)

    def f_and_g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        f, gv = self.sde.f_and_g_prod(t, self._x(y), self._x(v))
        return f.reshape(y.shape), gv.reshape(y.shape)


def sdeint(
    sde: Any,
    x0: Tensor,
    ts: Any,
    *,
    method: str = "euler",
    dt: Optional[float] = None,
    adaptive: bool = False,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    bm: Optional[torchsde.BaseBrownian] = None,
    save: Any = "all",
    callback: Optional[Callable[[Dict[str, Any]], None]] = None,
    progress: bool = False,
    **options: Any,
) -> Solution:
    r"""Solve an SDE with torchsde, on physical time, for states of any shape.

    Args:
        sde: a reverse-time SDE such as :class:`~sdesolve_gen.ReverseSDE` (anything with a
            ``solver_times(ts)`` method; ``ts`` decreasing physical time, T -> eps), a forward
            :class:`~sdesolve_gen.sde.LinearSDE` (``ts`` increasing), or any torchsde SDE (``ts``
            increasing solver time, used as is).
        x0: initial state at ``ts[0]``, shape ``(B, *shape)``.
        ts: output times, 1-D, strictly monotone in the direction the equation runs.
        method: a torchsde method valid for the SDE: ``"euler"`` (default; Euler-Maruyama),
            ``"milstein"``, ``"srk"``; with ``ReverseSDE(..., sde_type="stratonovich")`` also
            ``"heun"``, ``"midpoint"``, ``"reversible_heun"``.
        dt: step size. ``None`` (default) takes exactly one step per interval of ``ts``;
            otherwise each interval is split into ``ceil(interval / dt)`` equal steps, so every
            output time is hit exactly. For ``adaptive=True`` it is the initial step
            (default: the first interval / 10).
        adaptive: use torchsde's adaptive stepping (``rtol``, ``atol``, default 1e-3 each and only
            with ``adaptive=True``: a fixed-step solve refuses them rather than ignore them; torchsde's
            ``BrownianInterval``).
        generator, seed: randomness of the Brownian path (one of them; same value, same path).
            ``generator`` may be a :class:`~sdesolve_gen.seeds.SeedStreams` (one stream per sample:
            each row's path depends on its seed alone; fixed steps, increment-only methods).
        bm: a torchsde Brownian object of shape ``(B, D)`` over the solver-time span, instead.
        save: which output times to keep in ``ys``: ``"all"`` (default), ``"final"``, or a
            sequence of indices into ``ts``; the others are never stored.
        callback: called after every fixed step as ``callback({"i", "t", "x"})`` with the step
            index, its end time (physical time for a reverse SDE) and the state ``(B, *shape)``.
        progress: show a tqdm bar over steps.
        **options: extra torchsde solver options (e.g. ``milstein``'s ``grad_free=True``).

    Returns:
        :class:`~sdesolve_gen.Solution` with ``ys`` of shape ``(len(saved), B, *shape)``,
        ``ts`` the saved times (the input's time axis), ``x`` the state at ``ts[-1]`` and the
        number of drift evaluations (``nfe``, when the SDE counts them) and steps.

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
    check_bool("adaptive", adaptive)
    check_bool("progress", progress)
    if not adaptive and (rtol is not None or atol is not None):
        raise ValueError("rtol/atol only apply with adaptive=True; a fixed-step solve would ignore them")
    rtol = 1e-3 if rtol is None else rtol
    atol = 1e-3 if atol is None else atol
    if isinstance(generator, torch.Generator):
        check_generator(generator, x0.device, "x0")
    if adaptive:
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        if callback is not None:
            raise ValueError("callback is only supported for fixed-step solves (adaptive=False)")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(info_dict), got {type(callback).__name__}")
    if seed is not None:
        check_int("seed", seed, lo=0)
    unknown = sorted(set(options) - _contract.METHOD_OPTIONS)
    if unknown:
        raise TypeError(f"sdeint got unknown solver option(s) {unknown}: torchsde would ignore them; "
                        f"known: {sorted(_contract.METHOD_OPTIONS)}")
    if bm is not None and (generator is not None or seed is not None):
        raise ValueError("pass bm, or generator/seed, not both")
    keep = _save_indices(save, ts.numel())
    sde_type = getattr(sde, "sde_type", None)
    if method in _STRATONOVICH_ONLY and sde_type != "stratonovich":
        raise ValueError(
            f"method={method!r} needs a Stratonovich SDE: use ReverseSDE(..., sde_type='stratonovich') "
            "(exact here, since g depends on t only)"
        )

    # ---- map to increasing solver time
    to_physical: Callable[[Tensor], Tensor] = lambda u: u  # noqa: E731
    if callable(getattr(sde, "solver_times", None)):
        us = sde.solver_times(ts)
        to_physical = sde.physical_time
    else:
        if not bool((ts[1:] > ts[:-1]).all()):
            raise ValueError("ts must be strictly increasing for a forward SDE")
        if isinstance(sde, LinearSDE) and (float(ts.min()) < 0 or float(ts.max()) > sde.T * (1 + 1e-12)):
            raise ValueError(f"ts must lie in [0, T] = [0, {sde.T}], got [{float(ts.min())}, {float(ts.max())}]")
        us = ts
    shape = tuple(x0.shape[1:])
    if len(shape) > 1 and getattr(sde, "noise_type", None) != "diagonal":
        raise ValueError(f"states of shape (B, *shape) with more than one data dimension need a diagonal-noise SDE, got noise_type={getattr(sde, 'noise_type', None)!r}")
    if not getattr(sde, "differentiable", True):
        x0 = x0.detach()  # inference: no graph across steps (see ReverseSDE's differentiable)
    y0 = x0.reshape(x0.shape[0], -1)
    start = _time.perf_counter()
    if adaptive:
        solver_sde = sde if len(shape) == 1 else _FlatSDE(sde, shape)
        nfe0 = getattr(sde, "nfe", 0)
        ys, (n_steps, n_rejected) = _sdeint_adaptive(solver_sde, y0, us, method, dt, rtol, atol, generator, seed, bm, options)
        nfe = getattr(sde, "nfe", 0) - nfe0
        _raise_if_nonfinite(sde)
        ys = ys[keep]
    else:
        grid, out_idx = _step_grid(us, dt)
        on_grid = getattr(sde, "on_grid", None)
        run_sde = on_grid(grid) if callable(on_grid) else sde
        solver_sde = run_sde if len(shape) == 1 else _FlatSDE(run_sde, shape)
        nfe0 = getattr(run_sde, "nfe", 0)
        ys = _sdeint_fixed(solver_sde, y0, grid, [out_idx[k] for k in keep], method, generator, seed, bm, progress,
                           options, callback, to_physical, shape)
        n_steps, n_rejected = grid.numel() - 1, 0
        nfe = getattr(run_sde, "nfe", 0) - nfe0
        if run_sde is not sde and hasattr(sde, "nfe"):
            sde.nfe += nfe
        _raise_if_nonfinite(run_sde)
    xs = ys.reshape(ys.shape[0], *x0.shape)
    return Solution(
        x=xs[-1], ts=ts[keep], ys=xs,
        method=f"torchsde.{method}" + ("+adaptive" if adaptive else ""),
        nfe=nfe, n_steps=n_steps, n_rejected=n_rejected, wall_time=_time.perf_counter() - start,
        extra={"dt": dt, "adaptive": adaptive},
    )


def _raise_if_nonfinite(obj: Any) -> None:
    check = getattr(obj, "raise_if_nonfinite", None)
    if callable(check):
        check()


def _sdeint_fixed(sde, y0, grid, out_idx, method, generator, seed, bm, progress, options, callback, to_physical, shape):
    if bm is None:
        if method in _INCREMENT_ONLY:
            gen = generator if isinstance(generator, SeedStreams) else _seed_from(generator, seed)[0]
            bm = GridBrownian(grid, tuple(y0.shape), dtype=y0.dtype, device=y0.device, generator=gen)
        else:
            _, s = _seed_from(generator, seed)
            bm = torchsde.BrownianInterval(
                t0=float(grid[0]), t1=float(grid[-1]), size=tuple(y0.shape), dtype=y0.dtype, device=y0.device,
                entropy=s, levy_area_approximation="space-time",
            )
    if tuple(bm.shape) != tuple(y0.shape):
        raise ValueError(f"bm must have shape {tuple(y0.shape)} (batch, state size), got {tuple(bm.shape)}")
    # torchsde's own solver classes, stepped over our exact grid (see _torchsde_contract; torchsde.sdeint's
    # contract check would also evaluate f and g three extra times at ts[0]).
    step, init_extra = _contract.stepper(sde, method, bm, float(grid[1] - grid[0]), options or {})
    times = [grid[j] for j in range(grid.numel())]  # 0-d float64 tensors, exact grid values
    extra = init_extra(times[0], y0)
    outputs = set(out_idx)
    ys, y = ([y0] if 0 in outputs else []), y0
    steps: Iterable[int] = range(grid.numel() - 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"sdeint[{method}]", leave=False)
    for j in steps:
        y, extra = step(times[j], times[j + 1], y, extra)
        if j + 1 in outputs:
            ys.append(y)
        if callback is not None:
            callback({"i": j, "t": to_physical(times[j + 1]), "x": y.reshape(y.shape[0], *shape)})
    return torch.stack(ys, 0)


def _sdeint_adaptive(sde, y0, us, method, dt, rtol, atol, generator, seed, bm, options):
    if bm is None:
        _, s = _seed_from(generator, seed)
        bm = torchsde.BrownianInterval(
            t0=float(us[0]), t1=float(us[-1]), size=tuple(y0.shape), dtype=y0.dtype, device=y0.device,
            entropy=s, levy_area_approximation="space-time" if method in ("srk", "log_ode") else "none",
        )
    dt0 = float(us[1] - us[0]) / 10 if dt is None else dt
    counter = _RecordingBrownian(bm)
    ys = torchsde.sdeint(sde, y0, us, bm=counter, method=method, dt=dt0, adaptive=True, rtol=rtol, atol=atol, options=options)
    return ys, _contract.adaptive_step_counts(counter.queries)


class _RecordingBrownian(torchsde.BaseBrownian):
    """Pass-through Brownian object that records the intervals an adaptive torchsde solve asks for."""

    def __init__(self, bm: Any) -> None:
        self.bm = bm
        self.queries: List[Tuple[float, float]] = []

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 (torchsde's names)
        self.queries.append((float(ta), float(ta if tb is None else tb)))
        return self.bm(ta, tb, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"_RecordingBrownian({self.bm!r})"

    dtype = property(lambda self: self.bm.dtype)
    device = property(lambda self: self.bm.device)
    shape = property(lambda self: self.bm.shape)
    levy_area_approximation = property(lambda self: self.bm.levy_area_approximation)


# ---------------------------------------------------------------------------------- odeint

#: torchdiffeq methods with adaptive step-size control that take ``step_t`` (rtol/atol apply).
ADAPTIVE_ODE_METHODS = frozenset({"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"})
#: torchdiffeq methods that step on a fixed grid (``ts`` unless ``options["step_size"]``).
FIXED_ODE_METHODS = frozenset({"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams"})


#: The tolerances an adaptive method gets when ``rtol`` / ``atol`` are left unset.
DEFAULT_RTOL = DEFAULT_ATOL = 1e-5


def resolve_tolerances(method: str, rtol: Optional[float], atol: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """The ``(rtol, atol)`` a solve with ``method`` uses: :data:`DEFAULT_RTOL` / :data:`DEFAULT_ATOL`
    where unset and checked positive where given; ``(None, None)`` for a fixed-step method
    (:data:`FIXED_ODE_METHODS`), which refuses given tolerances instead of ignoring them."""
    if method in FIXED_ODE_METHODS:
        given = [name for name, v in (("rtol", rtol), ("atol", atol)) if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)} only apply to adaptive methods; method={method!r} steps on a fixed "
                             "grid (ts or options['step_size']) and would ignore them: leave them unset")
        return None, None
    return (DEFAULT_RTOL if rtol is None else check_positive("rtol", rtol),
            DEFAULT_ATOL if atol is None else check_positive("atol", atol))


class _Counting(torch.nn.Module):
    """Wrap ``func(t, x)``: count evaluations and steps, record times if asked, keep ``func``'s callbacks."""

    def __init__(self, func: Any, method: str, record: bool, progress: Any,
                 span: Optional[Tuple[float, float]] = None) -> None:
        super().__init__()
        self.func = func
        self.span = span  # evaluate at times clamped into [lo, hi] (torchdiffeq's initial-step probe)
        self.nfe = self.n_accepted = self.n_rejected = self.n_fixed = 0
        self.times: Optional[List[float]] = [] if record else None
        user = {name: getattr(func, name, None) for name in ("callback_step", "callback_accept_step", "callback_reject_step")}
        counters = {}
        if method in ADAPTIVE_ODE_METHODS:
            counters = {"callback_accept_step": "n_accepted", "callback_reject_step": "n_rejected"}
        elif method in FIXED_ODE_METHODS:
            counters = {"callback_step": "n_fixed"}
        for name in set(counters) | {k for k, v in user.items() if v is not None}:
            setattr(self, name, self._callback(counters.get(name), user[name], progress if name in ("callback_accept_step", "callback_step") else None))

    def _callback(self, counter: Optional[str], user: Optional[Callable[..., Any]], bar: Any) -> Callable[..., Any]:
        def callback(t0: Tensor, y0: Any, dt: Tensor) -> None:
            if counter is not None:
                setattr(self, counter, getattr(self, counter) + 1)
                if bar is not None:
                    bar.update(1)
            if user is not None:
                user(t0, y0, dt)

        return callback

    def forward(self, t: Tensor, x: Any) -> Any:
        self.nfe += 1
        if self.span is not None:
            t = t.clamp(self.span[0], self.span[1])
        if self.times is not None:
            self.times.append(float(t))
        return self.func(t, x)


def _check_state(x0: Any) -> Any:
    if isinstance(x0, tuple):
        if not x0:
            raise ValueError("x0 must be a tensor or a non-empty tuple of tensors")
        for k, v in enumerate(x0):  # the first component is the state; others (log-dets...) may be empty
            check_batch(f"x0[{k}]", v, min_dim=1, allow_empty=k > 0)
        return x0
    return check_batch("x0", x0, min_dim=1)


def odeint(
    func: Any,
    x0: Any,
    ts: Any,
    *,
    method: str = "dopri5",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    options: Optional[Dict[str, Any]] = None,
    save: Any = "all",
    progress: bool = False,
    record_times: bool = False,
) -> Solution:
    r"""Solve an ODE with torchdiffeq, safely, for states of any shape (or tuples of them).

    ``func(t, x)`` is any torchdiffeq function, e.g. :class:`~sdesolve_gen.ProbabilityFlowODE`;
    ``ts`` runs in the direction of integration (decreasing from T to eps samples, increasing
    encodes). Tolerances default to ``1e-5`` (not torchdiffeq's 1e-7 / 1e-9) and are passed explicitly. Any
    torchdiffeq method is passed through; callbacks defined on ``func`` (torchdiffeq's
    ``callback_step``, ``callback_accept_step``, ``callback_reject_step``) are kept.

    Safety: adaptive Runge-Kutta solvers (:data:`ADAPTIVE_ODE_METHODS`) are told to step onto
    every time in ``ts`` (torchdiffeq's ``step_t`` option), so the last step ends exactly at
    ``ts[-1]`` instead of overshooting it and interpolating back. Their one other excursion is
    torchdiffeq's initial-step probe, an evaluation at ``t0 + h0`` that only sizes the first step
    and can fall outside the range (e.g. ``T = 2`` at tolerance 1e-8); ``odeint`` evaluates it at
    its time clamped into ``[min(ts), max(ts)]``. So the vector field is never evaluated outside
    ``[min(ts), max(ts)]`` (tested), which matters because e.g. VP's :math:`\sigma(t)` is NaN for
    t < 0. Fixed-step methods (:data:`FIXED_ODE_METHODS`) step on
    ``ts`` unless ``options["step_size"]`` is given. Other methods (e.g. ``scipy_solver``) get
    the options as given and no such guarantee.

    Args:
        func: callable ``(t, x) -> dx/dt`` (tuples in, tuples out for a tuple state).
        x0: initial state, shape ``(B, *shape)``, or a tuple of tensors.
        ts: 1-D strictly monotone times.
        method: a torchdiffeq method (``"dopri5"`` default, ``"bosh3"``, ``"dopri8"``, ``"rk4"``,
            ``"heun2"``, ``"fixed_adams"``, ``"scipy_solver"``, ...).
        rtol, atol: tolerances for adaptive methods (default ``1e-5`` each); a fixed-step method
            refuses them (``ValueError``) rather than ignoring them.
        options: torchdiffeq options (``step_size`` for fixed-step methods, ``norm``, ...).
        save: ``"all"`` (default), ``"final"`` or a sequence of indices into ``ts`` to keep in ``ys``.
        progress: show a tqdm bar over accepted steps.
        record_times: store every evaluation time in ``extra["times"]``.

    Returns:
        :class:`~sdesolve_gen.Solution`: ``ys`` of shape ``(len(saved), B, *shape)`` (a tuple for
        a tuple state), ``x`` the state at ``ts[-1]``, ``nfe``, accepted (``n_steps``) and
        rejected steps.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, x), got {type(func).__name__}")
    x0 = _check_state(x0)
    ts = _check_grid("ts", ts)
    d = ts[1:] - ts[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError("ts must be strictly monotone (increasing or decreasing)")
    sde = getattr(func, "sde", None)
    if isinstance(sde, LinearSDE):  # e.g. a ProbabilityFlowODE: its field is defined on [0, T] only
        lo, hi = float(ts.min()), float(ts.max())
        if lo < 0.0 or hi > sde.T * (1.0 + 1e-12):
            raise ValueError(f"ts must lie in [0, T] = [0, {sde.T}] for func's SDE, got [{lo}, {hi}]")
    if not isinstance(method, str) or not method:
        raise TypeError(f"method must be the name of a torchdiffeq method, got {method!r}")
    keep = _save_indices(save, ts.numel())
    check_bool("progress", progress)
    check_bool("record_times", record_times)
    opts = dict(options or {})
    rtol, atol = resolve_tolerances(method, rtol, atol)
    if method in ADAPTIVE_ODE_METHODS:
        unknown = set(opts) - {"step_t", "jump_t", "first_step", "max_num_steps", "safety", "ifactor", "dfactor", "dtype", "norm"}
        if unknown:
            raise ValueError(f"options has keys unknown to adaptive torchdiffeq solvers: {sorted(unknown)}")
        opts.setdefault("step_t", ts)
    elif method in FIXED_ODE_METHODS:
        unknown = set(opts) - {"step_size", "grid_constructor", "perturb", "interp", "max_iters", "max_order"}
        if unknown:
            raise ValueError(f"options has keys unknown to fixed-step torchdiffeq solvers: {sorted(unknown)}")
        if "step_size" in opts:
            check_positive("options['step_size']", opts["step_size"])
    first = x0[0] if isinstance(x0, tuple) else x0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"odeint[{method}]", unit="step", leave=False)
    span = (float(ts.min()), float(ts.max())) if method in ADAPTIVE_ODE_METHODS else None
    counted = _Counting(func, method, record_times, bar, span)
    if not getattr(func, "differentiable", True):
        x0 = tuple(v.detach() for v in x0) if isinstance(x0, tuple) else x0.detach()
    start = _time.perf_counter()
    try:
        xs = torchdiffeq.odeint(counted, x0, ts.to(device=first.device), method=method, options=opts,
                                **({} if rtol is None else {"rtol": rtol, "atol": atol}))
    finally:
        if bar is not None:
            bar.close()
    _raise_if_nonfinite(func)
    wall = _time.perf_counter() - start
    ys: Any = tuple(v[keep] for v in xs) if isinstance(xs, tuple) else xs[keep]
    extra: Dict[str, Any] = {"rtol": rtol, "atol": atol}
    if record_times:
        extra["times"] = counted.times
    n_steps = counted.n_accepted if method in ADAPTIVE_ODE_METHODS else counted.n_fixed
    final: Any = tuple(v[-1] for v in xs) if isinstance(xs, tuple) else xs[-1]  # a tuple for a tuple state
    return Solution(
        x=final, ts=ts[keep], ys=ys,
        method=f"torchdiffeq.{method}", nfe=counted.nfe, n_steps=n_steps, n_rejected=counted.n_rejected,
        wall_time=wall, extra=extra,
    )

r"""Plotting helpers for samples, trajectories, images and training curves.

matplotlib is imported lazily (only when a function here is called), so ``import sdesolve_gen``
never needs it; without it every function raises an ``ImportError`` naming the extra to install
(``pip install sdesolve_gen[plot]``).

Every function draws onto a matplotlib ``Axes`` it is given (``image_grid`` may instead create a
figure and save it to a path) and returns that axes / figure, in the style of seaborn's axes-level
functions. Inputs may be torch tensors or numpy arrays; they are detached and moved to the CPU.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["scatter_vs_density", "trajectory_fan", "image_grid", "loss_curve"]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]


def _pyplot() -> Any:
    """``matplotlib.pyplot``, or an ``ImportError`` saying how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # exercised by monkeypatching __import__ in the tests
        raise ImportError(
            "sdesolve_gen.plotting needs matplotlib: pip install 'sdesolve_gen[plot]' (or pip install matplotlib)"
        ) from err
    return plt


def _check_axes(ax: Any) -> None:
    if not (hasattr(ax, "plot") and hasattr(ax, "scatter") and hasattr(ax, "figure")):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from None
    return arr


def _logpdf_callable(name: str, data_or_logpdf: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(data_or_logpdf, "log_prob") and callable(data_or_logpdf.log_prob):
        return data_or_logpdf.log_prob
    if callable(data_or_logpdf):
        return data_or_logpdf
    raise TypeError(
        f"{name} must have a log_prob(x) method (e.g. an analytic GaussianMixture) or be a callable "
        f"x -> log density, got {type(data_or_logpdf).__name__}"
    )


def scatter_vs_density(
    ax: Any,
    samples: ArrayLike,
    data_or_logpdf: Any,
    *,
    extent: Optional[Tuple[float, float, float, float]] = None,
    n_grid: int = 150,
    levels: int = 8,
    max_points: int = 4000,
    s: float = 2.0,
    alpha: float = 0.35,
    color: str = "C0",
    title: Optional[str] = None,
    xlabel: Optional[str] = "x[0]",
    ylabel: Optional[str] = "x[1]",
) -> Any:
    r"""Scatter 2-D samples over the contours of an exact density :math:`p(x)`.

    The density is evaluated on an ``n_grid x n_grid`` grid over ``extent`` and drawn as filled
    contours of :math:`p` (not :math:`\log p`), ``levels`` levels; the first ``max_points`` samples
    are scattered on top and the contour lines drawn over them.

    Args:
        ax: a matplotlib ``Axes``.
        samples: shape ``(N, 2)``, finite.
        data_or_logpdf: an object with ``log_prob(x: (M, 2) float64 tensor) -> (M,)`` (e.g.
            :class:`~sdesolve_gen.analytic.GaussianMixture` or ``data.marginal(t, sde)``), or
            such a callable.
        extent: ``(xmin, xmax, ymin, ymax)``; default: the samples' 0.5-99.5% range padded by 10%.
        n_grid: grid points per axis (>= 10).
        levels: number of contour levels (>= 2).
        max_points, s, alpha, color: scatter options.
        title: axes title.
        xlabel, ylabel: axis labels (default ``"x[0]"``, ``"x[1]"``; ``None`` leaves them unset).

    Returns:
        ``ax``.

    Raises:
        TypeError: ``ax`` not an Axes, ``data_or_logpdf`` without ``log_prob``.
        ValueError: ``samples`` not ``(N, 2)`` / not finite, bad ``extent``/``n_grid``/``levels``.
    """
    _pyplot()
    _check_axes(ax)
    xy = _to_numpy("samples", samples)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise ValueError(f"samples must have shape (N, 2) with N >= 1, got {xy.shape}")
    if not np.isfinite(xy).all():
        raise ValueError("samples contains NaN or inf")
    logpdf = _logpdf_callable("data_or_logpdf", data_or_logpdf)
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 10:
        raise ValueError(f"n_grid must be an int >= 10, got {n_grid!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if extent is None:
        lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-6)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    ext = _to_numpy("extent", extent)
    if ext.shape != (4,) or not np.isfinite(ext).all() or ext[0] >= ext[1] or ext[2] >= ext[3]:
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent!r}")
    gx, gy = np.meshgrid(np.linspace(ext[0], ext[1], n_grid), np.linspace(ext[2], ext[3], n_grid))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
    with torch.no_grad():
        lp = _to_numpy("log_prob", logpdf(grid)).reshape(n_grid, n_grid)
    dens = np.exp(lp)
    ax.contourf(gx, gy, dens, levels=levels, cmap="Greys", alpha=0.5)
    pts = xy[:max_points]
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, linewidths=0)
    ax.contour(gx, gy, dens, levels=levels, colors="k", linewidths=0.5, alpha=0.7)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_aspect("equal", adjustable="box")
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    return ax


def _paths(name: str, paths: Any, coord: int) -> np.ndarray:
    arr = _to_numpy(name, paths)
    if arr.ndim == 3:
        if not 0 <= coord < arr.shape[2]:
            raise ValueError(f"coord must be in [0, {arr.shape[2]}), got {coord}")
        arr = arr[:, :, coord]
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name} must have shape (L, P) or (L, P, D) with L >= 2 times, got {arr.shape}")
    return arr


def trajectory_fan(
    ax: Any,
    sde_paths: Optional[ArrayLike],
    ode_paths: Optional[ArrayLike],
    *,
    ts: Optional[ArrayLike] = None,
    ode_ts: Optional[ArrayLike] = None,
    coord: int = 0,
    title: Optional[str] = None,
) -> Any:
    r"""Fan of reverse-SDE paths (thin, blue) and PF-ODE paths (thick, orange): one coordinate
    :math:`x_t^{(\text{coord})}` against time :math:`t`, from noise at :math:`T` to data at
    :math:`\varepsilon` (the time axis is inverted so time runs left to right as sampling does).

    Args:
        ax: a matplotlib ``Axes``.
        sde_paths, ode_paths: shape ``(L, P)`` or ``(L, P, D)`` (``L`` times, ``P`` paths, as
            returned by :func:`~sdesolve_gen.sdeint` / :func:`~sdesolve_gen.odeint`); either may be
            ``None`` but not both.
        ts: times of ``sde_paths`` (length ``L``); default the step index.
        ode_ts: times of ``ode_paths``; default ``ts`` if lengths match, else the step index.
        coord: which coordinate to plot for 3-D inputs.
        title: axes title.

    Returns:
        ``ax``.
    """
    _pyplot()
    _check_axes(ax)
    if sde_paths is None and ode_paths is None:
        raise ValueError("sde_paths and ode_paths cannot both be None")
    for name, paths, times, style in (
        ("sde_paths", sde_paths, ts, dict(color="C0", lw=0.7, alpha=0.6)),
        ("ode_paths", ode_paths, ode_ts if ode_ts is not None else ts, dict(color="C1", lw=1.6, alpha=0.9)),
    ):
        if paths is None:
            continue
        arr = _paths(name, paths, coord)
        if times is None or len(times) != arr.shape[0]:
            if times is not None and name == "sde_paths":
                raise ValueError(f"ts must have length {arr.shape[0]} (the times of sde_paths), got {len(times)}")
            t = np.arange(arr.shape[0], dtype=np.float64)
        else:
            t = _to_numpy("ts", times)
        label = "reverse SDE" if name == "sde_paths" else "PF-ODE"
        for j in range(arr.shape[1]):
            ax.plot(t, arr[:, j], label=label if j == 0 else None, **style)
    if ts is not None:
        ax.invert_xaxis()
        ax.set_xlabel("t (sampling runs T -> eps)")
    else:
        ax.set_xlabel("step")
    ax.set_ylabel(f"x[{coord}]")
    ax.legend(loc="best", fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax


def image_grid(
    images: ArrayLike,
    path_or_ax: Union[str, os.PathLike, Any],
    *,
    nrow: Optional[int] = None,
    value_range: Optional[Tuple[float, float]] = None,
    pad: int = 1,
    dpi: int = 100,
) -> Any:
    r"""Tile images into one grid and draw it on an ``Axes`` or save it as a PNG.

    Images are rescaled by :math:`(x - lo)/(hi - lo)` clipped to :math:`[0, 1]` with
    ``value_range = (lo, hi)`` (default: the batch's min and max).

    Args:
        images: shape ``(N, H, W)``, ``(N, 1, H, W)`` (grey) or ``(N, 3, H, W)`` (RGB).
        path_or_ax: a path (``str``/``PathLike``; the PNG is written there, parent dirs must
            exist) or a matplotlib ``Axes``.
        nrow: images per row (default ``ceil(sqrt(N))``).
        value_range: ``(lo, hi)`` with ``lo < hi``.
        pad: pixels between tiles (>= 0).
        dpi: resolution when saving.

    Returns:
        The figure when saving to a path, else ``ax``.
    """
    plt = _pyplot()
    arr = _to_numpy("images", images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
        if arr.shape[3] == 1:
            arr = arr[..., 0]
    elif arr.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), (N, 1, H, W) or (N, 3, H, W), got {arr.shape}")
    n = arr.shape[0]
    if n == 0:
        raise ValueError("images must contain at least one image")
    if not np.isfinite(arr).all():
        raise ValueError("images contains NaN or inf")
    if nrow is None:
        nrow = int(math.ceil(math.sqrt(n)))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be an int >= 1, got {nrow!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    lo, hi = (float(arr.min()), float(arr.max())) if value_range is None else map(float, value_range)
    if value_range is not None and not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    arr = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rows = int(math.ceil(n / nrow))
    h, w = arr.shape[1], arr.shape[2]
    canvas = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad) + arr.shape[3:])
    for k in range(n):
        r, c = divmod(k, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[k]
    if isinstance(path_or_ax, (str, os.PathLike)):
        fig, ax = plt.subplots(figsize=(max(2.0, canvas.shape[1] / 40), max(2.0, canvas.shape[0] / 40)))
        ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.axis("off")
        fig.savefig(os.fspath(path_or_ax), dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return fig
    _check_axes(path_or_ax)
    path_or_ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    path_or_ax.axis("off")
    return path_or_ax


def _loss_series(log: Any) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(log, Mapping):
        if "loss" not in log:
            raise ValueError(f"log as a mapping must have a 'loss' key, got keys {sorted(log)}")
        loss = _to_numpy("log['loss']", log["loss"])
        step = _to_numpy("log['step']", log["step"]) if "step" in log else np.arange(loss.size, dtype=np.float64)
    elif isinstance(log, (list, tuple)) and log and isinstance(log[0], Mapping):
        if not all("loss" in r for r in log):
            raise ValueError("log as a list of records needs a 'loss' entry in every record")
        loss = _to_numpy("log loss", [r["loss"] for r in log])
        step = _to_numpy("log step", [r.get("step", i) for i, r in enumerate(log)])
    else:
        loss = _to_numpy("log", log)
        step = np.arange(loss.size, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"log must give a 1-D, non-empty series of losses, got shape {loss.shape}")
    if step.shape != loss.shape:
        raise ValueError(f"log steps and losses must have the same length, got {step.shape} and {loss.shape}")
    return step, loss


def loss_curve(ax: Any, log: Any, *, smooth: float = 0.9, logy: bool = False, title: Optional[str] = None) -> Any:
    r"""Training loss against step: raw values (faint) and an exponential moving average
    :math:`m_k = \beta m_{k-1} + (1-\beta)\ell_k` with bias correction
    :math:`\hat m_k = m_k / (1-\beta^{k})` (``smooth`` :math:`=\beta`).

    Args:
        ax: a matplotlib ``Axes``.
        log: a sequence of losses; a mapping with ``"loss"`` (and optionally ``"step"``) sequences;
            or a list of records (mappings) each with ``"loss"`` (and optionally ``"step"``).
            Non-finite losses are drawn as gaps.
        smooth: EMA factor :math:`\beta \in [0, 1)` (0 = no smoothing).
        logy: log-scale y axis.
        title: axes title.

    Returns:
        ``ax``.
    """
    _pyplot()
    _check_axes(ax)
    if not isinstance(smooth, (int, float)) or isinstance(smooth, bool) or not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be a number in [0, 1), got {smooth!r}")
    step, loss = _loss_series(log)
    ax.plot(step, loss, color="C0", alpha=0.3, lw=0.8, label="loss")
    if smooth > 0:
        ema, m, k = np.full_like(loss, np.nan), 0.0, 0
        for i, v in enumerate(loss):
            if np.isfinite(v):
                k += 1
                m = smooth * m + (1 - smooth) * v
                ema[i] = m / (1 - smooth**k)
        ax.plot(step, ema, color="C0", lw=1.5, label=f"EMA ({smooth:g})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="best", fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax

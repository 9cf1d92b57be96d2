"""Audit 8 (flow): the plotted data of the plotting helpers (read back from the Axes), by hand."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from _ema_oracle import bias_corrected_ema  # noqa: E402

from sdesolve_gen import plotting  # noqa: E402
from sdesolve_gen.analytic import Gaussian  # noqa: E402


@pytest.fixture
def ax():
    fig, a = plt.subplots()
    yield a
    plt.close(fig)


def test_loss_curve_bias_corrected_ema_with_gaps(ax):
    loss = [1.0, 3.0, float("nan"), 2.0, 5.0]
    plotting.loss_curve(ax, {"loss": loss, "step": [10, 20, 30, 40, 50]}, smooth=0.6, logy=True, title="T")
    raw, ema = ax.get_lines()
    assert list(raw.get_xdata()) == [10, 20, 30, 40, 50]
    np.testing.assert_allclose(ema.get_ydata(), bias_corrected_ema(loss, 0.6), rtol=1e-12)
    assert ema.get_label() == "EMA (0.6)" and ax.get_yscale() == "log" and ax.get_title() == "T"
    ax2 = plt.subplots()[1]
    plotting.loss_curve(ax2, [{"loss": 2.0, "step": 5}, {"loss": 4.0, "step": 7}], smooth=0.0)
    assert len(ax2.get_lines()) == 1 and list(ax2.get_lines()[0].get_xdata()) == [5, 7]
    plt.close(ax2.figure)


def test_image_grid_canvas_by_hand(ax):
    imgs = np.arange(3 * 2 * 3, dtype=np.float64).reshape(3, 1, 2, 3)
    plotting.image_grid(imgs, ax, nrow=2, value_range=(2.0, 12.0), pad=2)
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (2 * (2 + 2) + 2, 2 * (3 + 2) + 2)
    a = np.clip((imgs[:, 0] - 2.0) / 10.0, 0, 1)
    np.testing.assert_allclose(canvas[2:4, 2:5], a[0])
    np.testing.assert_allclose(canvas[2:4, 7:10], a[1])
    np.testing.assert_allclose(canvas[6:8, 2:5], a[2])
    assert canvas[0, 0] == 1.0 and canvas[6, 7] == 1.0  # padding / empty tile is white
    ax2 = plt.subplots()[1]
    plotting.image_grid(imgs[:, 0], ax2)  # default range = min/max, nrow = ceil(sqrt 3) = 2
    c2 = ax2.get_images()[0].get_array()
    np.testing.assert_allclose(c2[1:3, 1:4], imgs[0, 0] / 17.0)
    plt.close(ax2.figure)


def test_scatter_vs_density_grid_and_extent(ax):
    g = Gaussian(torch.tensor([0.5, -0.2]), torch.tensor([[0.4, 0.1], [0.1, 0.3]]))
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    plotting.scatter_vs_density(ax, xy, g, extent=(-1, 3, -2, 2), n_grid=12, levels=4, max_points=2, title="t",
                                xlabel="a", ylabel=None)
    assert ax.get_xlim() == (-1, 3) and ax.get_ylim() == (-2, 2)
    off = ax.collections
    pts = [c for c in off if c.get_offsets().shape[0] > 0 and c.get_offsets().shape[1] == 2 and len(c.get_offsets()) <= 3]
    assert any(np.allclose(c.get_offsets(), xy[:2]) for c in pts)
    assert ax.get_xlabel() == "a" and ax.get_ylabel() == "" and ax.get_title() == "t"
    ax2 = plt.subplots()[1]
    plotting.scatter_vs_density(ax2, xy, g.log_prob)
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    pad = 0.1 * (hi - lo)
    np.testing.assert_allclose(ax2.get_xlim(), (lo[0] - pad[0], hi[0] + pad[0]))
    np.testing.assert_allclose(ax2.get_ylim(), (lo[1] - pad[1], hi[1] + pad[1]))
    assert ax2.get_xlabel() == "x[0]" and ax2.get_ylabel() == "x[1]"
    plt.close(ax2.figure)


def test_trajectory_fan_coords_and_times(ax):
    sde_p = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3)
    ode_p = -np.arange(4 * 1 * 3, dtype=np.float64).reshape(4, 1, 3)
    ts = np.array([1.0, 0.6, 0.3, 0.01])
    plotting.trajectory_fan(ax, sde_p, ode_p, ts=ts, coord=2, title="f")
    lines = ax.get_lines()
    assert len(lines) == 3
    np.testing.assert_allclose(lines[0].get_ydata(), sde_p[:, 0, 2])
    np.testing.assert_allclose(lines[1].get_ydata(), sde_p[:, 1, 2])
    np.testing.assert_allclose(lines[2].get_ydata(), ode_p[:, 0, 2])
    np.testing.assert_allclose(lines[0].get_xdata(), ts)
    assert lines[0].get_label() == "reverse SDE" and lines[2].get_label() == "PF-ODE"
    assert ax.xaxis_inverted() and ax.get_ylabel() == "x[2]"
    ax2 = plt.subplots()[1]
    plotting.trajectory_fan(ax2, None, ode_p, ode_ts=None)
    np.testing.assert_allclose(ax2.get_lines()[0].get_xdata(), np.arange(4))
    assert ax2.get_xlabel() == "step" and not ax2.xaxis_inverted()
    plt.close(ax2.figure)

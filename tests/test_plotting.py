"""sdesolve_gen.plotting: every function draws / writes a PNG, and rejects bad input by name."""

import builtins
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import sdesolve_gen as sg  # noqa: E402
from sdesolve_gen import plotting  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


@pytest.fixture
def gmm():
    return sg.analytic.GaussianMixture(
        torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.stack([0.3 * torch.eye(2), 0.2 * torch.eye(2)]), [0.4, 0.6]
    )


def _save(ax, path):
    ax.figure.savefig(path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    return data


def test_scatter_vs_density_contours_are_the_exact_density(ax, gmm, tmp_path):
    x = gmm.sample(500, generator=torch.Generator().manual_seed(0))
    out = plotting.scatter_vs_density(ax, x, gmm, extent=(-4, 4, -3, 4), n_grid=60, title="t")
    assert out is ax
    assert ax.get_title() == "t" and ax.get_xlim() == (-4, 4)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x[0]", "x[1]")  # every panel says what its axes are
    # the contour levels span [0, max p]: the max of the exact density on the grid (mixture peak
    # ~ 0.6 / (2 pi 0.2) = 0.477 at (2, 1)) must lie in the top level band.
    filled = [c for c in ax.collections if hasattr(c, "levels")][0]
    peak = float(torch.exp(gmm.log_prob(torch.tensor([[2.0, 1.0]], dtype=torch.float64))))
    assert filled.levels[-2] <= peak <= filled.levels[-1] + 1e-12
    # the scatter holds exactly the samples
    offsets = [c.get_offsets() for c in ax.collections if c.get_offsets().shape[0] == 500]
    assert offsets and np.allclose(np.asarray(offsets[0]), x.numpy())
    _save(ax, tmp_path / "s.png")


def test_scatter_vs_density_accepts_callable_and_numpy(ax, gmm):
    x = gmm.sample(100, generator=torch.Generator().manual_seed(1)).numpy()
    plotting.scatter_vs_density(ax, x, lambda z: gmm.log_prob(z), n_grid=20)


@pytest.mark.parametrize(
    "samples, dens, kw, exc, word",
    [
        (torch.zeros(10, 3), None, {}, ValueError, "samples"),
        (torch.full((10, 2), float("nan")), None, {}, ValueError, "NaN"),
        (torch.zeros(0, 2), None, {}, ValueError, "samples"),
        (torch.zeros(10, 2), "not a density", {}, TypeError, "data_or_logpdf"),
        (torch.zeros(10, 2), None, {"extent": (1, 0, 0, 1)}, ValueError, "extent"),
        (torch.zeros(10, 2), None, {"n_grid": 3}, ValueError, "n_grid"),
        (torch.zeros(10, 2), None, {"levels": 1}, ValueError, "levels"),
    ],
)
def test_scatter_vs_density_bad_input(ax, gmm, samples, dens, kw, exc, word):
    with pytest.raises(exc, match=word):
        plotting.scatter_vs_density(ax, samples, gmm if dens is None else dens, **kw)


def test_scatter_vs_density_rejects_non_axes(gmm):
    with pytest.raises(TypeError, match="ax"):
        plotting.scatter_vs_density("axes", torch.zeros(5, 2), gmm)


def test_trajectory_fan_draws_every_path(ax, tmp_path):
    ts = torch.linspace(1.0, 1e-3, 21, dtype=torch.float64)
    sde_paths = torch.randn(21, 5, 2, generator=torch.Generator().manual_seed(0))
    ode_paths = torch.randn(21, 3, 2, generator=torch.Generator().manual_seed(1))
    plotting.trajectory_fan(ax, sde_paths, ode_paths, ts=ts, coord=1, title="fan")
    lines = ax.get_lines()
    assert len(lines) == 8
    assert np.allclose(lines[0].get_ydata(), sde_paths[:, 0, 1].numpy())
    assert np.allclose(lines[5].get_xdata(), ts.numpy())
    assert ax.xaxis_inverted()
    _save(ax, tmp_path / "f.png")


def test_trajectory_fan_one_kind_and_step_axis(ax):
    plotting.trajectory_fan(ax, None, np.zeros((4, 2)))
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "step"


@pytest.mark.parametrize(
    "sde_paths, ode_paths, kw, word",
    [
        (None, None, {}, "both be None"),
        (np.zeros(5), None, {}, "sde_paths"),
        (np.zeros((1, 3)), None, {}, "sde_paths"),
        (np.zeros((5, 3, 2)), None, {"coord": 2}, "coord"),
        (np.zeros((5, 3)), None, {"ts": np.arange(4.0)}, "ts"),
    ],
)
def test_trajectory_fan_bad_input(ax, sde_paths, ode_paths, kw, word):
    with pytest.raises(ValueError, match=word):
        plotting.trajectory_fan(ax, sde_paths, ode_paths, **kw)


@pytest.mark.parametrize("shape", [(7, 8, 8), (7, 1, 8, 8), (4, 3, 5, 5)])
def test_image_grid_writes_png(tmp_path, shape):
    imgs = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "grid.png"
    plotting.image_grid(imgs, path, nrow=3)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_image_grid_on_axes_tiles_and_rescales(ax):
    imgs = torch.stack([torch.full((2, 2), float(k)) for k in range(4)])  # values 0..3
    plotting.image_grid(imgs, ax, nrow=2, pad=1)
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (2 * 3 + 1, 2 * 3 + 1)
    # image k sits at row k // 2, col k % 2 and is rescaled to k / 3
    for k in range(4):
        r, c = divmod(k, 2)
        assert np.allclose(canvas[1 + 3 * r: 3 + 3 * r, 1 + 3 * c: 3 + 3 * c], k / 3)


@pytest.mark.parametrize(
    "images, kw, word",
    [
        (torch.zeros(2, 8), {}, "images"),
        (torch.zeros(0, 4, 4), {}, "at least one"),
        (torch.full((2, 4, 4), float("inf")), {}, "NaN or inf"),
        (torch.zeros(2, 4, 4), {"nrow": 0}, "nrow"),
        (torch.zeros(2, 4, 4), {"pad": -1}, "pad"),
        (torch.zeros(2, 4, 4), {"value_range": (1.0, 1.0)}, "value_range"),
    ],
)
def test_image_grid_bad_input(ax, images, kw, word):
    with pytest.raises(ValueError, match=word):
        plotting.image_grid(images, ax, **kw)


@pytest.mark.parametrize(
    "log",
    [
        [3.0, 2.0, 1.5, 1.2],
        {"step": [10, 20, 30, 40], "loss": [3.0, 2.0, 1.5, 1.2]},
        [{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 30, "loss": 1.5}, {"step": 40, "loss": 1.2}],
    ],
)
def test_loss_curve_formats(ax, log, tmp_path):
    plotting.loss_curve(ax, log, smooth=0.5)
    raw, ema = ax.get_lines()
    assert np.allclose(raw.get_ydata(), [3.0, 2.0, 1.5, 1.2])
    # bias-corrected EMA with beta = 0.5: m1 = 3; m2 = (0.25*3 + 0.5*2)... by hand:
    m, want = 0.0, []
    for k, v in enumerate([3.0, 2.0, 1.5, 1.2], start=1):
        m = 0.5 * m + 0.5 * v
        want.append(m / (1 - 0.5**k))
    assert np.allclose(ema.get_ydata(), want) and want[0] == 3.0
    _save(ax, tmp_path / "l.png")


@pytest.mark.parametrize(
    "log, kw, word",
    [
        ([], {}, "non-empty"),
        ({"los": [1.0]}, {}, "'loss'"),
        ({"loss": [1.0, 2.0], "step": [1]}, {}, "same length"),
        ([{"loss": 1.0}, {"step": 2}], {}, "every record"),
        ([1.0, 2.0], {"smooth": 1.0}, "smooth"),
    ],
)
def test_loss_curve_bad_input(ax, log, kw, word):
    with pytest.raises(ValueError, match=word):
        plotting.loss_curve(ax, log, **kw)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sdesolve_gen\[plot\]'"):
        plotting.loss_curve(None, [1.0])

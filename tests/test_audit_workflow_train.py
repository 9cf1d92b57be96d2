"""Value tests for the Trainer's option wiring.

Bug class guarded: an option accepted but not passed on (loss weighting, importance sampling,
eps, the label keyword, weight decay, the EMA warm-up, eval_fn), a logged window of the wrong
length, a resumed EMA decay. Oracles: the public :func:`~sdesolve_gen.dsm_loss` applied to the
trainer's documented batch and noise streams (data generator seeded ``seed``, noise generator
seeded ``10000 + seed``) and the typed values.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from _ema_oracle import bias_corrected_ema
from torch import nn

import sdesolve_gen as sg

pytest.importorskip("sdesolve_gen.train")

from sdesolve_gen.data import TOY_DATASETS  # noqa: E402


def _mlp_model(sde: sg.LinearSDE) -> sg.ScoreModel:
    """A small eps-net with every weight random (the net's zero-initialised output layer would
    make the DSM loss ||noise||^2 whatever the times, hiding eps and the time sampling)."""
    model = sg.ScoreModel(sg.MLPScoreNet(2, hidden=16, depth=1, t_max=sde.T), sde, "eps")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("weighting,importance,eps", [("g2", True, 0.05), ("sigma2", False, 0.2)])
def test_trainer_first_loss_is_dsm_loss_of_its_streams_with_every_option_forwarded(weighting, importance, eps):
    """The Trainer's first loss equals dsm_loss(weighting, importance_sampling, eps) of the first
    toy batch (data generator seeded 7) with the noise generator seeded 10007, on a VP SDE with
    T = 0.8 (so a dropped T or eps shows). Control: the same oracle with the default weighting
    and eps gives another value."""
    sde = sg.VPSDE(T=0.8)
    data = TOY_DATASETS["eight_gaussians"]()
    model = _mlp_model(sde)
    before = copy.deepcopy(model)
    tr = sg.Trainer(model, sde, data, batch_size=32, seed=7, weighting=weighting, importance_sampling=importance,
                    eps=eps, log_every=0)
    loss = tr.train_step()
    x0 = data.sample(32, generator=torch.Generator().manual_seed(7), dtype=torch.float32)

    def oracle(**kw):
        with torch.no_grad():
            return float(sg.dsm_loss(before, sde, x0, generator=torch.Generator().manual_seed(10_007), **kw))

    want = oracle(weighting=weighting, importance_sampling=importance, eps=eps)
    assert loss == pytest.approx(want, rel=1e-6, abs=0)
    assert oracle() != pytest.approx(want, rel=1e-3)


class _KwargNet(nn.Module):
    """eps-net ``(x, t, c=labels)``: records the labels it is given by the keyword ``c``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x, t, c=None):
        self.seen.append(c)
        return self.lin(x)


def test_trainer_passes_labels_by_its_label_kwarg():
    """With label_kwarg='c' the batch's labels reach the net as ``c=`` (and equal the data's
    labels at the rows the data generator drew). Oracle: the labels of the data; a net that only
    accepts ``c`` would get None if the keyword were ignored."""
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 5
    net = _KwargNet()
    sde = sg.VPSDE()
    tr = sg.Trainer(sg.ScoreModel(net, sde, "eps"), sde, (x, y), batch_size=8, seed=2, label_kwarg="c", log_every=0)
    tr.train_step()
    assert len(net.seen) == 1 and net.seen[0] is not None
    idx = torch.randint(40, (8,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(net.seen[0], y[idx])


def test_trainer_weight_decay_and_ema_warmup_reach_their_objects():
    """weight_decay=0.03 reaches AdamW (default: 0, not AdamW's own 0.01) and ema_warmup=False
    makes the EMA use the constant decay from the first update. Oracle: the typed values and
    the EMA recursion d * a + (1 - d) * p written here."""
    sde = sg.VPSDE()
    data = TOY_DATASETS["eight_gaussians"]()
    tr = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, weight_decay=0.03, log_every=0)
    assert tr.optimizer.param_groups[0]["weight_decay"] == 0.03
    assert sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, log_every=0).optimizer.param_groups[0]["weight_decay"] == 0.0
    for warm in (False, True):
        tr = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.8, ema_warmup=warm, log_every=0)
        tr.train_step()
        p1 = [p.detach().clone() for p in tr.model.parameters()]
        # torch's AveragedModel copies the first update; the decay acts from the second on
        tr.train_step()
        p2 = [p.detach().clone() for p in tr.model.parameters()]
        d = 0.8 if not warm else min(0.8, 2.0 / 11.0)
        for a, q1, q2 in zip(tr.ema.shadow, p1, p2):
            torch.testing.assert_close(a.detach(), d * q1 + (1 - d) * q2, rtol=1e-6, atol=1e-7)


def test_trainer_logs_the_mean_of_the_last_log_every_losses_and_runs_eval_fn_every_eval_every(tmp_path):
    """log.jsonl holds at steps 3 and 6 the mean of the last 3 losses (log_every=3), and eval_fn
    runs at steps 2, 4, 6 (eval_every=2) with its values logged. Oracle: the trainer's own loss
    history averaged here; the step numbers."""
    sde = sg.VPSDE()
    calls = []

    def eval_fn(tr):
        calls.append(tr.step)
        return {"probe": float(tr.step) * 0.5}

    tr = sg.Trainer(_mlp_model(sde), sde, TOY_DATASETS["two_moons"](), batch_size=8, log_every=3, eval_fn=eval_fn,
                    eval_every=2, checkpoint_dir=tmp_path)
    tr.train(6)
    assert calls == [2, 4, 6]
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in recs}
    assert sorted(by_step) == [2, 3, 4, 6]
    h = tr.history
    for s in (3, 6):
        assert by_step[s]["loss"] == pytest.approx(sum(h[s - 3:s]) / 3, rel=1e-12)
    assert by_step[2]["probe"] == 1.0 and by_step[4]["probe"] == 2.0 and by_step[6]["probe"] == 3.0
    assert "loss" not in by_step[2] and "loss" not in by_step[4]


def test_resume_takes_the_checkpoints_ema_decay(tmp_path):
    """A trainer resumed from a checkpoint trained with ema_decay=0.7 continues with 0.7 even if
    built with 0.95 (the checkpoint wins, with a warning). Oracle: the stored value."""
    sde = sg.VPSDE()
    data = TOY_DATASETS["two_moons"]()
    a = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.7, checkpoint_dir=tmp_path, log_every=0)
    a.train(2)
    b = sg.Trainer(_mlp_model(sde), sde, data, batch_size=8, ema_decay=0.95, checkpoint_dir=tmp_path, log_every=0)
    assert b.resume() and b.ema.decay == 0.7 and b.step == 2


# ------------------------------------------------------------------------------ toy datasets


def _iso(mix, std: float) -> None:
    """Every component has covariance std^2 I and weight 1/K."""
    K, D = mix.means.shape
    torch.testing.assert_close(mix.covs, (std**2) * torch.eye(D, dtype=torch.float64).expand(K, D, D), rtol=0, atol=1e-15)
    torch.testing.assert_close(mix.weights, torch.full((K,), 1.0 / K, dtype=torch.float64), rtol=0, atol=1e-15)


def test_toy_datasets_have_their_documented_geometry():
    """The toy targets are what their docstrings say, at non-default parameters. eight_gaussians:
    means r (cos k pi/4, sin k pi/4). two_moons: centred, the lower moon the point reflection of
    the upper one (m[n + i] = -m[i]), first upper centre 1.5 (1 - 0.5, 0 - 0.25). swiss_roll:
    |m_k| = theta_k / 7 with theta_k uniform on [1.5 pi, 4.5 pi] and angle theta_k. checkerboard:
    32 centres, 4 per dark unit square of [-2, 2]^2 (floor(x) + floor(y) even) at offsets
    {0.25, 0.75}^2. Oracle: the formulas, written here; controls: a 7-fold circle and an
    un-reflected lower moon fail the same checks."""
    from sdesolve_gen import data as D

    r, std = 1.7, 0.3
    m = D.eight_gaussians(radius=r, std=std)
    ang = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    want = r * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    torch.testing.assert_close(m.means, want, rtol=0, atol=1e-12)
    ang7 = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 7)
    assert float((m.means - r * torch.stack([torch.cos(ang7), torch.sin(ang7)], 1)).abs().max()) > 0.1
    _iso(m, std)

    n = 5
    mo = D.two_moons(n_per_moon=n, std=0.2)
    assert mo.means.shape == (2 * n, 2)
    torch.testing.assert_close(mo.means.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(mo.means[n:], -mo.means[:n], rtol=0, atol=1e-12)
    assert float((mo.means[n:] - mo.means[:n]).abs().max()) > 0.1  # control: not a copy
    torch.testing.assert_close(mo.means[0], torch.tensor([0.75, -0.375], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(mo.means[n - 1], torch.tensor([-2.25, -0.375], dtype=torch.float64), rtol=0, atol=1e-12)
    _iso(mo, 0.2)

    sr = D.swiss_roll(n=9, std=0.25)
    th = 1.5 * math.pi + torch.arange(9, dtype=torch.float64) * (3 * math.pi / 8)
    torch.testing.assert_close(sr.means.norm(dim=1), th / 7.0, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.atan2(sr.means[:, 1], sr.means[:, 0]), torch.atan2(torch.sin(th), torch.cos(th)),
                               rtol=0, atol=1e-12)
    _iso(sr, 0.25)

    cb = D.checkerboard(std=0.1)
    c = cb.means
    assert c.shape == (32, 2)
    fl = torch.floor(c)
    assert bool(((fl[:, 0] + fl[:, 1]) % 2 == 0).all()) and bool(((fl >= -2) & (fl <= 1)).all())
    off = c - fl
    assert bool(((off - 0.25).abs().lt(1e-12) | (off - 0.75).abs().lt(1e-12)).all())
    assert len({tuple(v) for v in c.tolist()}) == 32
    _iso(cb, 0.1)


# ------------------------------------------------------------------------------------ nets


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_mlp_score_net_is_its_documented_recursion():
    """MLPScoreNet(dim=3, hidden=5, depth=2, embed_dim=6, t_max=2.5) with random weights equals
    h_0 = W_0 x, h_{k+1} = SiLU(W_k h_k + U_k gamma(t) + b_k), out = W_out h_L, with
    gamma(t) = [sin(2 pi (t / t_max) w), cos(2 pi (t / t_max) w)] written here from the
    docstrings (w the stored frequencies). Control: t_max = 1 in gamma differs."""
    net = sg.MLPScoreNet(3, hidden=5, depth=2, embed_dim=6, t_max=2.5).double()
    _randomise(net, 1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.7, 1.3, 2.4], dtype=torch.float64)
    w = dict(net.named_buffers())["embed.W"]

    def by_hand(t_max: float) -> torch.Tensor:
        proj = 2 * math.pi * (t / t_max)[:, None] * w[None, :]
        gam = torch.cat([torch.sin(proj), torch.cos(proj)], 1)
        h = x @ net.inp.weight.T + net.inp.bias
        for lin, tl in zip(net.layers, net.temb):
            z = h @ lin.weight.T + lin.bias + gam @ tl.weight.T + tl.bias
            h = z * torch.sigmoid(z)
        return h @ net.out.weight.T + net.out.bias

    assert len(net.layers) == 2
    with torch.no_grad():
        got = net(x, t)
        torch.testing.assert_close(got, by_hand(2.5), rtol=1e-12, atol=1e-12)
        assert float((got - by_hand(1.0)).abs().max()) > 1e-3


def test_unet_null_label_is_the_default_and_labels_change_the_output():
    """UNet(num_classes=3): y=None means the null label 3 (documented), and another label gives
    another output (the label embedding is used). Oracle: the explicit null-label call."""
    net = sg.UNet(in_channels=1, base=8, num_classes=3).double()
    _randomise(net, 3)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        none = net(x, t)
        null = net(x, t, y=torch.full((2,), 3, dtype=torch.long))
        one = net(x, t, y=torch.ones(2, dtype=torch.long))
    assert torch.equal(none, null)
    assert float((one - null).abs().max()) > 1e-6


# -------------------------------------------------------------------------------- plotting


@pytest.fixture
def ax():
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, axes = plt.subplots()
    yield axes
    plt.close(fig)


def test_image_grid_value_range_default_nrow_pad_and_non_square_rgb_tiles(ax):
    """5 RGB images of 2 x 3 pixels (H != W), value_range (-1, 1), pad 2: the canvas has
    ceil(sqrt 5) = 3 columns and 2 rows, tile k at row k // 3, column k % 3 holds
    clip((x + 1) / 2, 0, 1) of image k (channels last), the padding is white (1). Oracle: the
    documented layout written here; control: the batch min/max scaling would differ."""
    from sdesolve_gen import plotting

    g = torch.Generator().manual_seed(0)
    imgs = 1.5 * torch.rand(5, 3, 2, 3, generator=g, dtype=torch.float64) - 0.8  # in [-0.8, 0.7]: no clipping at 1
    imgs[0, 0, 0, 0] = -1.7  # clipped to 0
    plotting.image_grid(imgs, ax, value_range=(-1.0, 1.0), pad=2)
    canvas = np.asarray(ax.get_images()[0].get_array())
    h, w, pad = 2, 3, 2
    assert canvas.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad, 3)
    want = np.clip((imgs.numpy().transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)
    mask = np.ones(canvas.shape[:2], dtype=bool)
    for k in range(5):
        r, c = divmod(k, 3)
        tile = canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w]
        np.testing.assert_allclose(tile, want[k], rtol=0, atol=1e-12)
        mask[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = False
    assert np.all(canvas[mask] == 1.0)  # padding and the empty sixth tile
    assert canvas[pad, pad, 0] == 0.0  # the clipped pixel
    lo, hi = float(imgs.min()), float(imgs.max())
    minmax = (imgs.numpy().transpose(0, 2, 3, 1)[1] - lo) / (hi - lo)
    assert np.abs(canvas[pad: pad + h, 2 * pad + w: 2 * pad + 2 * w] - minmax).max() > 1e-3


def test_loss_curve_ema_skips_non_finite_losses_in_its_bias_correction(ax):
    """With a NaN loss the EMA has a gap there and its bias correction counts only the finite
    losses: m_k = b m_{k-1} + (1 - b) l_k, hat m = m_k / (1 - b^k) over finite l (b = 0.6).
    Oracle: the recursion written here; control: counting the NaN step changes the next value."""
    from sdesolve_gen import plotting

    loss = [2.0, float("nan"), 1.0, 0.5]
    plotting.loss_curve(ax, loss, smooth=0.6)
    ema = ax.get_lines()[1].get_ydata()
    b = 0.6
    np.testing.assert_allclose(ema, bias_corrected_ema(loss, b), rtol=1e-12)
    wrong = (b * (1 - b) * 2.0 + (1 - b) * 1.0) / (1 - b**3)  # the NaN step counted in k
    assert abs(ema[2] - wrong) > 1e-3

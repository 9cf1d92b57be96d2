"""Networks, data, trainer: EMA, atomic checkpoints, bit-exact resume, DDP."""

import shutil

import pytest
import torch
from _torchrun import run_two_ranks

import sdesolve_gen as sg
from sdesolve_gen import data as D
from sdesolve_gen.nets import GaussianFourierEmbedding, MLPScoreNet, UNet
from sdesolve_gen.train import EMA, Trainer, atomic_save, load_checkpoint

# ---------------------------------------------------------------------------------- nets


def test_mlp_and_unet_shapes_and_parameterisations():
    sde = sg.VPSDE()
    x = torch.randn(5, 2)
    t = torch.rand(5)
    for kind in sg.PARAMETERISATIONS:
        assert sg.ScoreModel(MLPScoreNet(2, hidden=16, depth=1), sde, kind)(x, t).shape == (5, 2)
    for H, mults in ((8, (1, 2)), (28, (1, 2, 2))):
        net = UNet(1, base=8, channel_mults=mults, num_classes=10)
        img = torch.randn(3, 1, H, H)
        assert net(img, torch.rand(3)).shape == img.shape
        assert net(img, torch.rand(3), torch.tensor([0, 3, 9])).shape == img.shape
        assert sg.ScoreModel(net, sde, "x0")(img, 0.5).shape == img.shape


def test_time_embedding_distinguishes_times():
    emb = GaussianFourierEmbedding(16)
    e = emb(torch.tensor([0.1, 0.2]))
    assert e.shape == (2, 16) and not torch.allclose(e[0], e[1])


def test_net_bad_inputs():
    with pytest.raises(ValueError, match="x must have shape"):
        MLPScoreNet(2)(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, base=8, channel_mults=(1, 2))(torch.zeros(1, 1, 7, 7), torch.zeros(1))
    with pytest.raises(ValueError, match="class conditioning"):
        UNet(1, base=8)(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="dim"):
        GaussianFourierEmbedding(7)


# ---------------------------------------------------------------------------------- data


@pytest.mark.parametrize("name", list(D.TOY_DATASETS))
def test_toy_datasets_are_exact_mixtures(name):
    mix = D.TOY_DATASETS[name]()
    x = mix.sample(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (1000, 2) and float(x.abs().max()) < 4
    assert bool(torch.isfinite(mix.log_prob(x)).all())


def test_digits_shape_range_and_levels():
    x, y = D.load_digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    levels = D.load_digits(as_levels=True)
    assert torch.equal(D.from_range(x, (-1, 1), n_levels=17), levels)
    with pytest.raises(ValueError, match="data_range"):
        D.to_range(levels, (1, 1), n_levels=17)


# ---------------------------------------------------------------------------------- trainer


def _trainer(tmp, seed=0, **kw):
    torch.manual_seed(123)
    sde = sg.VPSDE()
    model = sg.ScoreModel(MLPScoreNet(2, hidden=32, depth=2), sde, "eps")
    return Trainer(model, sde, D.eight_gaussians(), batch_size=64, lr=5e-3, seed=seed, checkpoint_dir=tmp, log_every=5, **kw)


def test_ema_is_the_warmed_up_exponential_average_of_parameters_and_buffers():
    """By hand: update 1 copies; update n >= 1 uses d_n = min(d, (1+n)/(10+n)); buffers too."""
    lin = torch.nn.Linear(1, 1, bias=False)
    lin.register_buffer("b", torch.zeros(1))
    ema = EMA(lin, decay=0.9)
    want_w = want_b = None
    for n, v in enumerate((1.0, 2.0, 4.0)):
        with torch.no_grad():
            lin.weight.fill_(v)
            lin.b.fill_(-v)
        ema.update(lin)
        d = min(0.9, (1 + n) / (10 + n))
        want_w = v if n == 0 else d * want_w + (1 - d) * v
        want_b = -v if n == 0 else d * want_b + (1 - d) * (-v)
    assert float(ema.shadow[0].detach()) == pytest.approx(want_w, rel=1e-6)
    assert float(ema.module.b) == pytest.approx(want_b, rel=1e-6)
    assert ema.n_updates == 3
    # without the warm-up: the constant decay
    plain = EMA(lin, decay=0.9, warmup=False)
    for v in (1.0, 2.0):
        with torch.no_grad():
            lin.weight.fill_(v)
        plain.update(lin)
    assert float(plain.shadow[0].detach()) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0, rel=1e-6)


@pytest.mark.parametrize("decay", [0, 15])
def test_resume_is_bit_exact(tmp_path, decay):
    """N steps straight == N/2 steps, a fresh process-like Trainer loading the checkpoint, N/2 more
    (with a constant and with a cosine-decayed learning rate)."""
    straight = _trainer(tmp_path / "a", lr_decay_steps=decay)
    straight.train(20)
    first = _trainer(tmp_path / "b", lr_decay_steps=decay)
    first.train(10)
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "b10.pt")
    del first  # the "killed" run: only its checkpoint on disk survives
    second = _trainer(tmp_path / "b", seed=999, lr_decay_steps=decay)  # different seed: everything must come from disk
    assert second.resume()
    assert second.step == 10
    second.train(20)
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    for (k, p), (_, q) in zip(straight.ema.state_dict().items(), second.ema.state_dict().items()):
        assert torch.equal(p, q), k
    # control: without the saved RNG state the continuation differs
    third = _trainer(tmp_path / "c", seed=999, lr_decay_steps=decay)
    third.load_state_dict(load_checkpoint(tmp_path / "b10.pt"))
    third.g_noise.manual_seed(5)
    third.train(20)
    assert not all(torch.equal(p, q) for p, q in zip(straight.model.parameters(), third.model.parameters()))


def test_checkpoint_files_and_log(tmp_path):
    tr = _trainer(tmp_path)
    tr.train(10)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.pt", "log.jsonl"]  # no temp files left behind
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 10


def test_corrupt_truncated_and_missing_checkpoints(tmp_path):
    tr = _trainer(tmp_path)
    tr.train(2)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_checkpoint(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    atomic_save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not an sdesolve_gen trainer checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_reduces_the_loss(tmp_path):
    tr = _trainer(tmp_path)
    losses = tr.train(150)
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:20]) / 20


def test_trainer_bad_inputs(tmp_path):
    sde = sg.VPSDE()
    model = sg.ScoreModel(MLPScoreNet(2, hidden=8, depth=1), sde)
    with pytest.raises(TypeError, match="model"):
        Trainer(lambda x, t: x, sde, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, sde, torch.zeros(4, 2), batch_size=0)
    with pytest.raises(ValueError, match="NaN"):
        Trainer(model, sde, torch.full((4, 2), float("nan")))
    with pytest.raises(TypeError, match="data"):
        Trainer(model, sde, [1, 2, 3])
    with pytest.raises(ValueError, match="ema_decay"):
        Trainer(model, sde, torch.zeros(4, 2), ema_decay=1.0)
    with pytest.raises(ValueError, match="n_steps"):
        Trainer(model, sde, torch.zeros(4, 2)).train(-1)


@pytest.mark.slow
def test_ddp_two_ranks_identical_weights(tmp_path):
    """torchrun with 2 gloo ranks: weights identical across ranks (DDP averages gradients), changed
    from the initial ones, shards disjoint, and only rank 0 wrote the checkpoint."""
    r0, r1 = run_two_ranks("_ddp_worker.py", tmp_path)
    for a, b in zip(r0["final"], r1["final"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(r0["init"], r0["final"]))
    assert set(r0["shard"]).isdisjoint(r1["shard"])
    assert r0["losses"] != r1["losses"]  # each rank saw its own batches
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint.pt", "log.jsonl"]

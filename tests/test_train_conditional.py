"""Class-conditional training: labels reach the network with their samples; label dropout rate."""

from __future__ import annotations

import math

import torch
from torch import nn

import sdesolve_gen as sg
from sdesolve_gen.train import Trainer, load_checkpoint

SDE = sg.VPSDE()
CENTRES = torch.tensor([-30.0, 30.0])  # label k -> x0 = CENTRES[k] exactly (both coordinates)
NULL = 2


class Spy(nn.Module):
    """Score ``-w x`` that records every (x_t, t, y) it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append((x.detach().clone(), t.detach().clone(), None if y is None else y.clone()))
        return -self.w * x


def _data(n=400, seed=0):
    y = torch.randint(2, (n,), generator=torch.Generator().manual_seed(seed))
    return CENTRES[y][:, None].expand(n, 2).clone(), y


def _z(x_t, t, y):
    """Standardised noise (x_t - alpha x0(y)) / sigma: N(0, 1) iff y is the label of x_t's sample."""
    a = torch.exp(SDE.log_alpha(t))[:, None]
    s = SDE.sigma2(t).sqrt()[:, None]
    return (x_t.double() - a * CENTRES[y].double()[:, None]) / s


def test_labels_reach_the_net_with_their_own_samples():
    """Every non-null label the network receives explains its x_t: |z| < 6 for all of them (the
    noise is N(0, 1)). Control: the same check with the labels of the batch shuffled fails."""
    spy = Spy()
    tr = Trainer(spy, SDE, _data(), batch_size=64, label_dropout=0.2, null_label=NULL, log_every=0)
    tr.train(20)
    x_t = torch.cat([c[0] for c in spy.calls])
    t = torch.cat([c[1] for c in spy.calls])
    y = torch.cat([c[2] for c in spy.calls])
    assert y.dtype == torch.long and y.shape == (20 * 64,)
    keep = y != NULL
    z = _z(x_t[keep], t[keep], y[keep])
    assert float(z.abs().max()) < 6
    shuffled = y[keep][torch.randperm(int(keep.sum()), generator=torch.Generator().manual_seed(1))]
    assert float(_z(x_t[keep], t[keep], shuffled).abs().max()) > 6


def test_label_dropout_rate_is_honoured():
    """p = 0.2 over 300 x 64 labels: the null count is within 5 binomial SE of n p. Negative
    control: the same count is more than 5 SE from p = 0.25; p = 0 never drops."""
    spy = Spy()
    tr = Trainer(spy, SDE, _data(), batch_size=64, label_dropout=0.2, null_label=NULL, log_every=0)
    tr.train(300)
    y = torch.cat([c[2] for c in spy.calls])
    n, k = y.numel(), int((y == NULL).sum())

    def z(p):
        return abs(k - n * p) / math.sqrt(n * p * (1 - p))

    assert z(0.2) < 5
    assert z(0.25) > 5
    spy0 = Spy()
    Trainer(spy0, SDE, _data(), batch_size=64, log_every=0).train(20)
    assert all(int((c[2] == NULL).sum()) == 0 and c[2].shape == (64,) for c in spy0.calls)


def test_unlabelled_data_calls_the_net_without_labels():
    spy = Spy()
    Trainer(spy, SDE, _data()[0], batch_size=8, log_every=0).train(3)
    assert [c[2] for c in spy.calls] == [None] * 3


def test_conditional_unet_trains_resumes_and_checkpoints_its_label_embedding(tmp_path):
    x, y = sg.data.load_digits(return_labels=True)
    with sg.train.seeded(0):
        net = sg.UNet(1, base=8, num_classes=10)
    model = sg.ScoreModel(net, SDE, "eps")
    tr = Trainer(model, SDE, (x[:200], y[:200]), batch_size=16, label_dropout=0.1, null_label=10,
                 checkpoint_dir=tmp_path, log_every=0)
    before = net.label.weight.detach().clone()
    tr.train(3)
    state = load_checkpoint(tmp_path)
    assert state["model"]["net.label.weight"].shape == (11, 128)
    assert not torch.equal(net.label.weight.detach(), before)  # the labels were used


def test_cli_conditional_digits(tmp_path, capsys):
    from sdesolve_gen import cli

    ck = tmp_path / "ck"
    rc = cli.main(["train", "--ckpt", str(ck), "--data", "digits", "--conditional", "--label-dropout", "0.2",
                   "--steps", "2", "--batch-size", "8"])
    out, err = capsys.readouterr()
    assert rc == 0 and "class-conditional, label dropout 0.2" in out, err
    assert load_checkpoint(ck)["model"]["net.label.weight"].shape[0] == 11
    rc = cli.main(["train", "--ckpt", str(ck), "--data", "digits", "--steps", "4", "--batch-size", "8", "--resume"])
    _, err = capsys.readouterr()
    assert rc == 2 and "conditional" in err  # resume must keep --conditional
    rc = cli.main(["train", "--ckpt", str(tmp_path / "t"), "--conditional"])
    _, err = capsys.readouterr()
    assert rc == 2 and "--data digits" in err


def test_cli_samples_a_class_with_guidance(tmp_path, capsys):
    """`sample --class K --cfg W` on a conditional checkpoint; clear errors for misuse (exit 2)."""
    from sdesolve_gen import cli

    ck = tmp_path / "ck"
    assert cli.main(["train", "--ckpt", str(ck), "--data", "digits", "--conditional", "--steps", "2", "--batch-size", "8"]) == 0
    out_a, out_b = tmp_path / "a.pt", tmp_path / "b.pt"
    base = ["sample", str(ck), "-n", "4", "--steps", "3", "--sampler", "dpm_solver_pp_2m"]
    assert cli.main(base + ["--class", "3", "--cfg", "2", "--out", str(out_a)]) == 0
    out, _ = capsys.readouterr()
    assert "class 3, cfg 2" in out
    assert cli.main(base + ["--class", "5", "--cfg", "2", "--out", str(out_b)]) == 0
    a, b = torch.load(out_a)["samples"], torch.load(out_b)["samples"]
    assert a.shape == (4, 1, 8, 8) and not torch.allclose(a, b)  # the class reaches the network
    assert cli.main(base + ["--class", "3", "--cfg", "2", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0
    capsys.readouterr()
    for args, msg in ((["--class", "10"], "--class"), (["--cfg", "2"], "needs --class"), (["--class", "1", "--cfg", "nan"], "--cfg")):
        assert cli.main(base + args + ["--out", str(tmp_path / "d.pt")]) == 2
        assert msg in capsys.readouterr().err
    unc = tmp_path / "unc"
    assert cli.main(["train", "--ckpt", str(unc), "--steps", "2", "--batch-size", "8"]) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(unc), "-n", "4", "--steps", "2", "--class", "1", "--out", str(tmp_path / "e.pt")]) == 2
    assert "not class-conditional" in capsys.readouterr().err

"""Audit 8 (flow): the CLI's train/sample/likelihood/evaluate, every printed number replayed by hand.

The oracle of ``train`` is a :class:`~sdesolve_gen.Trainer` built here with the documented mapping
of the flags (and the documented network defaults); of ``sample``/``likelihood`` a direct call of
the sampler / :func:`~sdesolve_gen.log_likelihood` on the checkpoint's weights.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from _cli_run import run_cli

import sdesolve_gen as sg
from sdesolve_gen import train as train_mod
from sdesolve_gen.samplers import SAMPLERS

# a number printed with 4 decimals is within 5e-5 of the value; the replays here recompute that value
# (float32 model: allow 1e-6 of arithmetic-order differences on top)
PRINT_TOL = 5e-5 + 1e-6
TRAIN = ["--data", "two_moons", "--steps", "6", "--batch-size", "8", "--lr", "5e-3", "--ema-decay", "0.9",
         "--sde", "ve", "--seed", "3", "--every", "4"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "run"
    import contextlib
    import io

    from sdesolve_gen import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(["train", "--ckpt", str(d), *TRAIN])
    assert rc == 0
    return d, out.getvalue()


def _ref_trainer(steps, tmp=None):
    sde = sg.VESDE()
    target = sg.data.two_moons()
    with train_mod.seeded(3):
        net = sg.MLPScoreNet(2, hidden=128, depth=3, t_max=sde.T)
        model = sg.ScoreModel(net, sde, "eps").to(torch.float32)
    tr = train_mod.Trainer(model, sde, target, batch_size=8, lr=5e-3, seed=3, ema_decay=0.9, log_every=0)
    tr.train(steps)
    return tr, sde, target


def test_train_config_weights_and_printed_summary(ckpt):
    d, out = ckpt
    cfg = json.loads((d / "sdesolve_gen_cli.json").read_text())
    assert cfg == dict(data="two_moons", sde="ve", parameterisation="eps", batch_size=8, lr=5e-3, seed=3,
                       ema_decay=0.9)
    st = train_mod.load_checkpoint(d)
    assert st["step"] == 6
    tr, _, _ = _ref_trainer(6)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(st["model"][k], v), k
    assert st["history"].tolist() == tr.history
    for k, v in tr.ema.state_dict().items():  # --ema-decay reaches the trainer's EMA
        assert torch.equal(st["ema"][k], v), k
    assert st["ema_decay"] == 0.9
    n_par = sum(p.numel() for p in tr.model.parameters())
    m = re.search(r"trained two_moons \(ve SDE, eps-parameterised, (\d+) parameters\) to step 6 in [\d.]+ s; "
                  r"mean loss of the last (\d+) steps ([-\d.]+)", out)
    assert m, out
    assert int(m.group(1)) == n_par and int(m.group(2)) == 6
    assert float(m.group(3)) == pytest.approx(sum(tr.history) / 6, abs=PRINT_TOL)
    assert f"checkpoint: {d / 'checkpoint.pt'}" in out
    assert (d / "loss.png").is_file()
    # log records: log_every = max(1, min(100, steps // 20)) = 1
    recs = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in recs] == pytest.approx(tr.history, rel=1e-12)


def test_train_resume_prints_step_and_refuses_changed_settings(ckpt, tmp_path, capsys):
    d, _ = ckpt
    import shutil

    e = tmp_path / "copy"
    shutil.copytree(d, e)
    rc, out, err = run_cli(["train", "--ckpt", str(e), *TRAIN[:2], "--steps", "8", *TRAIN[4:], "--resume"], capsys)
    assert rc == 0, err
    assert f"resumed {e} at step 6" in out
    st = train_mod.load_checkpoint(e)
    tr, _, _ = _ref_trainer(8)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(st["model"][k], v), k
    m = re.search(r"mean loss of the last (\d+) steps ([-\d.]+)", out)
    assert int(m.group(1)) == 2 and float(m.group(2)) == pytest.approx(sum(tr.history[6:]) / 2, abs=PRINT_TOL)
    rc, out, err = run_cli(["train", "--ckpt", str(e), *TRAIN[:2], "--steps", "9", "--batch-size", "8", "--lr", "5e-3",
                            "--ema-decay", "0.9", "--sde", "ve", "--seed", "4", "--resume"], capsys)
    assert rc == 2 and "argument --seed" in err and err.count("\n") == 1
    rc, out, err = run_cli(["train", "--ckpt", str(e), *TRAIN], capsys)
    assert rc == 2 and "--resume" in err
    rc, out, err = run_cli(["train", "--ckpt", str(e), *TRAIN[:2], "--steps", "5", *TRAIN[4:], "--resume"], capsys)
    assert rc == 2 and "already at step 8" in err


def _model(d, weights):
    st = train_mod.load_checkpoint(d)
    sde = sg.VESDE()
    with train_mod.seeded(0):
        model = sg.ScoreModel(sg.MLPScoreNet(2, hidden=128, depth=3, t_max=sde.T), sde, "eps").to(torch.float32)
    model.load_state_dict(st["model"])
    if weights == "ema":
        ema = train_mod.EMA(model)
        ema.load_state_dict(st["ema"])
        ema.copy_to(model)
    return sde, model.eval()


def _two_moons_neg_entropy(std, h=0.025):
    """(E_p[log p], sd_p[log p]) of two_moons(std=std) by a Riemann sum on a grid (spectrally accurate for
    these smooth, fast-decaying densities: h = 0.03 and 0.02 agree to 1e-11). The mixture is written out
    here from data.two_moons' documented construction: 24 equal isotropic Gaussians, centres 1.5 * (two
    half circles of 12 points, (cos a, sin a) and (1 - cos a, 0.5 - sin a), shifted by (-0.5, -0.25))."""
    a = np.linspace(0, math.pi, 12)
    c = 1.5 * (np.concatenate([np.stack([np.cos(a), np.sin(a)], 1), np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1)])
               - [0.5, 0.25])
    X, Y = np.meshgrid(np.arange(-3.5, 3.5, h), np.arange(-2.5, 2.5, h), indexing="ij")
    p = np.exp(-((X[..., None] - c[:, 0]) ** 2 + (Y[..., None] - c[:, 1]) ** 2) / (2 * std**2)).mean(-1) / (2 * math.pi * std**2)
    lp = np.log(np.maximum(p, 1e-300))
    e = float((p * lp).sum()) * h * h
    return e, math.sqrt(float((p * lp**2).sum()) * h * h - e * e)


@pytest.mark.parametrize("weights,sampler", [("raw", "euler_maruyama"), ("ema", "ode"), ("raw", "dpm_solver2")])
def test_sample_pt_matches_direct_sampler(ckpt, tmp_path, capsys, weights, sampler):
    d, _ = ckpt
    out = tmp_path / "s.pt"
    rc, so, err = run_cli(["sample", str(d), "--sampler", sampler, "-n", "6", "--steps", "5", "--seed", "2",
                           "--weights", weights, "--out", str(out)], capsys)
    assert rc == 0, err
    got = torch.load(out, weights_only=True)
    sde, model = _model(d, weights)
    g = torch.Generator().manual_seed(2)
    x_T = sde.prior_sample((6, 2), generator=g, dtype=torch.float32)
    spec = SAMPLERS[sampler]
    with torch.no_grad():
        kw = dict(rtol=1e-5, atol=1e-5) if sampler == "ode" else {}
        sol = spec(sde, model, x_T, spec.timesteps(sde, 5), generator=g, **kw)
    torch.testing.assert_close(got["samples"], sol.x, rtol=1e-5, atol=1e-5)
    assert got["nfe"] == sol.nfe and got["method"] == sol.method and got["checkpoint_step"] == 6
    assert f"{sol.method}: 6 samples from two_moons (checkpoint step 6, {weights} weights), NFE {sol.nfe}," in so
    lp = sg.data.two_moons().log_prob(sol.x.double())
    m = re.search(r"mean exact log p_data\(samples\) ([-\d.]+) \+- ([\d.]+) vs E_data\[log p_data\] ([-\d.]+)", so)
    assert m, so
    assert float(m.group(1)) == pytest.approx(float(lp.mean()), abs=PRINT_TOL)
    assert float(m.group(2)) == pytest.approx(float(lp.std()) / math.sqrt(6), abs=PRINT_TOL)
    # E_data[log p_data] is a Monte-Carlo mean over 100_000 data draws (seeded by --seed): its oracle is
    # -H(two_moons) by quadrature, budget 5 sd of that mean + the 4-decimal print rounding
    neg_h, sd = _two_moons_neg_entropy(0.12)
    budget = 5 * sd / math.sqrt(100_000) + 5e-5
    assert abs(float(m.group(3)) - neg_h) < budget
    assert abs(float(m.group(3)) - _two_moons_neg_entropy(0.15)[0]) > budget  # control: a wider-moons target
    assert f"wrote {out}" in so


def test_sample_ema_and_raw_differ(ckpt, tmp_path, capsys):
    d, _ = ckpt
    outs = []
    for w in ("ema", "raw"):
        o = tmp_path / f"{w}.pt"
        rc, _, err = run_cli(["sample", str(d), "-n", "3", "--steps", "3", "--weights", w, "--out", str(o)], capsys)
        assert rc == 0, err
        outs.append(torch.load(o, weights_only=True)["samples"])
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("div", ["exact", "hutchinson"])
def test_likelihood_printed_numbers(ckpt, capsys, div):
    d, _ = ckpt
    argv = ["likelihood", str(d), "-n", "3", "--rtol", "1e-3", "--atol", "1e-3", "--seed", "5", "--weights", "raw",
            "--divergence", div]
    if div == "hutchinson":
        argv += ["--probes", "2"]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, err
    sde, model = _model(d, "raw")
    model = model.double()
    g = torch.Generator().manual_seed(5)
    target = sg.data.two_moons()
    x = target.sample(3, generator=g, dtype=torch.float64)
    res = sg.log_likelihood(sde, model, x, rtol=1e-3, atol=1e-3, divergence=div, n_probes=2 if div != "exact" else 1,
                            generator=g)
    lp = res.log_prob
    assert f"{div} divergence" in out and "raw weights, checkpoint step 6) of 3 fresh samples of two_moons" in out
    assert ("2 probes" in out) == (div == "hutchinson")
    assert "rtol=0.001 atol=0.001" in out
    m = re.search(r"mean log p = ([-\d.]+) nats  \(stderr over data ([\d.]+), over probes ([\d.]+)\)", out)
    assert float(m.group(1)) == pytest.approx(float(lp.mean()), abs=PRINT_TOL)
    assert float(m.group(2)) == pytest.approx(float(lp.std()) / math.sqrt(3), abs=PRINT_TOL)
    if div == "exact":
        assert float(m.group(3)) == 0.0
    else:
        assert float(m.group(3)) == pytest.approx(float(res.stderr.pow(2).mean().sqrt()) / math.sqrt(3), abs=PRINT_TOL)
    bpd = -lp / (2 * math.log(2))
    m = re.search(r"bits/dim   = ([-\d.]+)  \(continuous, -log p / \(D ln 2\), D = 2; stderr ([\d.]+)\)", out)
    assert float(m.group(1)) == pytest.approx(float(bpd.mean()), abs=PRINT_TOL)
    assert float(m.group(2)) == pytest.approx(float(bpd.std()) / math.sqrt(3), abs=PRINT_TOL)
    ex = target.log_prob(x)
    m = re.search(r"exact mean log p_data of the same points = ([-\d.]+) nats \(model - exact = ([-+\d.]+)\)", out)
    assert float(m.group(1)) == pytest.approx(float(ex.mean()), abs=PRINT_TOL)
    assert float(m.group(2)) == pytest.approx(float((lp - ex).mean()), abs=PRINT_TOL)
    assert f"NFE {res.nfe}," in out


def test_sample_seeds_manifest_and_evaluate(ckpt, tmp_path, capsys):
    d, _ = ckpt
    o = tmp_path / "gen"
    rc, out, err = run_cli(["sample", str(d), "--seeds", "0-4", "--batch", "2", "--steps", "3", "--weights", "raw",
                            "--out", str(o)], capsys)
    assert rc == 0, err
    assert re.search(r"wrote 3 batches to .* \(rank 0 of 1: 3 generated, 0 already on disk, [\d.]+ samples/s\)", out)
    man = json.loads((o / "manifest.json").read_text())
    import hashlib

    info = man["model"]
    assert info["checkpoint_sha256"] == hashlib.sha256((d / "checkpoint.pt").read_bytes()).hexdigest()
    assert info["step"] == 6 and info["weights"] == "raw" and info["class"] is None and info["cfg_scale"] == 0.0
    assert info["config"]["sde"] == "ve"
    assert man["batch_size"] == 2 and len(man["grid"]) == 4
    # samples equal the direct per-seed replay of the raw weights
    x, seeds = sg.generate.load_samples(o)
    sde, model = _model(d, "raw")
    st = sg.seeds.SeedStreams([3])
    xT = sde.prior_sample((1, 2), generator=st, dtype=torch.float32)
    spec = SAMPLERS["euler_maruyama"]
    with torch.no_grad():
        ref = spec(sde, model, xT, spec.timesteps(sde, 3), generator=st).x
    torch.testing.assert_close(x[3:4], ref, rtol=1e-5, atol=1e-5)
    rc, out2, err = run_cli(["sample", str(d), "--seeds", "0-4", "--batch", "2", "--steps", "3", "--weights", "raw",
                             "--out", str(o)], capsys)
    assert rc == 0 and "0 generated, 3 already on disk" in out2
    rc, ev, err = run_cli(["evaluate", str(o)], capsys)
    assert rc == 0, err
    lp = sg.data.two_moons().log_prob(x.double())
    assert f"{o}: 5 samples (euler_maruyama, 3 steps, two_moons)" in ev
    m = re.search(r"mean exact log p_data\(samples\) ([-\d.]+) \+- ([\d.]+)", ev)
    assert float(m.group(1)) == pytest.approx(float(lp.mean()), abs=PRINT_TOL)
    assert float(m.group(2)) == pytest.approx(float(lp.std()) / math.sqrt(5), abs=PRINT_TOL)
    sg.generate.batch_path(o, 2).unlink()
    rc, ev, err = run_cli(["evaluate", str(o)], capsys)
    assert rc == 1 and "4 samples" in ev and "1 batches MISSING" in ev


def test_user_errors_are_one_line_exit_2(ckpt, tmp_path, capsys):
    d, _ = ckpt
    cases = [
        ["sample", str(d), "--cfg", "1.0", "--out", str(tmp_path / "a.pt")],
        ["sample", str(d), "--class", "1", "--out", str(tmp_path / "a.pt")],
        ["sample", str(d), "--out", str(tmp_path / "a.txt")],
        ["sample", str(d), "--batch", "3", "--out", str(tmp_path / "a.pt")],
        ["sample", str(d), "--seeds", "0-2", "-n", "3", "--out", str(tmp_path / "g")],
        ["sample", str(d), "--seeds", "3-1", "--out", str(tmp_path / "g")],
        ["likelihood", str(d), "--probes", "2"],
        ["train", "--ckpt", str(tmp_path / "t"), "--label-dropout", "0.2"],
        ["train", "--ckpt", str(tmp_path / "t"), "--conditional"],
        ["train", "--ckpt", str(tmp_path / "t"), "--ema-decay", "1.0"],
        ["train", "--ckpt", str(tmp_path / "t"), "--data", "nope"],
        ["sample", str(tmp_path / "missing")],
        ["demo", "--out", str(tmp_path / "x.jpg")],
        ["train", "--ckpt", str(tmp_path / "t"), "--steps", "0"],
    ]
    for argv in cases:
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2, (argv, rc, err)
        assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err, (argv, err)

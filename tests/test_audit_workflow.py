"""Value tests for the ``sdesolve-gen`` workflow: every CLI flag reaches the library with its value.

Bug class guarded: wiring. A flag is parsed but not passed on, passed to the wrong place, or a
path uses another default than its twin path. Each test runs the CLI in-process
(:func:`tests._cli_run.run_cli`) with NON-default values and checks what the library received or
produced, against an oracle built here by hand from the public API (the checkpoint's own
tensors, seeded generators, the documented guidance formula). Where the library call itself is
not under test, a spy records the arguments and raises :class:`_Stop`, so the check costs no
sampling or ODE work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import types
from typing import Any, Dict

import pytest
import torch
from _cli_run import run_cli

import sdesolve_gen as sg
from sdesolve_gen import cli

pytest.importorskip("sdesolve_gen.train")

from sdesolve_gen import train as train_mod  # noqa: E402
from sdesolve_gen.data import TOY_DATASETS, load_digits  # noqa: E402
from sdesolve_gen.samplers import SAMPLERS  # noqa: E402
from sdesolve_gen.samplers import registry as sampler_registry  # noqa: E402

NULL, K = 10, 10  # the CLI's null label and number of digit classes (documented in `train --help`)
HOLDOUT = 297  # the CLI holds out the last 297 digits (documented in `train --help`)


class _Stop(Exception):
    """Raised by a spy once it has recorded its arguments (not caught by the CLI)."""


def _record_trainer(mp: pytest.MonkeyPatch) -> Dict[str, Any]:
    """Replace ``train.Trainer`` by a subclass recording its kwargs and the instance."""
    seen: Dict[str, Any] = {}

    class Recording(train_mod.Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen["args"], seen["kwargs"] = args, kwargs
            super().__init__(*args, **kwargs)
            seen["trainer"] = self

    mp.setattr(train_mod, "Trainer", Recording)
    return seen


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny two_moons run with every numeric train flag at a non-default value."""
    ck = str(tmp_path_factory.mktemp("wf") / "ck")
    threads = []
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_trainer(mp)
        mp.setattr(torch, "set_num_threads", lambda n: threads.append(n))
        rc = cli.main(["train", "--ckpt", ck, "--data", "two_moons", "--sde", "subvp", "--batch-size", "24",
                       "--lr", "5e-3", "--ema-decay", "0.9", "--seed", "3", "--steps", "12", "--every", "6",
                       "--progress", "--threads", "2"])
    assert rc == 0
    return dict(ck=ck, threads=threads, **seen)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A one-step class-conditional digits run with --label-dropout 0.3 and -v."""
    ck = str(tmp_path_factory.mktemp("wfd") / "ck")
    lib_logger = logging.getLogger("sdesolve_gen")
    handlers, level = list(lib_logger.handlers), lib_logger.level
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_trainer(mp)
        mp.setattr(torch, "set_num_threads", lambda n: None)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["train", "--ckpt", ck, "--data", "digits", "--conditional", "--label-dropout", "0.3",
                           "--batch-size", "4", "--steps", "2", "--every", "1", "-v"])
        new_handlers = [h for h in lib_logger.handlers if h not in handlers]
        verbose_level = lib_logger.level
        for h in new_handlers:
            lib_logger.removeHandler(h)
        lib_logger.setLevel(level)
    assert rc == 0
    return dict(ck=ck, stderr=err.getvalue(), new_handlers=new_handlers, verbose_level=verbose_level, **seen)


def _toy_model(ck: str, weights: str) -> sg.ScoreModel:
    """The checkpoint's model rebuilt by hand: SubVP SDE, MLPScoreNet(2, 128, 3), eps, float32."""
    sde = sg.SubVPSDE()
    model = sg.ScoreModel(sg.MLPScoreNet(2, hidden=128, depth=3, t_max=sde.T), sde, "eps").float()
    state = train_mod.load_checkpoint(ck)
    model.load_state_dict(state["model"])
    if weights == "ema":
        ema = train_mod.EMA(model)
        ema.load_state_dict(state["ema"])
        ema.copy_to(model)
    return model.eval()


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p.detach().to(q.dtype), q.detach()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------- train


def test_train_flags_reach_the_trainer_with_their_values(toy_run):
    """--data/--sde/--batch-size/--lr/--ema-decay/--seed/--steps/--every/--progress/--threads,
    each at a non-default value, arrive where they act: the optimiser's lr, the EMA's decay,
    the batch the loss sees, the SDE class, the dataset, the generators' seeds, the step count,
    the config file and the checkpoint. Oracle: the values typed on the command line."""
    kw, tr = toy_run["kwargs"], toy_run["trainer"]
    assert toy_run["threads"] == [2]
    assert isinstance(tr.sde, sg.SubVPSDE) and isinstance(toy_run["args"][1], sg.SubVPSDE)
    # the data object is the two_moons target: same draws as a fresh one under one seed
    data = toy_run["args"][2]
    ref = TOY_DATASETS["two_moons"]()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(data.sample(64, generator=g1, dtype=torch.float64), ref.sample(64, generator=g2, dtype=torch.float64))
    assert not torch.equal(data.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                           TOY_DATASETS["eight_gaussians"]().sample(64, generator=torch.Generator().manual_seed(0),
                                                                    dtype=torch.float64))
    assert kw["batch_size"] == 24 and tr.batch_size == 24
    assert kw["lr"] == 5e-3 and tr.optimizer.param_groups[0]["lr"] == 5e-3
    assert kw["ema_decay"] == 0.9 and tr.ema.decay == 0.9
    assert kw["seed"] == 3 and kw["checkpoint_every"] == 6 and kw["progress"] is True
    assert os.path.abspath(str(kw["checkpoint_dir"])) == os.path.abspath(toy_run["ck"])
    assert tr.step == 12 and len(tr.history) == 12
    state = train_mod.load_checkpoint(toy_run["ck"])
    assert int(state["step"]) == 12 and float(state["ema_decay"]) == 0.9
    with open(os.path.join(toy_run["ck"], "sdesolve_gen_cli.json")) as f:
        cfg = json.load(f)
    assert cfg == dict(data="two_moons", sde="subvp", parameterisation="eps", batch_size=24, lr=5e-3, seed=3,
                       ema_decay=0.9)


def test_train_batch_size_reaches_the_loss_and_seed_the_generators(toy_run, monkeypatch):
    """The trainer built by the CLI draws batches of --batch-size rows from its data generator
    seeded --seed (+ rank 0), and its DSM noise from 10000 + seed (the documented streams).
    Oracle: a Trainer built here with the same model/data and seed=3 draws the same first batch;
    control: seed 4 draws another."""
    kw = toy_run["kwargs"]
    model = _toy_model(toy_run["ck"], "raw")
    data = TOY_DATASETS["two_moons"]()

    def first_batch(seed: int) -> torch.Tensor:
        tr = train_mod.Trainer(model, sg.SubVPSDE(), data, batch_size=kw["batch_size"], seed=seed, log_every=0)
        return tr._batch()[0]

    # a fresh CLI-equivalent trainer: replay the CLI's construction kwargs on the same objects
    cli_like = train_mod.Trainer(model, sg.SubVPSDE(), data, **{k: v for k, v in kw.items()
                                                               if k not in ("checkpoint_dir", "checkpoint_every")})
    x = cli_like._batch()[0]
    assert x.shape == (24, 2)
    assert torch.equal(x, first_batch(3))
    assert not torch.equal(x, first_batch(4))


def test_train_conditional_flags_reach_the_trainer(digits_run):
    """--conditional --label-dropout 0.3 reach the Trainer as label_dropout=0.3 with the null
    label 10, on labelled digits of which the last 297 are held out; -v attaches an INFO handler
    that prints the step records. Oracle: the typed values and load_digits itself."""
    kw, tr = digits_run["kwargs"], digits_run["trainer"]
    assert kw["label_dropout"] == 0.3 and tr.label_dropout == 0.3
    assert kw["null_label"] == NULL and tr.null_label == NULL
    x, y = load_digits(data_range=(-1.0, 1.0), return_labels=True)
    data = digits_run["args"][2]
    assert isinstance(data, tuple) and torch.equal(data[0], x[:-HOLDOUT]) and torch.equal(data[1], y[:-HOLDOUT])
    assert tr.model.net.num_classes == K
    assert tr.batch_size == 4 and tr.step == 2
    assert len(digits_run["new_handlers"]) == 1 and digits_run["verbose_level"] == logging.INFO
    assert re.search(r"^step 1: .*loss ", digits_run["stderr"], re.M) and re.search(r"^step 2: .*loss ", digits_run["stderr"], re.M)
    with open(os.path.join(digits_run["ck"], "sdesolve_gen_cli.json")) as f:
        cfg = json.load(f)
    assert cfg["conditional"] is True and cfg["label_dropout"] == 0.3


# ------------------------------------------------------------------------------------ sample


@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_sample_equals_the_library_run_by_hand(toy_run, tmp_path, capsys, weights):
    """``sample --sampler reverse_diffusion --steps 7 --seed 11 -n 6 --weights W`` writes exactly
    the samples of the documented library path built here: the checkpoint's W weights, x_T from
    ``sde.prior_sample`` with a generator seeded 11, the sampler's default 7-step grid, the same
    generator. Oracle: bit-equality; control: the other weights give other samples."""
    pt = str(tmp_path / "s.pt")
    rc, _, err = run_cli(["sample", toy_run["ck"], "--sampler", "reverse_diffusion", "--steps", "7", "--seed", "11",
                          "-n", "6", "--weights", weights, "--out", pt], capsys)
    assert rc == 0, err
    saved = torch.load(pt, weights_only=True)

    def by_hand(w: str) -> torch.Tensor:
        sde = sg.SubVPSDE()
        model = _toy_model(toy_run["ck"], w)
        g = torch.Generator().manual_seed(11)
        x_T = sde.prior_sample((6, 2), generator=g, dtype=torch.float32)
        spec = SAMPLERS["reverse_diffusion"]
        return spec(sde, model, x_T, spec.timesteps(sde, 7), generator=g).x

    assert saved["method"] == "reverse_diffusion" and saved["nfe"] == 7 and saved["checkpoint_step"] == 12
    assert torch.equal(saved["samples"], by_hand(weights))
    assert not torch.equal(saved["samples"], by_hand("ema" if weights == "raw" else "raw"))


def test_sample_progress_and_ode_tolerances_match_between_the_two_sample_paths(toy_run, tmp_path, capsys, monkeypatch):
    """--progress reaches a fixed-grid sampler as progress=True (and False without it); the ODE
    sampler gets the same rtol/atol on the single-file path and on the sharded --seeds path (one
    default, two paths). Oracle: the sampler spec's recorded keyword arguments."""
    calls = []
    real = sampler_registry.SamplerSpec.__call__

    def spy(self, sde, score_fn, x_T, ts, **kwargs):
        calls.append((self.name, dict(kwargs)))
        if self.name == "ode":
            raise _Stop  # the tolerances are recorded; the adaptive solve itself is not under test
        return real(self, sde, score_fn, x_T, ts, **kwargs)

    monkeypatch.setattr(sampler_registry.SamplerSpec, "__call__", spy)
    for extra in (["--progress"], []):
        rc, _, err = run_cli(["sample", toy_run["ck"], "-n", "2", "--steps", "2", "--out", str(tmp_path / "a.pt"),
                              *extra], capsys)
        assert rc == 0, err
    assert [c[1].get("progress") for c in calls] == [True, False]
    calls.clear()
    with pytest.raises(_Stop):
        cli.main(["sample", toy_run["ck"], "-n", "2", "--sampler", "ode", "--out", str(tmp_path / "b.pt")])
    with pytest.raises(_Stop):
        cli.main(["sample", toy_run["ck"], "--seeds", "0-1", "--sampler", "ode", "--out", str(tmp_path / "d")])
    assert len(calls) == 2
    tol = [(c[1].get("rtol"), c[1].get("atol")) for c in calls]
    assert tol[0] == tol[1] and tol[0][0] is not None and tol[0][1] is not None


def test_sample_seeds_flags_reach_generate(toy_run, tmp_path, capsys, monkeypatch):
    """``sample --seeds 3-9 --batch 5 --steps 4 --png --sampler dpm_solver2 --weights raw`` calls
    ``generate`` with those values (batch_size=5, steps=4, png=True, the seed range, the
    checkpoint's shape) and the raw weights, and records the weights in the manifest's model info.
    Oracle: the typed values and the checkpoint's raw tensors."""
    import sdesolve_gen.generate as gen

    seen = {}
    real = gen.generate

    def spy(sde, score_fn, sampler, seeds, out_dir, **kwargs):
        seen.update(sde=sde, score_fn=score_fn, sampler=sampler, seeds=seeds, out_dir=out_dir, **kwargs)
        return real(sde, score_fn, sampler, seeds, out_dir, **kwargs)

    monkeypatch.setattr(gen, "generate", spy)
    out = str(tmp_path / "d")
    rc, _, err = run_cli(["sample", toy_run["ck"], "--seeds", "3-9", "--batch", "5", "--steps", "4", "--png",
                          "--sampler", "dpm_solver2", "--weights", "raw", "--out", out], capsys)
    assert rc == 0, err
    assert seen["sampler"] == "dpm_solver2" and seen["seeds"] == "3-9" and seen["batch_size"] == 5 and seen["steps"] == 4
    assert seen["png"] is True and tuple(seen["shape"]) == (2,) and isinstance(seen["sde"], sg.SubVPSDE)
    assert _same_params(seen["score_fn"], _toy_model(toy_run["ck"], "raw"))
    assert not _same_params(seen["score_fn"], _toy_model(toy_run["ck"], "ema"))
    assert seen["model_info"]["weights"] == "raw"
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert len(pngs) == 2  # 7 seeds in batches of 5


def test_sample_seeds_batch_default_differs_from_an_explicit_batch(toy_run, tmp_path, capsys, monkeypatch):
    """Without --batch the sharded path uses its documented default 256 (control for the test
    above: an ignored --batch would also give 256)."""
    import sdesolve_gen.generate as gen

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(gen, "generate", spy)
    with pytest.raises(_Stop):
        cli.main(["sample", toy_run["ck"], "--seeds", "0-3", "--out", str(tmp_path / "d")])
    assert seen["batch_size"] == 256 and seen["png"] is False and seen["steps"] == 500


def test_sample_class_and_cfg_follow_the_guidance_formula(digits_run, tmp_path, capsys):
    """``sample --class 4 --cfg 1.5`` on a conditional checkpoint samples with the guided score
    s = (1 + w) s(x | 4) - w s(x | null) written here from the two network calls; control: the
    sign-flipped guidance (1 - w) s(x|4) + w s(x|null) gives other samples."""
    pt = str(tmp_path / "c.pt")
    rc, _, err = run_cli(["sample", digits_run["ck"], "-n", "3", "--steps", "3", "--seed", "2", "--class", "4",
                          "--cfg", "1.5", "--weights", "raw", "--sampler", "dpm_solver1", "--out", pt], capsys)
    assert rc == 0, err
    x = torch.load(pt, weights_only=True)["samples"]
    sde = sg.VPSDE()
    model = sg.ScoreModel(sg.UNet(in_channels=1, base=32, t_max=sde.T, num_classes=K), sde, "eps").float()
    model.load_state_dict(train_mod.load_checkpoint(digits_run["ck"])["model"])
    model.eval()

    def run(w_cond: float, w_null: float) -> torch.Tensor:
        def score(xx, t):
            B = xx.shape[0]
            c = model(xx, t, y=torch.full((B,), 4, dtype=torch.long))
            u = model(xx, t, y=torch.full((B,), NULL, dtype=torch.long))
            return w_cond * c + w_null * u

        g = torch.Generator().manual_seed(2)
        x_T = sde.prior_sample((3, 1, 8, 8), generator=g, dtype=torch.float32)
        spec = SAMPLERS["dpm_solver1"]
        return spec(sde, score, x_T, spec.timesteps(sde, 3), generator=g).x

    good, bad = run(2.5, -1.5), run(-0.5, 1.5)
    tol = 1e-4  # float32 rounding of a doubled vs two single batches through 3 steps (|x| ~ 1)
    assert float((x - good).abs().max()) <= tol
    assert float((x - bad).abs().max()) > tol


# -------------------------------------------------------------------------------- likelihood


def test_likelihood_flags_reach_log_likelihood(toy_run, capsys, monkeypatch):
    """``likelihood -n 3 --seed 9 --divergence hutchinson --probes 2 --rtol 2e-2 --atol 3e-3
    --weights raw --progress``: log_likelihood receives 3 fresh two_moons draws from a generator
    seeded 9, those tolerances, the divergence, progress=True and the raw float64 weights.
    Oracle: the dataset sampled here with the same seed; the checkpoint's raw tensors."""
    import sdesolve_gen.likelihood as lik

    seen = {}

    def spy(sde, model, x, **kwargs):
        seen.update(sde=sde, model=model, x=x, **kwargs)
        raise _Stop

    monkeypatch.setattr(lik, "log_likelihood", spy)
    with pytest.raises(_Stop):
        cli.main(["likelihood", toy_run["ck"], "-n", "3", "--seed", "9", "--divergence", "hutchinson", "--probes", "2",
                  "--rtol", "2e-2", "--atol", "3e-3", "--weights", "raw", "--progress"])
    g = torch.Generator().manual_seed(9)
    x_ref = TOY_DATASETS["two_moons"]().sample(3, generator=g, dtype=torch.float64)
    assert torch.equal(seen["x"], x_ref)
    assert torch.equal(seen["generator"].get_state(), g.get_state())  # the same stream, continued
    assert (seen["divergence"], seen["n_probes"], seen["rtol"], seen["atol"], seen["progress"]) == \
        ("hutchinson", 2, 2e-2, 3e-3, True)
    assert isinstance(seen["sde"], sg.SubVPSDE)
    assert next(seen["model"].parameters()).dtype == torch.float64
    assert _same_params(_toy_model(toy_run["ck"], "raw"), seen["model"])
    assert not _same_params(_toy_model(toy_run["ck"], "ema"), seen["model"])


def test_likelihood_on_digits_uses_the_held_out_split(digits_run, monkeypatch):
    """On a digits checkpoint ``likelihood -n 5`` scores the first 5 of the 297 held-out digits
    (never the training split) with EMA weights by default. Oracle: load_digits()[-297:][:5]."""
    import sdesolve_gen.likelihood as lik

    seen = {}

    def spy(sde, model, x, **kwargs):
        seen.update(model=model, x=x, **kwargs)
        raise _Stop

    monkeypatch.setattr(lik, "log_likelihood", spy)
    with pytest.raises(_Stop):
        cli.main(["likelihood", digits_run["ck"], "-n", "5"])
    x, _ = load_digits(data_range=(-1.0, 1.0), return_labels=True)
    assert torch.equal(seen["x"], x[-HOLDOUT:][:5].double())
    assert seen["divergence"] == "exact" and seen["progress"] is False
    state = train_mod.load_checkpoint(digits_run["ck"])
    ema_like = sg.ScoreModel(sg.UNet(in_channels=1, base=32, num_classes=K), sg.VPSDE(), "eps").float()
    ema_like.load_state_dict(state["model"])
    raw_like = sg.ScoreModel(sg.UNet(in_channels=1, base=32, num_classes=K), sg.VPSDE(), "eps").float()
    raw_like.load_state_dict(state["model"])
    ema = train_mod.EMA(ema_like)
    ema.load_state_dict(state["ema"])
    ema.copy_to(ema_like)
    assert _same_params(ema_like, seen["model"]) and not _same_params(raw_like, seen["model"])


# ---------------------------------------------------------------------------------- evaluate


def test_evaluate_flags_reach_evaluate(toy_run, tmp_path, capsys, monkeypatch):
    """``evaluate DIR --bpd CK --divergence hutchinson --rtol 2e-2 --atol 3e-3`` passes those
    likelihood settings, the checkpoint's SDE and the weights recorded in the manifest (raw) to
    ``evaluate``, and scores toy samples by the dataset's exact log-density. Oracle: the typed
    values, the checkpoint's raw tensors, TOY_DATASETS['two_moons'].log_prob."""
    import sdesolve_gen.generate as gen

    out = str(tmp_path / "d")
    rc, _, err = run_cli(["sample", toy_run["ck"], "--seeds", "0-3", "--steps", "2", "--weights", "raw", "--out", out],
                         capsys)
    assert rc == 0, err
    seen = {}

    def spy(out_dir, **kwargs):
        seen.update(out_dir=out_dir, **kwargs)
        raise _Stop

    monkeypatch.setattr(gen, "evaluate", spy)
    with pytest.raises(_Stop):
        cli.main(["evaluate", out, "--bpd", toy_run["ck"], "--divergence", "hutchinson", "--rtol", "2e-2",
                  "--atol", "3e-3"])
    assert seen["likelihood_kwargs"] == dict(rtol=2e-2, atol=3e-3, divergence="hutchinson")
    sde, model = seen["likelihood_model"]
    assert isinstance(sde, sg.SubVPSDE)
    assert _same_params(_toy_model(toy_run["ck"], "raw"), model)
    assert not _same_params(_toy_model(toy_run["ck"], "ema"), model)
    pts = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(seen["score"](pts), TOY_DATASETS["two_moons"]().log_prob(pts))
    seen.clear()
    with pytest.raises(_Stop):
        cli.main(["evaluate", out])
    assert seen.get("likelihood_model") is None and seen.get("likelihood_kwargs") is None


# -------------------------------------------------------------------------------------- demo


def test_demo_flags_reach_run_demo(tmp_path, monkeypatch):
    """``demo --seed 5 -n 7 --em-steps 3 --pc-steps 4 --dpm-steps 2 --n-likelihood 2 --progress
    -v --threads 2 --out P`` calls run_demo with exactly those values and a log callback (none
    without -v). Oracle: the typed values."""
    import sdesolve_gen.demo as demo

    seen = []
    threads = []

    def spy(out, **kwargs):
        seen.append((out, kwargs))
        raise _Stop

    monkeypatch.setattr(demo, "run_demo", spy)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.append(n))
    out = str(tmp_path / "d.png")
    with pytest.raises(_Stop):
        cli.main(["demo", "--seed", "5", "-n", "7", "--em-steps", "3", "--pc-steps", "4", "--dpm-steps", "2",
                  "--n-likelihood", "2", "--progress", "-v", "--threads", "2", "--out", out])
    with pytest.raises(_Stop):
        cli.main(["demo", "--out", out])
    (o1, k1), (o2, k2) = seen
    assert o1 == out and threads == [2, 1]
    assert {k: k1[k] for k in ("seed", "n", "em_steps", "pc_steps", "dpm_steps", "n_likelihood", "progress")} == \
        dict(seed=5, n=7, em_steps=3, pc_steps=4, dpm_steps=2, n_likelihood=2, progress=True)
    assert callable(k1["log"]) and k2["log"] is None and k2["progress"] is False
    assert {k: k2[k] for k in ("seed", "n", "em_steps", "pc_steps", "dpm_steps", "n_likelihood")} == \
        dict(seed=0, n=10_000, em_steps=500, pc_steps=250, dpm_steps=10, n_likelihood=8)


def test_cli_likelihood_prints_bits_per_dim_with_D_the_product_of_the_sample_shape(digits_run, capsys, monkeypatch):
    """On digits (sample shape (1, 8, 8), D = 64) the printed numbers follow the documented
    formulas from the per-sample log p and stderr that log_likelihood returns (stubbed here with
    known values): mean log p, stderr over data std/sqrt(n), over probes sqrt(mean se^2)/sqrt(n),
    bits/dim -mean/(64 ln 2) and its stderr. Control: D = 1 (shape[0]) would print 64x that."""
    import sdesolve_gen.likelihood as lik

    lp = torch.tensor([-150.0, -170.0, -161.0], dtype=torch.float64)
    se = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)

    def stub(sde, model, x, **kwargs):
        return types.SimpleNamespace(log_prob=lp, stderr=se, extra={"method": "dopri5"}, nfe=1, wall_time=0.0)

    monkeypatch.setattr(lik, "log_likelihood", stub)
    rc = cli.main(["likelihood", digits_run["ck"], "-n", "3", "--divergence", "hutchinson", "--probes", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    n, D = 3, 64
    mean = float(lp.mean())
    se_data = float(lp.std()) / math.sqrt(n)
    se_probe = math.sqrt(float((se ** 2).mean())) / math.sqrt(n)
    nums = lambda key: [float(v.strip("(),;")) for v in out.split(key)[1].split()[:1]]  # noqa: E731
    assert nums("mean log p = ")[0] == pytest.approx(mean, abs=1e-4)
    assert nums("stderr over data ")[0] == pytest.approx(se_data, abs=1e-4)
    assert nums("over probes ")[0] == pytest.approx(se_probe, abs=1e-4)
    bpd = nums("bits/dim   = ")[0]
    assert bpd == pytest.approx(-mean / (D * math.log(2.0)), abs=1e-4)
    assert abs(bpd - (-mean / math.log(2.0))) > 1.0  # the control: D = 1
    assert "D = 64" in out
    assert float(out.split("; stderr ")[1].split(")")[0]) == pytest.approx(se_data / (D * math.log(2.0)), abs=1e-4)

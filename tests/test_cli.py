"""The ``sdesolve-gen`` command line: demo end to end, --help everywhere, one-line errors, exit 2."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from _cli_run import run_cli

from sdesolve_gen import cli
from sdesolve_gen.demo import CURVE_SAMPLERS, FLOOR_NAME, run_demo, sliced_w2

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["-n", "400", "--em-steps", "40", "--pc-steps", "20", "--dpm-steps", "4", "--n-likelihood", "3"]
COMMANDS = ["demo", "train", "sample", "likelihood", "bench"]


run = run_cli


def test_demo_small_writes_png_and_prints_table(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["demo", "--out", "d.png", *SMALL], capsys)
    assert rc == 0, err
    assert (tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC
    for name in ("euler_maruyama", "predictor_corrector", "ode", "dpm_solver3", FLOOR_NAME):
        assert name in out
    assert "NFE" in out and "SW2" in out and "traj err" in out and "|log p_ODE - log p_exact|" in out
    assert "How to read" in out and "not 'better than exact'" in out
    # the floor row comes FIRST (what perfect sampling scores), then the samplers
    lines = out.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("sampler")))
    assert lines[table + 1].startswith(FLOOR_NAME)
    # NFE column is the samplers' real count: EM takes one evaluation per step, PC two, DPM-3 three
    rows = {line[:25].strip(): line[25:].split() for line in lines[table + 1: table + 6]}
    assert int(rows["euler_maruyama"][0]) == 40
    assert int(rows["predictor_corrector"][0]) == 40
    assert int(rows["dpm_solver3"][0]) == 12
    # trajectory error only for the deterministic samplers
    assert rows["euler_maruyama"][3] == "-" and rows["predictor_corrector"][3] == "-"
    assert float(rows["ode"][3]) < float(rows["dpm_solver3"][3])
    for name in CURVE_SAMPLERS:
        assert any(line.strip().startswith(name) for line in lines[table + 6:])


def test_demo_floor_is_scored_like_a_sampler_and_curves_converge():
    """The floor row is the same two-sample SW2 as the sampler rows, for exact samples: an exact
    sampler plugged in as a sampler row would score like it. Each error-vs-NFE curve falls from
    its smallest to its largest budget and costs what the registry says."""
    from sdesolve_gen.samplers import SAMPLERS

    res = run_demo(None, n=400, em_steps=20, pc_steps=10, dpm_steps=4, n_likelihood=2, n_floor=4, n_traj=200,
                   curve_nfes=(10, 40))
    floor = res.floor
    assert floor.sampler == FLOOR_NAME and floor.sw2_sd > 0 and floor.traj_err is None
    assert [r.sampler for r in res.samplers] == ["euler_maruyama", "predictor_corrector", "ode", "dpm_solver3"]
    assert [r.traj_err is None for r in res.samplers] == [True, True, False, False]
    for c in res.curves:
        assert len(c.nfe) == 2 and c.traj_err[1] < c.traj_err[0], c
        assert all(b <= cap for b, cap in zip(c.nfe, (10, 40)))
        assert c.nfe == [SAMPLERS[c.sampler].nfe(SAMPLERS[c.sampler].steps_for(b)) for b in (10, 40)]
    with pytest.raises(ValueError, match="curve_samplers"):
        run_demo(None, n=10, curve_samplers=("euler_maruyama",))


@pytest.mark.slow
def test_demo_default_entry_point_runs_in_a_temp_dir(tmp_path):
    """The console script with NO arguments beyond `demo` (what the README and CI run)."""
    exe = shutil.which("sdesolve-gen")
    if exe is None:
        pytest.skip("sdesolve-gen console script not installed")
    pytest.importorskip("matplotlib")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    # the default demo is run by CI (.ci/run) and by hand; here the same entry point with small sizes
    proc = subprocess.run([exe, "demo", *SMALL], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo.png").read_bytes()[:8] == PNG_MAGIC
    assert "dpm_solver3" in proc.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command, capsys):
    rc, out, _ = run(([command] if command else []) + ["--help"], capsys)
    assert rc == 0
    assert out.startswith("usage: sdesolve-gen" + (f" {command}" if command else ""))
    if command is None:
        for c in COMMANDS:
            assert c in out


@pytest.mark.parametrize(
    "argv, names",
    [
        (["demo", "-n", "0"], "-n/--n-samples"),
        (["demo", "-n", "-5"], "-n/--n-samples"),
        (["demo", "--em-steps", "zero"], "--em-steps"),
        (["demo", "--seed", "1.5"], "--seed"),
        (["demo", "--threads", "0"], "--threads"),
        (["demo", "--out", "/no/such/dir/x.png"], "--out"),
        (["demo", "--out", "demo.jpg"], "--out"),
        (["sample", "ckpt", "--sampler", "rk45"], "--sampler"),
        (["sample", "ckpt", "-n", "0"], "-n/--n-samples"),
        (["sample", "ckpt", "--steps", "-1"], "--steps"),
        (["sample", "/no/such/checkpoint"], "checkpoint"),
        (["likelihood", "/no/such/checkpoint"], "checkpoint"),
        (["likelihood", "ckpt", "--divergence", "trace"], "--divergence"),
        (["likelihood", "ckpt", "--rtol", "0"], "--rtol"),
        (["train"], "--ckpt"),
        (["train", "--ckpt", "c", "--steps", "0"], "--steps"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["frobnicate"], "COMMAND"),
        ([], "COMMAND"),
    ],
)
def test_bad_args_exit_2_with_one_line(argv, names, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sdesolve-gen") and "error:" in lines[0]
    assert names in lines[0]
    assert "Traceback" not in err


def test_checkpoint_dir_without_cli_config_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run(["sample", str(tmp_path)], capsys)
    assert rc == 2 and "sdesolve_gen_cli.json" in err and len(err.strip().splitlines()) == 1


def test_bench_without_checkout_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: None)
    rc, _, err = run(["bench", "--quick"], capsys)
    assert rc == 2 and "source checkout" in err and len(err.strip().splitlines()) == 1


def test_bench_forwards_arguments(capsys, monkeypatch, tmp_path):
    if cli._benchmarks_root() is None:
        pytest.skip("no benchmarks package next to sdesolve_gen")
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    rc, _, _ = run(["bench", "--quick", "--out", str(tmp_path), "--only", "sampling", "--repeats", "2"], capsys)
    assert rc == 0
    cmd, env = calls[0]
    assert cmd[:3] == [sys.executable, "-m", "benchmarks"]
    assert cmd[3:] == ["--quick", "--out", str(tmp_path), "--only", "sampling", "--repeats", "2"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == cli._benchmarks_root()


# ------------------------------------------------------------------------ the demo's error metric


def test_sliced_w2_is_exact_w2_in_one_dimension():
    """In 1-D every direction is +-1, so SW2 is the W2 distance between sorted samples: a shift by
    c gives exactly |c|, a permutation gives 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 1, generator=g, dtype=torch.float64)
    assert sliced_w2(x, x[torch.randperm(500, generator=g)], n_proj=4, generator=g) == pytest.approx(0.0, abs=1e-12)
    assert sliced_w2(x + 0.7, x, n_proj=4, generator=g) == pytest.approx(0.7, rel=1e-12)


def test_sliced_w2_matches_the_gaussian_closed_form():
    r"""Oracle: for X ~ N(mu, c^2 I) and Y ~ N(0, I) in 2-D, every projection is a 1-D Gaussian pair
    and W2^2(N(a, c^2), N(0, 1)) = a^2 + (c - 1)^2, so averaging over uniform directions
    SW2^2 = |mu|^2 / 2 + (c - 1)^2 (= 0.43 for mu = (0.6, 0), c = 1.5).

    Budget: quantile noise of N = 10000 vs M = 20000 samples ~ N^{-1/2} = 0.01 in SW2; direction
    quadrature with L = 128 random directions: sd(cos^2 theta) |mu|^2 / sqrt(L) = 0.011 in SW2^2,
    i.e. 0.0085 in SW2; combined sd ~ 0.013, tolerance 0.05 (~4 sd; seeds 0-2 measured deviations
    0.024, 0.024, 0.006). Negative control: the same check on
    X ~ N(mu, I) (wrong scale, true SW2 = 0.42) is rejected.
    """
    g = torch.Generator().manual_seed(0)
    mu, c = torch.tensor([0.6, 0.0], dtype=torch.float64), 1.5
    y = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    z = torch.randn(10_000, 2, generator=g, dtype=torch.float64)
    expected = float(torch.sqrt(mu.pow(2).sum() / 2 + (c - 1) ** 2))
    assert sliced_w2(mu + c * z, y, n_proj=128, generator=g) == pytest.approx(expected, abs=0.05)
    assert sliced_w2(mu + z, y, n_proj=128, generator=g) != pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(
    "x, y, kw, exc",
    [
        (torch.zeros(5, 2), torch.zeros(4, 2), {}, ValueError),
        (torch.zeros(5, 2), torch.zeros(5, 3), {}, ValueError),
        (torch.zeros(5), torch.zeros(5), {}, ValueError),
        (torch.zeros(5, 2), torch.zeros(5, 2), {"n_proj": 0}, ValueError),
        ([[0.0, 0.0]], torch.zeros(5, 2), {}, TypeError),
    ],
)
def test_sliced_w2_bad_input(x, y, kw, exc):
    with pytest.raises(exc):
        sliced_w2(x, y, **kw)


def test_readme_demo_line_matches_the_cli():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert "sdesolve-gen demo" in readme


# ------------------------------------------------------------- train -> sample -> likelihood


def test_train_resume_sample_likelihood_round_trip(tmp_path, capsys):
    """The checkpoint commands end to end on a tiny run (mechanics, not model quality): train
    writes an atomic checkpoint + config + loss curve; a second train without --resume refuses,
    --resume with other settings refuses, --resume continues to the new total; sample writes a
    tensor of the requested shape and a PNG; likelihood prints nats and bits/dim, and its
    bits/dim is -log p / (2 ln 2) of its own printed nats."""
    pytest.importorskip("sdesolve_gen.train")
    ck = str(tmp_path / "ck")
    base = ["train", "--ckpt", ck, "--batch-size", "32", "--every", "10"]
    rc, out, err = run(base + ["--steps", "20"], capsys)
    assert rc == 0, err
    assert "to step 20" in out
    for f in ("checkpoint.pt", "sdesolve_gen_cli.json", "log.jsonl"):
        assert (tmp_path / "ck" / f).is_file()
    rc, _, err = run(base + ["--steps", "30"], capsys)
    assert rc == 2 and "--resume" in err
    rc, _, err = run(base + ["--steps", "30", "--resume", "--lr", "0.01"], capsys)
    assert rc == 2 and "--lr" in err
    rc, out, err = run(base + ["--steps", "30", "--resume"], capsys)
    assert rc == 0 and "resumed" in out and "to step 30" in out, err

    pt = str(tmp_path / "s.pt")
    rc, out, err = run(["sample", ck, "-n", "16", "--steps", "10", "--out", pt, "--weights", "raw"], capsys)
    assert rc == 0, err
    saved = torch.load(pt, weights_only=True)
    assert saved["samples"].shape == (16, 2) and saved["nfe"] == 10 and saved["checkpoint_step"] == 30
    assert bool(torch.isfinite(saved["samples"]).all())
    rc, _, err = run(["sample", ck, "-n", "16", "--steps", "4", "--sampler", "dpm_solver2",
                      "--out", str(tmp_path / "s.png")], capsys)
    assert rc == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC

    rc, out, err = run(["likelihood", ck, "-n", "4", "--rtol", "1e-3", "--atol", "1e-3"], capsys)
    assert rc == 0, err
    nats = float(out.split("mean log p = ")[1].split()[0])
    bpd = float(out.split("bits/dim   = ")[1].split()[0])
    assert bpd == pytest.approx(-nats / (2 * 0.6931471805599453), abs=2e-4)


def test_sample_rejects_bad_out_and_missing_checkpoint_file(tmp_path, capsys):
    rc, _, err = run(["sample", str(tmp_path), "--out", "x.jpg"], capsys)
    assert rc == 2 and "--out" in err
    (tmp_path / "sdesolve_gen_cli.json").write_text('{"data": "eight_gaussians", "sde": "vp"}')
    pytest.importorskip("sdesolve_gen.train")
    rc, _, err = run(["sample", str(tmp_path), "--out", str(tmp_path / "x.pt")], capsys)
    assert rc == 2 and "checkpoint" in err and len(err.strip().splitlines()) == 1

"""Per-sample seeds (SeedStreams), sharded restartable generation and its evaluation."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _torchrun import run_two_ranks

import sdesolve_gen as sg
from sdesolve_gen import cli
from sdesolve_gen.generate import (
    MANIFEST,
    OutputDirError,
    batch_path,
    evaluate,
    format_seeds,
    generate,
    load_samples,
    parse_seeds,
    state_digest,
)
from sdesolve_gen.nets import MLPScoreNet
from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.seeds import SeedStreams

SEEDS = "0-40"
HERE = Path(__file__).parent


def tiny_model():
    """A fixed untrained MLP score model (same weights in every process)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = MLPScoreNet(2, hidden=32, depth=2)
    sde = sg.VPSDE()
    return sde, sg.ScoreModel(net, sde, "eps").eval()


# ---------------------------------------------------------------------------------- SeedStreams

#: samplers whose draws are the only coupling between samples (batch-wide step control and
#: predictor_corrector's batch-mean step size are coupled on purpose; see seeds' module doc)
PER_SAMPLE = ["euler_maruyama", "reverse_diffusion", "ancestral", "annealed_langevin", "dpm_solver_pp_2m_sde",
              "edm_sde", "sa_solver", "heun"]


def _run(spec, sde, model, seeds, ts):
    st = SeedStreams(seeds)
    x_T = sde.prior_sample((len(seeds), 2), generator=st)
    return spec(sde, model, x_T, ts, generator=st).x


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_sample_depends_on_its_seed_only(name):
    sde, model = tiny_model()
    spec = SAMPLERS[name]
    ts = spec.timesteps(sde, 8)
    seeds = list(range(100, 116))
    whole = _run(spec, sde, model, seeds, ts)
    pieces = torch.cat([_run(spec, sde, model, seeds[i:i + 7], ts) for i in range(0, 16, 7)])
    reversed_ = _run(spec, sde, model, seeds[::-1], ts).flip(0)
    assert torch.equal(whole, pieces) and torch.equal(whole, reversed_)
    assert not torch.equal(whole[0], whole[1])


def test_sdeint_per_sample_paths():
    sde, model = tiny_model()
    rs = sg.ReverseSDE(sde, model)
    ts = sg.timesteps(sde, 12)

    def run(seeds):
        st = SeedStreams(seeds)
        return sg.sdeint(rs, sde.prior_sample((len(seeds), 2), generator=st), ts, generator=st, save="final").x

    assert torch.equal(run(list(range(16))), torch.cat([run(list(range(7))), run(list(range(7, 16)))]))
    st = SeedStreams(range(4))
    with pytest.raises(ValueError, match="adaptive=False"):
        sg.sdeint(rs, torch.zeros(4, 2), ts, generator=st, adaptive=True)
    with pytest.raises(ValueError, match="batch size"):
        sg.sdeint(rs, torch.zeros(3, 2), ts, generator=st)


def test_seed_streams_errors_and_plain_generator_unchanged():
    sde, model = tiny_model()
    ts = sg.timesteps(sde, 5)
    with pytest.raises(ValueError, match="per-sample streams"):
        SAMPLERS["euler_maruyama"](sde, model, torch.zeros(3, 2), ts, generator=SeedStreams([1, 2]))
    with pytest.raises(TypeError, match="generator"):
        SAMPLERS["euler_maruyama"](sde, model, torch.zeros(3, 2), ts, generator=7)
    with pytest.raises(ValueError, match="seeds"):
        SeedStreams([])
    # method="generator": one stream = one manual_seed'ed generator drawn per sample
    st = SeedStreams([5, 9], method="generator")
    z = st.randn((2, 3))
    assert torch.equal(z[1], torch.randn(3, generator=torch.Generator().manual_seed(9)))
    # a plain generator draws exactly as before: one randn of the batch's shape per step
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    a = SAMPLERS["ancestral"](sde, model, x_T, ts, generator=g1).x
    x = x_T
    from sdesolve_gen.samplers._run import Run

    run = Run("ref", sde, model, x_T, ts, g2)
    assert torch.equal(run.noise(x), torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    assert a.shape == (4, 2)


# ---------------------------------------------------------------------------------- seeds parsing, bad input


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds(range(3)) == [0, 1, 2]
    assert format_seeds(parse_seeds("0-3,7,10-11")) == "0-3,7,10-11"
    for bad in ("0-9,5-12", "3,3", "5-3", [], "", "a-b", "-4", [1, -1]):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    with pytest.raises(TypeError, match="seeds"):
        parse_seeds(3)


def test_generate_refuses_bad_input_and_foreign_dirs(tmp_path):
    sde, model = tiny_model()
    kw = dict(batch_size=4, shape=(2,), steps=3, progress=False)
    for bad in ("0-9,5-12", "9-0"):
        with pytest.raises(ValueError, match="seeds") as err:
            generate(sde, model, "euler_maruyama", bad, tmp_path / "a", **kw)
        assert not isinstance(err.value, OutputDirError)
    generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", **kw)
    # another sampler / another model / another grid / other seeds: refused naming out_dir and the argument
    with pytest.raises(OutputDirError, match=r"out_dir.*sampler='ancestral'.*argument sampler"):
        generate(sde, model, "ancestral", "0-5", tmp_path / "a", **kw)
    with torch.random.fork_rng():  # not the global generator: its state depends on the tests run before
        torch.manual_seed(1)
        other = sg.ScoreModel(MLPScoreNet(2, hidden=32, depth=2), sde, "eps")
    assert state_digest(other) != state_digest(model)
    with pytest.raises(OutputDirError, match=r"out_dir.*argument model_info"):
        generate(sde, other, "euler_maruyama", "0-5", tmp_path / "a", **kw)
    with pytest.raises(OutputDirError, match=r"out_dir.*argument steps/ts"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", **{**kw, "steps": 4})
    with pytest.raises(OutputDirError, match=r"out_dir.*argument seeds"):
        generate(sde, model, "euler_maruyama", "0-6", tmp_path / "a", **kw)
    assert issubclass(OutputDirError, ValueError)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"out_dir.*no manifest.json"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "b", **kw)
    with pytest.raises(ValueError, match="batch_size"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "c", **{**kw, "batch_size": 0})
    with pytest.raises(OutputDirError, match=r"out_dir.*noise='generator'.*argument noise"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", **{**kw, "noise": "generator"})
    with pytest.raises(ValueError, match="noise"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "d", **{**kw, "noise": "mt"})


def test_old_manifest_without_noise_resumes_as_generator(tmp_path):
    """Directories written before the noise scheme was recorded used one torch.Generator per sample."""
    import json

    sde, model = tiny_model()
    kw = dict(batch_size=4, shape=(2,), steps=3, progress=False)
    generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", noise="generator", **kw)
    man = json.loads((tmp_path / "a" / MANIFEST).read_text())
    del man["noise"]
    (tmp_path / "a" / MANIFEST).write_text(json.dumps(man))
    batch_path(tmp_path / "a", 1).unlink()
    res = generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", noise="generator", **kw)
    assert res.skipped == [0] and res.written == [1]
    with pytest.raises(OutputDirError, match="argument noise"):
        generate(sde, model, "euler_maruyama", "0-5", tmp_path / "a", **kw)
    ref = generate(sde, model, "euler_maruyama", "0-5", tmp_path / "philox", **kw)
    assert ref.written == [0, 1]
    x_gen, _ = load_samples(tmp_path / "a")
    x_phi, _ = load_samples(tmp_path / "philox")
    assert not torch.equal(x_gen, x_phi)  # the two schemes draw different noise


# ---------------------------------------------------------------------------------- CLI: checkpoint, kill -9


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_ckpt")
    assert cli.main(["train", "--ckpt", str(d / "ck"), "--steps", "3"]) == 0
    return d / "ck"


def _cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    return subprocess.Popen([sys.executable, "-m", "sdesolve_gen.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_bad_input(ckpt, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert cli.main(["sample", str(ckpt), "--seeds", "0-9,9-12", "--out", out]) == 2
    assert "argument --seeds" in capsys.readouterr().err
    assert cli.main(["sample", str(ckpt), "--seeds", "0-5", "--steps", "3", "--batch", "4", "--out", out]) == 0
    assert cli.main(["sample", str(ckpt), "--seeds", "0-5", "--steps", "3", "--batch", "4", "--out", out,
                     "--sampler", "ancestral"]) == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and "sampler='euler_maruyama'" in err
    ev = cli.main(["evaluate", out])
    assert ev == 0 and "6 samples" in capsys.readouterr().out
    assert cli.main(["evaluate", out, "--bpd", str(ckpt), "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    assert "bits/dim of the samples under the checkpoint's model" in capsys.readouterr().out
    other = tmp_path / "other_ckpt"
    shutil.copytree(ckpt, other)
    with open(other / "checkpoint.pt", "ab") as f:
        f.write(b"x")
    assert cli.main(["evaluate", out, "--bpd", str(other)]) == 2
    assert "argument --bpd" in capsys.readouterr().err


def test_kill_and_restart_loses_and_duplicates_nothing(ckpt, tmp_path):
    args = ["sample", str(ckpt), "--seeds", "0-39", "--batch", "4", "--steps", "60"]
    ref = tmp_path / "ref"
    assert cli.main([*args, "--out", str(ref)]) == 0  # uninterrupted, in this process
    out = tmp_path / "killed"
    proc = _cli(*args, "--out", str(out))
    deadline = time.monotonic() + 60
    while len(list(out.glob("batch-*.npz"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done_before = sorted(p.name for p in out.glob("batch-*.npz"))
    assert 2 <= len(done_before) < 10, done_before  # killed mid-run
    restart = _cli(*args, "--out", str(out))
    stdout, stderr = restart.communicate(timeout=120)
    assert restart.returncode == 0, stderr
    assert f"{10 - len(done_before)} generated, {len(done_before)} already on disk" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in ref.iterdir()) == sorted(
        ["manifest.json"] + [f"batch-{k:06d}.npz" for k in range(10)])
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    _, seeds = load_samples(out)
    assert seeds.tolist() == list(range(40))


def _children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux) to find the torchrun workers")
def test_kill_torchrun_launcher_kills_workers_and_restart_completes(ckpt, tmp_path, capsys):
    n_seeds, batch = 80, 4
    n_batches = n_seeds // batch
    args = ["sample", str(ckpt), "--seeds", f"0-{n_seeds - 1}", "--batch", str(batch), "--steps", "60"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                "sdesolve_gen.cli"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*torchrun, *args, "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    workers: list = []
    # find the two workers while they start (scanning /proc is slow under load: do it before the
    # batches appear, so the kill below follows the second batch within one poll)
    while len(list(out.glob("batch-*.npz"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        if len(workers) < 2:
            workers = [w for w in _children(proc.pid) if _alive(w)]
        else:
            time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher only
    _, stderr = proc.communicate()
    assert len(workers) == 2, (workers, stderr[-2000:])
    gone_by = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "torchrun workers outlived their killed launcher"
    # no wait for the zombies to be reaped: the restart below may see their pids still in use, and
    # must still end with no temporary file (the workers remove theirs before they stop)
    before = {p.name: p.stat().st_ino for p in out.glob("batch-*.npz")}
    assert 2 <= len(before) < n_batches, sorted(before)  # killed mid-run
    capsys.readouterr()
    # restart in this process (1 rank; the files do not depend on the number of ranks): no second
    # torchrun start-up, which costs most of this test's time
    assert cli.main([*args, "--out", str(out)]) == 0
    assert f"{n_batches - len(before)} generated, {len(before)} already on disk" in capsys.readouterr().out
    ref = tmp_path / "ref"
    assert cli.main([*args, "--out", str(ref)]) == 0  # uninterrupted, one process (== 2 ranks, byte for byte)
    names = sorted(p.name for p in out.iterdir())  # no stray temporary files, every batch once
    assert names == sorted(p.name for p in ref.iterdir()) == sorted(
        ["manifest.json"] + [f"batch-{k:06d}.npz" for k in range(n_batches)])
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    for name, ino in before.items():  # batches finished before the kill were not redone
        assert (out / name).stat().st_ino == ino, name
    _, seeds = load_samples(out)
    assert seeds.tolist() == list(range(n_seeds))


# ---------------------------------------------------------------------------------- torchrun: 1 vs 2 ranks, batch 7 vs 16


def EVAL_KW(sde, model):
    """What the 2-rank worker and the 1-process run evaluate: a score, labels, bits/dim."""
    return dict(score=lambda x: -x.pow(2).sum(1), label_fn=lambda x: (x[:, 0] > 0).long() + (x[:, 1] > 0).long(),
                n_labels=3, likelihood_model=(sde, copy.deepcopy(model).double()),
                likelihood_kwargs=dict(rtol=1e-4, atol=1e-4, divergence="exact"))


def eval_summary(ev):
    """Everything an EvalResult holds, as plain values and tensors (for torch.save)."""
    lk = ev.likelihood
    return {"n": ev.n, "missing": ev.missing, "mean": ev.mean, "stderr": ev.stderr, "histogram": ev.histogram,
            "seeds": ev.seeds, "scores": ev.scores, "labels": ev.labels, "log_prob": lk.log_prob,
            "bpd": lk.bits_per_dim, "mean_bpd": lk.mean_bpd, "data_stderr": lk.data_stderr, "nfe": lk.nfe}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_two_ranks_equal_one_rank_and_batch_size_free(tmp_path):
    r0, r1 = run_two_ranks("_generate_worker.py", tmp_path, timeout=240)
    assert r0["world"] == r1["world"] == 2 and r0["lik_world"] == 2
    assert r0["batches"] == [0, 2, 4] and r1["batches"] == [1, 3, 5]  # 41 seeds in batches of 7
    sde, model = tiny_model()
    one = generate(sde, model, "euler_maruyama", SEEDS, tmp_path / "one", batch_size=7, shape=(2,), steps=30,
                   progress=False)
    assert one.world_size == 1 and one.written == list(range(6))
    for k in range(6):  # the same files, byte for byte
        assert batch_path(tmp_path / "two", k).read_bytes() == batch_path(tmp_path / "one", k).read_bytes()
    generate(sde, model, "euler_maruyama", SEEDS, tmp_path / "b16", batch_size=16, shape=(2,), steps=30, progress=False)
    x7, s7 = load_samples(tmp_path / "two")
    x16, s16 = load_samples(tmp_path / "b16")
    assert torch.equal(s7, s16) and torch.equal(x7, x16)
    # evaluation: gathered over 2 ranks == one process, bit for bit (score, labels, bits/dim)
    ev = evaluate(tmp_path / "one", **EVAL_KW(sde, model))
    _same(r0["eval"], r1["eval"])
    _same(r0["eval"], eval_summary(ev))
    assert ev.n == 41 and ev.missing == 0 and torch.equal(ev.seeds, s7)
    direct = -x7.double().pow(2).sum(1)
    assert torch.equal(ev.scores, direct) and ev.mean == float(direct.mean())
    assert ev.stderr == pytest.approx(float(direct.std()) / 41 ** 0.5, rel=1e-12)
    assert ev.histogram == torch.bincount((x7[:, 0] > 0).long() + (x7[:, 1] > 0).long(), minlength=3).tolist()
    # bits/dim == dataset_log_likelihood of the loaded samples in the directory's batches
    lk = sg.dataset_log_likelihood(sde, copy.deepcopy(model).double(), x7.double(), batch_size=7, rtol=1e-4,
                                   atol=1e-4, divergence="exact")
    assert torch.equal(lk.log_prob, ev.likelihood.log_prob) and lk.mean_bpd == ev.likelihood.mean_bpd


def test_evaluate_counts_missing_batches(tmp_path):
    sde, model = tiny_model()
    generate(sde, model, "euler_maruyama", "0-9", tmp_path / "d", batch_size=4, shape=(2,), steps=3, progress=False)
    batch_path(tmp_path / "d", 1).unlink()
    ev = evaluate(tmp_path / "d", score=lambda x: x[:, 0], label_fn=lambda x: (x[:, 0] > 0).long(), n_labels=2)
    assert ev.missing == 1 and ev.n == 6 and sum(ev.histogram) == 6
    with pytest.raises(FileNotFoundError, match="batch 1"):
        load_samples(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="batch 1.*likelihood_model needs every batch"):
        evaluate(tmp_path / "d", likelihood_model=(sde, model))
    with pytest.raises(ValueError, match="likelihood_kwargs"):
        evaluate(tmp_path / "d", likelihood_model=(sde, model), likelihood_kwargs={"batch_size": 3})
    with pytest.raises(ValueError, match="likelihood_model"):
        evaluate(tmp_path / "d", likelihood_model=model)

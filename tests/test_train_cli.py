"""`sdesolve-gen train`: reproducible seeds, config validation, atomic config, no tracebacks."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from _cli_run import run_cli

from sdesolve_gen.train import load_checkpoint

TINY = ["--steps", "12", "--batch-size", "16", "--every", "6"]


run = run_cli


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def test_train_twice_with_the_same_seed_is_bit_identical(tmp_path, capsys):
    """Two `train --seed 0` runs write byte-identical checkpoint files (weights, EMA, optimiser,
    generator states); control: `--seed 1` differs in the initial weights already (so in the
    model tensors), and in the file."""
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths[name] = tmp_path / name
        rc, _, err = run(["train", "--ckpt", str(paths[name]), "--seed", str(seed), *TINY], capsys)
        assert rc == 0, err
    raw = {k: (p / "checkpoint.pt").read_bytes() for k, p in paths.items()}
    assert raw["a"] == raw["b"]
    assert raw["a"] != raw["c"]
    sa, sb, sc = (load_checkpoint(p) for p in paths.values())
    ta, tb = dict(_tensors(sa)), dict(_tensors(sb))
    assert ta.keys() == tb.keys() and len(ta) > 20
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].numpy().tobytes() == tb[k].numpy().tobytes(), k
    differ = [k for k, v in _tensors(sc["model"]) if not torch.equal(v, sa["model"][k.lstrip("/")])]
    assert len(differ) >= 5  # every Linear layer starts elsewhere


def test_unknown_config_values_are_one_line_errors(tmp_path, capsys):
    ck = tmp_path / "ck"
    rc, _, err = run(["train", "--ckpt", str(ck), *TINY], capsys)
    assert rc == 0, err
    cfg_path = ck / "sdesolve_gen_cli.json"
    good = json.loads(cfg_path.read_text())
    for change, needle in (({"sde": "vpp"}, "sde='vpp'"), ({"data": "moons"}, "data='moons'"),
                           ({"batch_size": "16"}, "batch_size='16'"), ({"colour": 1}, "unknown key 'colour'"),
                           ({"conditional": True}, "conditional=true needs data='digits'")):
        cfg_path.write_text(json.dumps({**good, **change}))
        for argv in (["sample", str(ck), "-n", "4", "--steps", "2", "--out", str(tmp_path / "s.pt")],
                     ["train", "--ckpt", str(ck), "--resume", *TINY[:1], "20", *TINY[2:]]):
            rc, _, err = run(argv, capsys)
            assert rc == 2, (change, err)
            assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    cfg_path.write_text(json.dumps({k: v for k, v in good.items() if k != "sde"}))
    rc, _, err = run(["sample", str(ck), "--out", str(tmp_path / "s.pt")], capsys)
    assert rc == 2 and "missing key 'sde'" in err
    rc, _, err = run(["train", "--ckpt", str(tmp_path / "x"), "--data", "moons", *TINY], capsys)
    assert rc == 2 and "--data" in err and not (tmp_path / "x").exists()
    rc, _, err = run(["train", "--ckpt", str(tmp_path / "x"), "--ema-decay", "1.5", *TINY], capsys)
    assert rc == 2 and "--ema-decay" in err and not (tmp_path / "x").exists()


def test_config_rewrite_on_resume_is_atomic(tmp_path, capsys, monkeypatch):
    """The write of the config fails half-way (ENOSPC after 10 bytes): exit 1 with one line naming
    the config file; the old config is intact and no temporary file is left."""
    ck = tmp_path / "ck"
    rc, _, err = run(["train", "--ckpt", str(ck), *TINY], capsys)
    assert rc == 0, err
    cfg_path = ck / "sdesolve_gen_cli.json"
    before = cfg_path.read_bytes()
    real = os.write
    left = {"n": 10}

    def write(fd, data):
        if left["n"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data)[: left["n"]])
        left["n"] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    rc, _, err = run(["train", "--ckpt", str(ck), "--resume", "--steps", "20", "--batch-size", "16"], capsys)
    monkeypatch.undo()
    assert rc == 1 and str(cfg_path) in err and "no space left" in err and len(err.strip().splitlines()) == 1, err
    assert cfg_path.read_bytes() == before
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith(".")) == []
    rc, out, err = run(["train", "--ckpt", str(ck), "--resume", "--steps", "20", "--batch-size", "16", "--every", "6"], capsys)
    assert rc == 0 and "to step 20" in out, err  # control


def test_unwritable_checkpoint_directory_is_one_line_exit_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run(["train", "--ckpt", str(blocker / "ck"), *TINY], capsys)
    assert rc == 1 and str(blocker / "ck") in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "--ckpt", "{tmp}/ck", "--steps", "4", "--batch-size", "8"], ["--help"]])
def test_closed_pipe_gives_no_traceback(tmp_path, argv):
    """stdout is a pipe whose reader has gone (like `| head -0`): no BrokenPipeError traceback;
    exit code 1 for a command (argparse's --help swallows write errors itself and exits 0).
    Control: with the pipe read, the same command succeeds and prints."""
    cmd = [sys.executable, "-m", "sdesolve_gen.cli", *[a.replace("{tmp}", str(tmp_path)) for a in argv]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == (1 if argv[0] == "train" else 0)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    if argv[0] == "train":
        cmd[-5] = str(tmp_path / "ck2")
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout, ok.stderr

"""Checkpoint integrity and failure handling: digest on load, ENOSPC, stale temp files, pre-flight."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import checkpoints as C
from sdesolve_gen.train import Trainer, load_checkpoint


def _trainer(ckpt, **kw):
    sde = sg.VPSDE()
    with sg.train.seeded(0):
        model = sg.ScoreModel(sg.MLPScoreNet(2, hidden=8, depth=1, embed_dim=8), sde)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    return Trainer(model, sde, data, batch_size=8, checkpoint_dir=ckpt, log_every=0, **kw)


@pytest.fixture
def checkpoint(tmp_path):
    tr = _trainer(tmp_path / "run")
    tr.train(3)
    return tmp_path / "run" / "checkpoint.pt"


def test_header_layout_and_round_trip(checkpoint):
    raw = checkpoint.read_bytes()
    assert raw.startswith(C.MAGIC)
    line = raw[len(C.MAGIC):].split(b"\n", 1)[0]
    tag, digest, length = line.split(b" ")
    payload = raw[len(C.MAGIC) + len(line) + 1:]
    import hashlib

    assert tag == b"sha256" and digest == hashlib.sha256(payload).hexdigest().encode() and int(length) == len(payload)
    assert load_checkpoint(checkpoint)["step"] == 3


def test_every_single_byte_flip_is_refused(checkpoint, tmp_path):
    """30 seeded single-byte changes (position uniform over the file, XOR with 1..255): all refused
    with a ValueError naming the file. Control: the unchanged copy loads."""
    raw = checkpoint.read_bytes()
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(len(raw), (30,), generator=g).tolist()
    pos[:3] = [0, len(C.MAGIC) + 10, len(C.MAGIC) + 80]  # magic, digest, length field: header bytes included
    xor = torch.randint(1, 256, (30,), generator=g).tolist()
    bad = tmp_path / "flipped.pt"
    refused = 0
    for p, x in zip(pos, xor):
        data = bytearray(raw)
        data[p] ^= x
        bad.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="flipped.pt"):
            load_checkpoint(bad)
        refused += 1
    assert refused == 30
    bad.write_bytes(raw)
    assert load_checkpoint(bad)["step"] == 3


def test_truncated_extended_bare_and_foreign_files(checkpoint, tmp_path):
    raw = checkpoint.read_bytes()
    for name, data in (("cut.pt", raw[:-1]), ("long.pt", raw + b"\0"), ("head.pt", raw[:40])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            load_checkpoint(tmp_path / name)
    torch.save({"a": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="no integrity header"):
        load_checkpoint(tmp_path / "bare.pt")
    C.atomic_save({"weights": torch.zeros(2)}, tmp_path / "other.pt")  # verified, but not a trainer checkpoint
    with pytest.raises(ValueError, match="not an sdesolve_gen trainer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _fail_writes_after(monkeypatch, n_ok: int, err: int = errno.ENOSPC):
    real = os.write
    state = {"left": n_ok}

    def write(fd, data):
        if state["left"] <= 0:
            raise OSError(err, os.strerror(err))
        n = real(fd, bytes(data)[: state["left"]])
        state["left"] -= n
        return n

    monkeypatch.setattr(os, "write", write)


def test_full_disk_gives_one_error_naming_the_path_and_no_temp_file(checkpoint, monkeypatch):
    """ENOSPC after 1000 bytes of the new checkpoint were written: OSError(ENOSPC) naming the
    file, the temporary file is gone, the previous checkpoint is byte-identical and still loads."""
    before = checkpoint.read_bytes()
    tr = _trainer(checkpoint.parent)
    assert tr.resume()
    tr.train_step()
    _fail_writes_after(monkeypatch, 1000)
    with pytest.raises(OSError) as info:
        tr.save()
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(checkpoint) in str(info.value) and "no space left" in str(info.value)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["checkpoint.pt"]
    assert checkpoint.read_bytes() == before and load_checkpoint(checkpoint)["step"] == 3
    # control: the same save without the failure writes the new step
    tr.save()
    assert load_checkpoint(checkpoint)["step"] == 4


def test_stale_temp_files_of_dead_processes_are_removed_at_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".checkpoint.pt.tmp-{dead.pid}"
    live = run / f".checkpoint.pt.tmp-{os.getppid()}"  # a process that exists: kept
    unrelated = run / "notes.tmp-123"
    for p in (stale, live, unrelated):
        p.write_bytes(b"partial")
    tr = _trainer(run)
    tr.train(1)
    assert not stale.exists() and live.exists() and unrelated.exists()


def test_preflight_refuses_unwritable_or_full_directory_before_any_step(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tr = _trainer(blocker / "run")  # a directory below a regular file cannot be created
    with pytest.raises(OSError, match="not writable") as info:
        tr.train(5)
    assert str(blocker / "run") in str(info.value) and tr.step == 0

    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    tr = _trainer(tmp_path / "full")
    with pytest.raises(OSError, match="MiB free") as info:
        tr.train(5)
    assert info.value.errno == errno.ENOSPC and str(tmp_path / "full") in str(info.value) and tr.step == 0
    monkeypatch.undo()
    tr.train(5)  # control: with the real free space it trains
    assert tr.step == 5


def test_size_estimate_bounds_the_real_checkpoint(checkpoint):
    tr = _trainer(checkpoint.parent)
    tr.resume()
    size = checkpoint.stat().st_size
    assert size <= tr.checkpoint_size_estimate() <= size + 2**20

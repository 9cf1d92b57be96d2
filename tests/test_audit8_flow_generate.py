"""Audit 8 (flow): generate/evaluate, seed parsing, SeedStreams and Philox against hand replays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sdesolve_gen as sg
from sdesolve_gen import generate as gen
from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.seeds import SeedStreams

M32 = 0xFFFFFFFF


def _philox_py(ctr, key, rounds=10):
    c = list(ctr)
    k0, k1 = key
    for _ in range(rounds):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


def _normals_py(words, f64):
    if f64:
        u1 = (((words[1] << 32) | words[0]) >> 11) + 0.5
        u2 = (((words[3] << 32) | words[2]) >> 11) + 0.5
        u1, u2 = u1 * 2.0**-53, u2 * 2.0**-53
        r = math.sqrt(-2 * math.log(u1))
        return [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    out = []
    for a, b in ((words[0], words[1]), (words[2], words[3])):
        u1, u2 = (a + 0.5) * 2.0**-32, (b + 0.5) * 2.0**-32
        r = math.sqrt(-2 * math.log(u1))
        out += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    return out


def test_philox_known_answer_random123():
    ctr = torch.tensor([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], dtype=torch.int64).view(4, 1)
    key = torch.tensor([0xA4093822, 0x299F31D0], dtype=torch.int64).view(2, 1)
    got = sg.philox.philox4x32(ctr, key).view(-1).tolist()
    assert got == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    assert got == _philox_py([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0))
    # 7 rounds: the python replay
    g7 = sg.philox.philox4x32(ctr, key, rounds=7).view(-1).tolist()
    assert g7 == _philox_py([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0), 7)
    rk = sg.philox.round_keys(torch.tensor([5, 7], dtype=torch.int64), 3)
    assert rk.tolist() == [[5, 7], [(5 + 0x9E3779B9) & M32, (7 + 0xBB67AE85) & M32],
                           [(5 + 2 * 0x9E3779B9) & M32, (7 + 2 * 0xBB67AE85) & M32]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_streams_philox_is_documented_function(dtype):
    seeds = [3, 2**33 + 17]
    n = 5  # odd: last block partly used
    st = SeedStreams(seeds)
    draws = [st.randn((2, n), dtype=dtype) for _ in range(4)]  # repeats exercise the look-ahead
    assert st.draws == 4
    per = 2 if dtype == torch.float64 else 4
    for t, z in enumerate(draws):
        assert z.dtype == dtype
        for i, s in enumerate(seeds):
            vals = []
            for j in range(-(-n // per)):
                vals += _normals_py(_philox_py([j, t, 0, 0], (s & M32, s >> 32)), dtype == torch.float64)
            ref = torch.tensor(vals[:n], dtype=torch.float64)
            tol = 1e-12 if dtype == torch.float64 else 2e-5
            torch.testing.assert_close(z[i].double(), ref, rtol=tol, atol=tol)


def test_seed_streams_generator_method_and_randn_helper():
    st = SeedStreams([4, 9], method="generator")
    z1 = st.randn((2, 3), dtype=torch.float64)
    z2 = st.randn((2, 3), dtype=torch.float64)
    for i, s in enumerate([4, 9]):
        g = torch.Generator().manual_seed(s)
        a = torch.randn(3, generator=g, dtype=torch.float64)
        b = torch.randn(3, generator=g, dtype=torch.float64)
        assert torch.equal(z1[i], a) and torch.equal(z2[i], b)
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sg.seeds.randn((2, 2), g), ref)
    st2 = SeedStreams([1, 2])
    assert torch.equal(sg.seeds.randn((2, 4), st2), SeedStreams([1, 2]).randn((2, 4)))


def test_parse_and_format_seeds():
    assert gen.parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert gen.parse_seeds(" 5 ") == [5]
    assert gen.parse_seeds(range(2, 5)) == [2, 3, 4]
    assert gen.format_seeds([0, 1, 2, 3, 7, 10, 11]) == "0-3,7,10-11"
    assert gen.format_seeds([5, 4, 3]) == "5,4,3"
    for bad in ("3-1", "1-2-3", "a", "0-3,2", ""):
        with pytest.raises(ValueError):
            gen.parse_seeds(bad)
    assert gen.batch_path("d", 12).name == "batch-000012.npz"




def test_generate_matches_direct_per_seed_run_and_options(tmp_path):
    sde = sg.VPSDE(beta_min=0.2, beta_max=10.0)
    g = sg.analytic.Gaussian(torch.tensor([0.5, -1.0, 0.2]), torch.diag(torch.tensor([0.5, 1.5, 0.8])))
    calls = []

    def score(x, t, shift=None):
        calls.append(shift)
        s = g.score(x, t, sde)
        return s + 0.0 * shift[:, None] if shift is not None else s

    spec = SAMPLERS["euler_maruyama"]
    ts = spec.timesteps(sde, 7)
    lines = []
    res = gen.generate(sde, score, "euler_maruyama", "10-13,20", tmp_path / "o", batch_size=2, shape=(3,), steps=7,
                       denoise=True, model_kwargs=lambda s: {"shift": s.double()}, model_info={"id": 1},
                       dtype=torch.float64, progress=lines.append)
    assert res.n_batches == 3 and res.batches == [0, 1, 2] and res.written == [0, 1, 2] and res.skipped == []
    assert res.n_samples == 5 and res.rank == 0 and res.world_size == 1
    assert res.samples_per_s == pytest.approx(5 / res.wall_time)
    assert len(lines) == 3 and "batch 2 (3/3 of rank 0's, 0 already on disk)" in lines[-1]
    x, seeds = gen.load_samples(tmp_path / "o")
    assert seeds.tolist() == [10, 11, 12, 13, 20]
    # per-seed direct replay, batch of one
    for i, s in enumerate([10, 11, 12, 13, 20]):
        st = SeedStreams([s])
        xT = sde.prior_sample((1, 3), generator=st, dtype=torch.float64)
        ref = spec(sde, g.score_fn(sde), xT, ts, generator=st, denoise=True).x
        torch.testing.assert_close(x[i:i + 1].double(), ref.double(), rtol=1e-10, atol=1e-10)
    # every call saw the batch's seeds as shift
    assert all(c is not None for c in calls)
    assert sorted({tuple(c.tolist()) for c in calls}) == [(10.0, 11.0), (12.0, 13.0), (20.0,)]
    man = json.loads((tmp_path / "o" / gen.MANIFEST).read_text())
    assert man["seeds"] == "10-13,20" and man["batch_size"] == 2 and man["denoise"] is True
    assert man["sampler"] == "euler_maruyama" and man["shape"] == [3] and man["noise"] == "philox"
    assert man["model"] == {"id": 1} and man["dtype"] == "torch.float64"
    assert man["grid"] == pytest.approx(ts.tolist())
    # rerun: all skipped, nothing generated
    res2 = gen.generate(sde, score, "euler_maruyama", "10-13,20", tmp_path / "o", batch_size=2, shape=(3,), steps=7,
                        denoise=True, model_kwargs=lambda s: {"shift": s.double()}, model_info={"id": 1},
                        dtype=torch.float64, progress=False)
    assert res2.skipped == [0, 1, 2] and res2.written == [] and res2.n_samples == 0 and res2.samples_per_s == 0.0
    # another batch size gives the same samples (other directory)
    gen.generate(sde, g.score_fn(sde), "euler_maruyama", "10-13,20", tmp_path / "p", batch_size=5, shape=(3,),
                 steps=7, denoise=True, dtype=torch.float64, progress=False)
    x2, _ = gen.load_samples(tmp_path / "p")
    torch.testing.assert_close(x2, x, rtol=1e-12, atol=1e-12)
    # a different sampler setting is refused in the same directory
    with pytest.raises(gen.OutputDirError):
        gen.generate(sde, score, "euler_maruyama", "10-13,20", tmp_path / "o", batch_size=2, shape=(3,), steps=7,
                     denoise=False, model_kwargs=lambda s: {"shift": s.double()}, model_info={"id": 1},
                     dtype=torch.float64, progress=False)


def test_generate_noise_generator_and_sampler_kwargs(tmp_path):
    sde = sg.VESDE(sigma_min=0.02, sigma_max=5.0)
    g = sg.analytic.Gaussian(torch.tensor([0.3, 0.1]), torch.eye(2) * 0.5)
    sc = g.score_fn(sde)
    spec = SAMPLERS["ode"]
    ts = spec.timesteps(sde, 4)
    gen.generate(sde, sc, "ode", [7, 3], tmp_path / "a", batch_size=2, shape=(2,), steps=4, dtype=torch.float64,
                 sampler_kwargs={"rtol": 1e-3, "atol": 1e-3}, noise="generator", progress=False)
    x, _ = gen.load_samples(tmp_path / "a")
    st = SeedStreams([7, 3], method="generator")
    xT = sde.prior_sample((2, 2), generator=st, dtype=torch.float64)
    ref = spec(sde, sc, xT, ts, generator=st, rtol=1e-3, atol=1e-3).x
    torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-10)
    tight = spec(sde, sc, xT, ts, generator=st, rtol=1e-9, atol=1e-9).x
    assert (x - tight).abs().max() > 1e-9  # the tolerance was passed on (negative control)


def test_evaluate_fields_by_hand(tmp_path):
    sde = sg.VPSDE()
    g = sg.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    gen.generate(sde, g.score_fn(sde), "euler_maruyama", "0-6", tmp_path / "e", batch_size=3, shape=(2,), steps=3,
                 dtype=torch.float64, progress=False)
    x, seeds = gen.load_samples(tmp_path / "e")
    score = lambda v: torch.where(v[:, 0] > 0.5, torch.tensor(float("inf")), v.sum(1))  # noqa: E731
    labels = lambda v: (v[:, 0] > 0).long() * 2  # noqa: E731
    res = gen.evaluate(tmp_path / "e", score=score, label_fn=labels, n_labels=3)
    sv = score(x.double())
    fin = torch.isfinite(sv)
    assert res.n == 7 and res.missing == 0
    assert res.n_nonfinite == int((~fin).sum())
    assert 0 < res.n_nonfinite < res.n  # precondition: both the finite and the non-finite paths are exercised
    assert res.mean == pytest.approx(float(sv[fin].mean()), rel=1e-12)
    assert res.stderr == pytest.approx(float(sv[fin].std()) / math.sqrt(int(fin.sum())), rel=1e-12)
    lab = labels(x)
    assert res.histogram == [int((lab == 0).sum()), 0, int((lab == 2).sum())]
    assert res.seeds.tolist() == list(range(7))
    # a missing batch is counted
    gen.batch_path(tmp_path / "e", 1).unlink()
    r2 = gen.evaluate(tmp_path / "e", score=lambda v: v.sum(1))
    assert r2.missing == 1 and r2.n == 4 and r2.histogram is None
    assert r2.seeds.tolist() == [0, 1, 2, 6]


def test_state_digest_changes_with_weights():
    m = torch.nn.Linear(2, 2)
    d1 = gen.state_digest(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert gen.state_digest(m) != d1 and len(d1) == 64


def test_npz_files_are_plain_arrays(tmp_path):
    sde = sg.VPSDE()
    g = sg.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    gen.generate(sde, g.score_fn(sde), "euler_maruyama", "5", tmp_path / "f", batch_size=4, shape=(2,), steps=2,
                 progress=False)
    with np.load(gen.batch_path(tmp_path / "f", 0), allow_pickle=False) as z:
        assert z["seeds"].tolist() == [5] and z["samples"].dtype == np.float32 and z["samples"].shape == (1, 2)

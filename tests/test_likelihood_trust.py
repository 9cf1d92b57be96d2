"""Per-sample error control, per-sample error estimates, conditioning, the exact-trace engine,
Hutchinson's stderr coverage, the data-set level bits/dim (sharded under torchrun) and progress.

Also a torchrun worker: ``python -m torch.distributed.run --nproc_per_node=2 --standalone
tests/test_likelihood_trust.py OUT`` (see ``test_dataset_sharded_by_rank_matches_one_process``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import sdesolve_gen as sg
from benchmarks.problems import ill_conditioned
from sdesolve_gen.analytic import Gaussian
from sdesolve_gen.divergence import DivergenceEngine, score_divergence
from sdesolve_gen.likelihood import LikelihoodBound, LikelihoodResult, dataset_log_likelihood

TOL = 1e-6
SDES = {"vp": sg.VPSDE, "ve": sg.VESDE, "subvp": sg.SubVPSDE}


@pytest.fixture(scope="module")
def hard():
    data = ill_conditioned(6)
    x = data.sample(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return data, x


# ------------------------------------------------------------------ per-sample error control


@pytest.mark.parametrize("name", sorted(SDES))
def test_per_sample_error_within_10x_tol_and_estimate_finds_the_bad_points(hard, name):
    """Budget 10 x TOL per sample (the issue's goal, stated before measuring; measured 4-8 x TOL).
    Negative control: torchdiffeq's batch-shared norm with dopri5 (the behaviour before per-sample
    control) under the same check (measured 250-640 x).
    The error estimate |l(tol) - l(tol/10)| must track the true error per sample: if the error
    scales ~linearly with the tolerance it is within ~10 % of it; asserted |err_i| <= 2 est_i +
    TOL (the TOL absorbs samples whose error crosses zero), and the worst sample by estimate
    is the worst by true error."""
    data, x = hard
    sde = SDES[name]()
    exact = data.log_prob_t(x, sde.eps, sde)
    kw = dict(rtol=TOL, atol=TOL, prior=data.prior(sde), divergence="exact")
    res = sg.log_likelihood(sde, data.score_fn(sde), x, error_estimate=True, **kw)
    assert isinstance(res, LikelihoodResult) and isinstance(res, sg.Solution)
    err = (res.log_prob - exact).abs()
    assert float(err.max()) <= 10 * TOL, float(err.max())
    assert bool((err <= 2 * res.error_estimate + TOL).all()), float((err - 2 * res.error_estimate).max())
    assert int(err.argmax()) == int(res.error_estimate.argmax())
    assert res.x.shape == x.shape and res.n_steps > 0 and res.nfe >= res.n_steps
    bad = sg.log_likelihood(sde, data.score_fn(sde), x, error_control="batch", method="dopri5", **kw)
    assert float((bad.log_prob - exact).abs().max()) > 10 * 10 * TOL


def test_bad_error_control_is_named():
    with pytest.raises(ValueError, match="error_control"):
        sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), error_control="rms")


# ------------------------------------------------------------------ named results


def test_bound_is_named_and_does_not_unpack():
    sde = sg.VPSDE()
    g = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    x0 = g.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sg.log_likelihood_bound(sde, g.score_fn(sde), x0, generator=torch.Generator().manual_seed(1), rtol=1e-4, atol=1e-4)
    assert isinstance(out, LikelihoodBound) and out.bound.shape == (3,)
    torch.testing.assert_close(out.bound, out.result.log_prob + out.log_decoder - out.log_q)
    with pytest.raises(TypeError):
        res, bound = out  # noqa: F841 - the tuple unpacking this result must refuse


# ------------------------------------------------------------------ conditioning


def _conditional(sde):
    """Class-conditional isotropic-free Gaussians: class c has mean mu_c and covariance C_c."""
    mus = torch.tensor([[1.0, -1.0], [-2.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
    covs = torch.tensor([[[1.0, 0.6], [0.6, 0.5]], [[0.2, 0.0], [0.0, 1.5]], [[0.7, -0.3], [-0.3, 0.4]]], dtype=torch.float64)
    comps = [Gaussian(mus[c], covs[c]) for c in range(3)]
    calls = []

    def score(x, t, *, label, scale=1.0):
        calls.append(label.shape[0])
        assert label.shape[0] == x.shape[0]
        out = torch.stack([comps[int(c)].score_fn(sde)(x[i : i + 1], t)[0] for i, c in enumerate(label)])
        return out * scale

    return comps, score, calls


def test_model_kwargs_reach_every_call_sliced_per_chunk():
    sde = sg.VPSDE()
    comps, score, calls = _conditional(sde)
    label = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    x = torch.cat([comps[int(c)].sample(1, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, c in enumerate(label)])
    # reference: each class's points solved with that class's own (unconditional) score
    ref = torch.zeros(7, dtype=torch.float64)
    for c in range(3):
        m = label == c
        ref[m] = sg.log_likelihood(sde, comps[c].score_fn(sde), x[m], rtol=1e-6, atol=1e-6).log_prob
    res = sg.log_likelihood(sde, score, x, rtol=1e-6, atol=1e-6, chunk_size=3, model_kwargs={"label": label, "scale": 1.0},
                            divergence="exact")
    # both solves control each sample's error to ~10 x 1e-6 (see the test above): budget 1e-4
    assert float((res.log_prob - ref).abs().max()) < 1e-4
    assert set(calls) == {3, 1}  # chunks of 3, 3, 1: the label tensor was sliced with the samples
    # negative control: the same check fails with the labels permuted
    calls.clear()
    wrong = sg.log_likelihood(sde, score, x, rtol=1e-6, atol=1e-6, chunk_size=3, model_kwargs={"label": label.roll(1)})
    assert float((wrong.log_prob - ref).abs().max()) > 1e-1
    # encode / decode and the bound pass them too
    z = sg.encode(sde, score, x, model_kwargs={"label": label})
    torch.testing.assert_close(z, res.z, rtol=0, atol=1e-4)
    back = sg.decode(sde, score, z, model_kwargs={"label": label})
    torch.testing.assert_close(back, x, rtol=0, atol=1e-4)
    b = sg.log_likelihood_bound(sde, score, x, model_kwargs={"label": label}, generator=torch.Generator().manual_seed(0))
    assert b.bound.shape == (7,)


def test_model_kwargs_bad():
    with pytest.raises(TypeError, match="model_kwargs"):
        sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(2, 2), model_kwargs=[1])


# ------------------------------------------------------------------ the exact-trace engine


def _mlp(D: int, seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.Tanh(), torch.nn.Linear(32, D)).double()
    return lambda x: net(x)


def test_engine_func_path_equals_autograd_and_full_jacobian():
    """Reference: the trace of the full Jacobian from torch.autograd.functional.jacobian, per sample."""
    D, B = 7, 5
    f = _mlp(D)
    x = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.stack([torch.trace(torch.autograd.functional.jacobian(f, x[i])) for i in range(B)])
    eng = DivergenceEngine(chunk=3)
    _, d1 = eng(f, x)  # first call: autograd (and the graph check)
    _, d2 = eng(f, x)  # then torch.func
    assert eng.use_func is True
    torch.testing.assert_close(d1[:, 0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d2[:, 0], ref, rtol=1e-12, atol=1e-12)
    probes = torch.randn(4, B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, h1 = score_divergence(f, x, probes)
    _, h2 = eng(f, x, probes)
    torch.testing.assert_close(h1, h2, rtol=1e-12, atol=1e-12)


def test_autograd_score_keeps_its_jacobian_through_the_engine():
    """A score computed by autograd inside (create_graph=True) on an anisotropic Gaussian: the
    divergence must be -tr(C^-1) exactly (closed form); torch.func cannot trace it, so the engine
    falls back to autograd. Negative control: create_graph=False is refused (graph cut)."""
    C = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.2], [0.0, 0.2, 0.3]], dtype=torch.float64)
    P = torch.linalg.inv(C)

    def score(x, create_graph=True):
        with torch.enable_grad():
            xg = x if x.requires_grad else x.requires_grad_(True)
            lp = -0.5 * torch.einsum("bi,ij,bj->b", xg, P, xg).sum()
            return torch.autograd.grad(lp, xg, create_graph=create_graph)[0]

    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eng = DivergenceEngine()
    for _ in range(3):
        _, d = eng(score, x)
        torch.testing.assert_close(d[:, 0], torch.full((4,), -float(torch.trace(P)), dtype=torch.float64))
    with pytest.raises(ValueError, match="graph"):
        DivergenceEngine()(lambda x: score(x, create_graph=False), x)


# ------------------------------------------------------------------ Hutchinson coverage


def _t975(df: int) -> float:
    """Student-t 97.5 % quantile (scipy, an independent implementation)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@pytest.mark.parametrize("D,K", [(4, 8), (4, 32), (12, 8), (12, 32)])
def test_hutchinson_stderr_covers_per_sample(D, K):
    """Per sample i, |mean_k l_ik - l_i(exact)| <= t_{K-1,0.975} * stderr_i should hold with
    probability ~0.95 (per-probe estimates are i.i.d. given the trajectory, so the t-interval
    is exact for Gaussian ones and close for sums of many Rademacher terms). N = 150 samples:
    binomial sd = sqrt(.95 * .05 / 150) = 0.018; asserted coverage in [0.95 - 3 sd, 1] = [0.897, 1].
    Negative control: the same check on stderr / 2 (coverage ~0.68 for Gaussian-like estimates)
    must fail. Target non-isotropic (condition number 100), so the probe variance is non-zero."""
    data = ill_conditioned(D, seed=D)
    sde = sg.VPSDE()
    x = data.sample(150, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(rtol=1e-5, atol=1e-5, prior=data.prior(sde))
    exact = sg.log_likelihood(sde, data.score_fn(sde), x, divergence="exact", **kw).log_prob
    h = sg.log_likelihood(sde, data.score_fn(sde), x, divergence="hutchinson", n_probes=K,
                          generator=torch.Generator().manual_seed(3), **kw)
    assert bool((h.stderr > 0).all())
    q = _t975(K - 1)
    dev = (h.log_prob - exact).abs()
    cover = float((dev <= q * h.stderr).double().mean())
    lo = 0.95 - 3 * math.sqrt(0.95 * 0.05 / 150)
    assert cover >= lo, cover
    assert float((dev <= q * h.stderr / 2).double().mean()) < lo


def test_rademacher_is_the_default_probe():
    import inspect

    assert inspect.signature(sg.log_likelihood).parameters["probe"].default == "rademacher"


# ------------------------------------------------------------------ data-set level


def _toy():
    data = ill_conditioned(3, k=2, seed=5)
    x = data.sample(10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return data, x


_DS_KW = dict(batch_size=3, seed=11, divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4, error_estimate=True)


def test_dataset_tensor_and_loader_agree_and_errors_are_split():
    data, x = _toy()
    sde = sg.VPSDE()
    res = dataset_log_likelihood(sde, data.score_fn(sde), x, **_DS_KW)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    kw = {k: v for k, v in _DS_KW.items() if k != "batch_size"}
    res2 = dataset_log_likelihood(sde, data.score_fn(sde), loader, **kw)
    assert torch.equal(res.log_prob, res2.log_prob) and res.log_prob.shape == (10,)
    D, ln2 = 3, math.log(2.0)
    # by hand from the per-sample values (definitions in the docstring)
    bpd = -res.log_prob / (D * ln2)
    assert math.isclose(res.mean_bpd, float(bpd.mean()), rel_tol=1e-12)
    assert math.isclose(res.data_stderr, float(bpd.std()) / math.sqrt(10), rel_tol=1e-12)
    assert math.isclose(res.probe_stderr, float(res.stderr.pow(2).sum().sqrt()) / 10 / (D * ln2), rel_tol=1e-12)
    assert res.solver_error is not None and res.solver_error < 1e-3
    # batch k used probes from seed + k: batch 1 equals a direct call with that generator
    direct = sg.log_likelihood(sde, data.score_fn(sde), x[3:6], generator=torch.Generator().manual_seed(12),
                               divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4)
    assert torch.equal(direct.log_prob, res.log_prob[3:6])


def test_dataset_progress_bar_counts_batches_and_shows_the_running_bits_per_dim(monkeypatch):
    """``progress=True``: a bar over the batches (total ceil(10 / 3) = 4, one update per batch)
    whose last postfix is the data set's mean bits/dim (computed by hand from the per-sample
    log-densities); the results are the same as without the bar. Oracle: a recording tqdm."""
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, total=None, desc="", **_):
            self.desc, self.total, self.n, self.postfix = desc, total, 0, None
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def set_postfix(self, refresh=True, **kw):
            self.postfix = kw

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    data, x = _toy()
    sde = sg.VPSDE()
    kw = {k: v for k, v in _DS_KW.items() if k != "error_estimate"}
    res = dataset_log_likelihood(sde, data.score_fn(sde), x, progress=True, **kw)
    plain = dataset_log_likelihood(sde, data.score_fn(sde), x, **kw)
    assert torch.equal(res.log_prob, plain.log_prob)
    top = [b for b in bars if b.desc.startswith("dataset_log_likelihood")]
    assert len(top) == 1 and top[0].total == 4 and top[0].n == 4
    by_hand = float((-res.log_prob / (3 * math.log(2.0))).mean())
    assert top[0].postfix == {"bpd": f"{by_hand:.4f}"}
    assert len(bars) > 1  # and each batch's solve has its own per-step bar


def test_dataset_sharded_by_rank_matches_one_process(tmp_path):
    from _torchrun import run_two_ranks

    data, x = _toy()
    sde = sg.VPSDE()
    one = dataset_log_likelihood(sde, data.score_fn(sde), x, distributed=False, **_DS_KW)
    r0, r1 = run_two_ranks(Path(__file__).name, tmp_path)
    for r in (r0, r1):
        assert r["world_size"] == 2
        assert torch.equal(r["log_prob"], one.log_prob), (r["log_prob"] - one.log_prob).abs().max()
        assert torch.equal(r["stderr"], one.stderr)
        assert r["mean_bpd"] == one.mean_bpd
    assert r0["my_batches"] == [0, 2] and r1["my_batches"] == [1, 3]


def _worker(out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    data, x = _toy()
    sde = sg.VPSDE()
    seen = []

    def score(xx, t):
        return data.score_fn(sde)(xx, t)

    import sdesolve_gen.likelihood as L

    orig = L.log_likelihood

    def spy(*a, generator=None, **k):
        seen.append(int(generator.initial_seed()) - _DS_KW["seed"])
        return orig(*a, generator=generator, **k)

    L.log_likelihood = spy
    res = dataset_log_likelihood(sde, score, x, **_DS_KW)
    L.log_likelihood = orig
    torch.save({"log_prob": res.log_prob, "stderr": res.stderr, "mean_bpd": res.mean_bpd, "world_size": res.world_size,
                "my_batches": sorted(set(seen))}, Path(out) / f"rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------ progress


def test_progress_per_solver_step(monkeypatch):
    """The bar advances once per accepted solver step (recorded through a stand-in tqdm)."""
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, *a, desc="", **k):
            self.desc, self.n = desc, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    res = sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(3, 2, dtype=torch.float64), progress=True, rtol=1e-4, atol=1e-4)
    assert [b.desc for b in bars] == ["odeint[dopri8]"] and bars[0].n == res.n_steps > 1
    bars.clear()
    sg.log_likelihood(sg.VPSDE(), lambda x, t: -x, torch.zeros(3, 2, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    assert bars == []  # off by default


def test_cli_likelihood_accepts_progress(capsys):
    from sdesolve_gen.cli import main

    rc = main(["likelihood", "/no/such/checkpoint", "--progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "checkpoint" in err and "--progress" not in err


if __name__ == "__main__":
    _worker(sys.argv[1])

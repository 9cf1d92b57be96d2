"""Smoke test of ``python -m benchmarks``: tiny runs of each section produce the markdown/JSON report
with the expected keys. No timing assertions (timings are measured, never checked)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import metrics
from benchmarks.__main__ import main
from benchmarks.peers import KDenoiser
from sdesolve_gen.sde import VPSDE


def test_sliced_w2_separates_shifted_samples():
    """SW2 of a sample to an independent sample of the same law is the MC floor (~ sqrt(2/N) scale);
    shifting by 1 unit along every axis adds ~ |shift . theta| = 1/sqrt(D)*sqrt(D) ~ O(1)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g)
    same = metrics.sliced_w2(x, y)
    shifted = metrics.sliced_w2(x, y + 1.0)
    assert same < 0.1  # MC floor: quantile error ~ 1/sqrt(N) = 0.016 per projection, ~3x for tails
    assert shifted > 0.5  # mean of |theta . (1,1,1)|^2 over the sphere is 1, so SW2 ~ 1
    with pytest.raises(ValueError, match="same shape"):
        metrics.sliced_w2(x, y[:10])


def test_k_denoiser_is_tweedie_on_vp():
    """D(x_ve, sigma_ve) must equal E[x0 | x_t] = (x_t + sigma_t^2 s)/alpha_t with x_t = alpha_t x_ve;
    check against the oracle's exact posterior mean for a single Gaussian (closed form)."""
    from sdesolve_gen.analytic import Gaussian

    sde = VPSDE()
    data = Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.diag(torch.tensor([0.5, 2.0], dtype=torch.float64)))
    den = KDenoiser(sde, data.score_fn(sde))
    t = torch.tensor(0.4, dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    sig_ve = torch.tensor([s / a], dtype=torch.float64)
    x_ve = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    # posterior mean of x0 given x0 + sig_ve*n = x_ve for N(m, c): m + c/(c + sig_ve^2) (x_ve - m)
    m, c = data.mean.reshape(-1), torch.tensor([0.5, 2.0], dtype=torch.float64)
    expected = m + c / (c + sig_ve**2) * (x_ve - m)
    torch.testing.assert_close(den(x_ve, sig_ve), expected, rtol=1e-6, atol=1e-6)
    assert den.nfe == 1
    # negative control: skipping the alpha mapping (treating x_ve as x_t) gives a different answer
    wrong = (x_ve + s**2 * data.score_fn(sde)(x_ve, t)) / a
    assert (wrong - expected).abs().max() > 1e-2


def test_quick_command_writes_report(tmp_path, monkeypatch):
    """Every non-plot section end to end (sampling at tiny sizes); the report has the keys."""
    import benchmarks.sampling as samp

    monkeypatch.setattr(samp, "QUICK", {"dims": [2], "nfes": [10], "n": 200, "calib_n": 50,
                                        "calibrate": {10: (("unipc_bh2_2", 10),)}})
    out = tmp_path / "res"
    assert main(["--quick", "--out", str(out), "--only", "sampling", "likelihood", "em_overhead", "pf_ode_nfe"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"mode", "command", "date", "sections", "goals", "skipped", "repeats"}
    assert res["mode"] == "quick"
    for name in ("sampling", "likelihood", "em_overhead", "pf_ode_nfe"):
        assert name in res["sections"], res["skipped"]
        assert res["sections"][name]["rows"]
    rows = res["sections"]["sampling"]["rows"]
    assert set(rows[1]) >= {"problem", "method", "nfe", "err", "sw2", "time"}
    assert all(math.isfinite(r["sw2"]) for r in rows if r["method"].startswith("ours"))
    det = [r for r in rows if r["kind"] in ("ours", "peer")]
    assert det and all(r["err"] is not None and math.isfinite(r["err"]) for r in det)
    assert {r["kind"] for r in rows} >= {"ours", "ours-sde", "ours-calibrated", "ours-adaptive", "floor"}
    assert res["sections"]["sampling"]["calibration"][0]["nfe_total"] > 0
    with open(res["sections"]["sampling"]["plots"][0], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for key in ("sampling", "likelihood", "em_overhead"):
        assert key in res["goals"] and "per_problem" in res["goals"][key]
        # the verdict is a function of the numbers, not a constant; with no rows (e.g. the
        # optional k-diffusion peer is not installed) it is None, reported as "n/a (skipped)"
        v = res["goals"][key]
        lines = [p for p in v["per_problem"].values() if p.get("goal", True)]  # goal=False: reported only
        if key == "sampling":  # the verdict is the "any grid" lines', never the default-grid-only ones
            assert {k for k, p in v["per_problem"].items() if p["kind"] == "ratio" and p["goal"]} == {
                k for k in v["per_problem"] if k.endswith("(any grid)")}
            cal = [p for p in v["per_problem"].values() if p["kind"] == "calibrated"]
            assert sum(p["goal"] for p in cal) == len({r["problem"] for r in rows if r["kind"] == "ours-calibrated"})
        expected = all(p["passed"] for p in lines) if lines else None
        assert v["passed"] == expected
    md = (out / "results.md").read_text()
    assert "## Goals" in md and "| problem | method |" in md


def test_scaling_writes_plots(tmp_path):
    from benchmarks import scaling

    res = scaling.run(quick=True, repeats=1, out=str(tmp_path), log=lambda *a: None)
    assert len(res["plots"]) == 4
    for p in res["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert {r["curve"] for r in res["rows"]} >= {"sampling vs batch", "sampling vs dim", "sampling vs nfe", "likelihood vs dim"}


def test_likelihood_frontier_rows_are_accurate_and_consistent(tmp_path):
    """The frontier on a 2-D mixture (B = 8). Independent oracle: the analytic log density, so a
    100x tighter batch-shared solve must be within 1 x tol on every sample (measured 0.02 x tol;
    a wrong reference density, time or unit gives >> 1) while the tol-level solve is not exact.
    Cost ratios are relative to the first (reference) point."""
    from benchmarks import likelihood_frontier as lf

    fams = (lf.FAMILIES[0][:2] + ((1.0, 0.01),), lf.FAMILIES[3][:2] + ((4.0, 1.0),))
    rows = lf.run_problem(2, "VP", 8, families=fams, log=lambda *a, **k: None)
    assert [r["scale"] for r in rows] == [1.0, 0.01, 4.0, 1.0]
    assert rows[0]["nfe_ratio"] == 1.0 and rows[0]["evals_ratio"] == 1.0
    assert rows[1]["max_over_tol"] < 1.0 < rows[1]["nfe"] / rows[0]["nfe"]
    # the tol-level solve is not exact: its worst sample errs by more than tol (measured 2.7 x tol)
    assert rows[0]["max_over_tol"] > 1.0 > rows[1]["max_over_tol"] > 0
    for r in rows:
        assert r["nfe_ratio"] == pytest.approx(r["nfe"] / rows[0]["nfe"])
        assert r["evals_ratio"] == pytest.approx(r["evals_per_sample"] / rows[0]["nfe"])
        assert r["median_over_tol"] <= r["p90_over_tol"] <= r["p99_over_tol"] <= r["max_over_tol"]
        assert r["delta_nats_max"] >= r["delta_nats_median"] > 0
    # independent steps: finished samples leave the batch, so the mean sample takes part in fewer
    # calls than there are batched calls (strictly here: these 8 samples take different steps)
    assert all(r["evals_per_sample"] < r["nfe"] for r in rows[2:])


def test_likelihood_frontier_summary_on_synthetic_rows():
    """summarise on hand-made rows with known answers: cost 1, 2, 4 with worst errors 1000, 10, 0.1
    x tol has order log(100)/log(2); the cheapest point within 10 x tol is cost 2; the reference
    needs order log(100)/log(1.3) to reach the box; a non-monotone family has no order (None)."""
    from benchmarks import likelihood_frontier as lf

    def row(fam, scale, cost, err, calls=None):
        return dict(problem="P", family=fam, scale=scale, evals_ratio=cost, nfe_ratio=calls or cost, max_over_tol=err)

    rows = [row("a", 1.0, 1.0, 1000.0), row("a", 0.1, 2.0, 10.0), row("a", 0.01, 4.0, 0.1),
            row("b", 1.0, 1.2, 5.0, calls=2.0), row("c", 1.0, 1.5, 8.0), row("c", 0.1, 1.4, 20.0)]
    s = lf.summarise(rows)["P"]
    a = s["families"]["a"]["evals_ratio"]
    assert a["order"] == pytest.approx(math.log(100) / math.log(2))
    assert a["cheapest_within"] == 2.0 and a["in_box"] is False
    assert s["order_needed_from_reference"] == pytest.approx(math.log(100) / math.log(1.3))
    b = s["families"]["b"]
    assert b["evals_ratio"]["in_box"] is True and b["nfe_ratio"]["in_box"] is False  # the two costs differ
    assert b["evals_ratio"]["order"] is None  # one point
    assert s["families"]["c"]["evals_ratio"]["order"] is None  # cost falls as the scale tightens


def test_likelihood_frontier_command_writes_json_and_png(tmp_path):
    from benchmarks import likelihood_frontier as lf

    res = lf.main(["--quick", "--out", str(tmp_path)])
    js, png = res["paths"]
    with open(js) as fh:
        d = json.load(fh)
    assert d["command"].endswith("--quick --out " + str(tmp_path)) and len(d["rows"]) == 2 * 13
    assert set(d["summary"]) == {"GMM2-VP", "GMM2-VE"}
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

r"""Digits: time to the held-out mean bits/dim with estimator error <= ``target`` (0.005 bits/dim).

The model is the one ``examples/train_digits.py`` trains (U-Net ``base=32``,
``channel_mults=(1, 2)``, VP SDE, eps-prediction, EMA weights), loaded from that example's
checkpoint directory; if none exists the example is run (``--train-steps``, default 800) to make
one. The first ``n_images`` of the example's 197 held-out digits (never trained on; one fixed
dequantisation) are scored in float64 at eps = 1e-3, one thread. The goal's test set is these
``N`` images: the probe noise of a mean over N images with K probes each is
:math:`s/\sqrt{NK}` (``s`` the per-probe standard deviation of one image's bits/dim), so the K
a path needs depends on N, and the total work ``N K`` does not.

* **reference**: exact divergence, dopri5, per-sample control, ``rtol = atol = ref_tol``. It is
  the slow part (an exact trace of this U-Net is 64 backward passes per evaluation), so it is
  cached per image in ``likelihood_digits_reference.json`` (keyed by checkpoint step, images,
  tolerance) and re-used by later runs; ``--recompute-reference`` forces a new solve.
* **pilot** (not timed against the goal): ``pilot_probes`` probes per image for each of our
  estimators give the per-probe variance :math:`s^2` (pooled over images), and the same probes
  solved at ``tol`` and at ``pilot_tight_tol`` give our solver error of the mean :math:`b`
  (paired, so probe noise cancels); the K each path needs is the smallest with predicted probe
  standard error :math:`s/\sqrt{NK} \le` ``target`` :math:`- |b|` (a one-sigma criterion; a
  two-sigma one multiplies every K, and so both paths' times, by about 4).
  score_sde's path uses the same Rademacher estimator of the same integral, so its ``s`` is the
  pooled one of its own solves and our plain-Hutchinson pilot (reported separately too).
* **score_sde's path**: :func:`benchmarks.peers.rk45_log_likelihood` (scipy RK45 at 1e-5, one
  Rademacher probe per image per solve, flat numpy state); K probes are K independent solves
  (what its code does), so its time to error is K x its measured time per solve (``peer_solves``
  solves are run; extrapolated, the cost is linear in K by construction).
* **ours**: :func:`sdesolve_gen.likelihood.dataset_log_likelihood`, all K probes in *one* solve
  (``n_probes=K``: one forward pass and one vectorised backward pass over the K probes per
  evaluation), plain Rademacher Hutchinson and with the Gaussian control variate
  (:class:`sdesolve_gen.divergence.GaussianControlVariate` from the training split's covariance);
  measured at its K.

"Estimator error" = |mean bpd - reference mean bpd| (probe noise + solver error of the mean);
each run's predicted probe standard error is checked by ``z`` = error / predicted stderr and by
the per-image ``mean z_i^2`` (about 1 if honest). The data's own spread (std / sqrt(N)) is not
part of it. Times are CPU seconds of this single-threaded process (``time.process_time``; robust
to the machine's load) and wall seconds; the ratio uses CPU seconds.

    python -m benchmarks.likelihood_digits --quick    # 4 images, target 0.02 (files *_quick.json)
    python -m benchmarks.likelihood_digits            # 32 images, target 0.005
    python -m benchmarks.likelihood_digits --reference-only &   # optional: the reference in parallel
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Dict, List

import torch

import sdesolve_gen as sg
from sdesolve_gen.data import load_digits
from sdesolve_gen.divergence import GaussianControlVariate
from sdesolve_gen.likelihood import dataset_log_likelihood
from sdesolve_gen.train import load_checkpoint

from .peers import rk45_log_likelihood

N_LEVELS, RANGE, EPS, D = 17, (-1.0, 1.0), 1e-3, 64
TO_BITS = 1.0 / (D * math.log(2.0))
_EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train_digits.py")


def _example_model(ckpt_dir: str, train_steps: int, log) -> Any:
    """The example's EMA model from its checkpoint (running the example first if there is none)."""
    if not os.path.exists(os.path.join(ckpt_dir, "checkpoint.pt")):
        spec = importlib.util.spec_from_file_location("train_digits", _EXAMPLE)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        mod.main(["--steps", str(train_steps), "--checkpoint-dir", ckpt_dir, "--n-eval", "2",
                  "--out", os.path.join(ckpt_dir, "samples.png")])
        log(f"  ran examples/train_digits.py for {train_steps} steps in {time.perf_counter() - t0:.0f} s")
    state = load_checkpoint(ckpt_dir)
    sde = sg.VPSDE()
    # the example's architecture (examples/train_digits.py defaults: base 32, channel_mults (1, 2))
    model = sg.ScoreModel(sg.UNet(1, base=32, channel_mults=(1, 2)), sde, "eps")
    ema = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    model.load_state_dict(ema)
    return sde, model.double().eval(), int(state["step"])


def _split() -> Dict[str, torch.Tensor]:
    levels = load_digits(as_levels=True)
    perm = torch.randperm(levels.shape[0], generator=torch.Generator().manual_seed(0))  # the example's split
    return {"train": levels[perm[:1600]], "test": levels[perm[1600:]]}


def _timed(fn: Callable[[], Any]) -> Dict[str, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    res = fn()
    return {"res": res, "cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}


def _bpd(lp: torch.Tensor) -> torch.Tensor:
    return sg.bits_per_dim(lp, (1, 8, 8), data_range=RANGE, n_bins=N_LEVELS)


def _reference_key(model, x, ref_tol, step) -> Dict[str, Any]:
    return dict(step=step, n=int(x.shape[0]), ref_tol=ref_tol, eps=EPS,
               images=hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16],
               weights=hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16])


def _reference(sde, model, x, ref_tol, step, out, recompute, log, tag="") -> Dict[str, Any]:
    key = _reference_key(model, x, ref_tol, step)
    path = os.path.join(out, f"likelihood_digits{tag}_reference.json")
    if not recompute and os.path.exists(path):
        with open(path) as fh:
            cached = json.load(fh)
        if cached.get("key") == key:
            log(f"  reference: cached ({cached['cpu']:.0f} CPU s when computed)")
            return dict(cached, cached=True)
    t = _timed(lambda: dataset_log_likelihood(sde, model, x, divergence="exact", rtol=ref_tol, atol=ref_tol, eps=EPS,
                                              batch_size=x.shape[0], method="dopri5", data_range=RANGE, n_bins=N_LEVELS))
    r = t["res"]
    ref = dict(key=key, bpd=r.bits_per_dim.tolist(), mean_bpd=r.mean_bpd, nfe=r.nfe, cpu=t["cpu"], wall=t["wall"],
               method=f"exact divergence, dopri5 rtol=atol={ref_tol:g}, per-sample control")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(ref, fh, indent=1)
    log(f"  reference: {t['cpu']:.0f} CPU s, NFE {r.nfe}, mean bpd {r.mean_bpd:.5f}")
    return dict(ref, cached=False)


def _k_needed(var: float, n: int, target: float) -> int:
    """Smallest K with sqrt(var / (n K)) <= target."""
    return max(1, math.ceil(var / (n * target * target) - 1e-12))


def _images(n_images: int) -> Dict[str, torch.Tensor]:
    split = _split()
    x = sg.dequantize(split["test"], generator=torch.Generator().manual_seed(3), n_bins=N_LEVELS, data_range=RANGE,
                      dtype=torch.float64)[:n_images]
    train = sg.dequantize(split["train"], generator=torch.Generator().manual_seed(5), n_bins=N_LEVELS, data_range=RANGE,
                          dtype=torch.float64)
    return {"x": x, "train": train, "held_out_total": torch.tensor(split["test"].shape[0])}


def reference_only(*, n_images: int, ref_tol: float, ckpt_dir: str, train_steps: int, out: str, tag: str = "", log=print) -> None:
    """Compute (and cache) only the reference, e.g. in a second process while :func:`run` times the paths."""
    sde, model, step = _example_model(ckpt_dir, train_steps, log)
    _reference(sde, model, _images(n_images)["x"], ref_tol, step, out, True, log, tag)


def run(*, n_images: int = 32, ref_tol: float = 1e-2, target: float = 0.005, pilot_probes: int = 4, peer_solves: int = 2,
        method: str = "dopri5", tol: float = 1e-1, pilot_tight_tol: float = 1e-2, ckpt_dir: str, train_steps: int = 800, out: str = "benchmarks/results",
        recompute_reference: bool = False, tag: str = "", log=print) -> Dict[str, Any]:
    sde, model, step = _example_model(ckpt_dir, train_steps, log)
    imgs = _images(n_images)
    x, train = imgs["x"], imgs["train"]
    N = x.shape[0]
    common = dict(eps=EPS, batch_size=N, data_range=RANGE, n_bins=N_LEVELS, method=method)
    ours = {"hutchinson": "hutchinson", "hutchinson + Gaussian control variate": GaussianControlVariate.from_data(train)}

    # --- pilots: per-probe variance of one image's bpd (pooled over images) and the solver error of
    # the mean at tol (paired: the same probes at tol and at pilot_tight_tol)
    pilots: Dict[str, Dict[str, Any]] = {}
    for name, div in ours.items():
        def pilot(tt: float, div=div) -> Any:
            return dataset_log_likelihood(sde, model, x, divergence=div, n_probes=pilot_probes, seed=100, rtol=tt, atol=tt, **common)

        t, tight = _timed(lambda: pilot(tol)), _timed(lambda: pilot(pilot_tight_tol))
        var_i = (t["res"].stderr * TO_BITS) ** 2 * pilot_probes  # per-probe variance per image (unbiased)
        pilots[name] = dict(var=float(var_i.mean()), dof=N * (pilot_probes - 1), cpu=t["cpu"] + tight["cpu"], nfe=t["res"].nfe,
                            solver_error=t["res"].mean_bpd - tight["res"].mean_bpd, tight_tol=pilot_tight_tol)
        log(f"  pilot {name:42s} K={pilot_probes}: per-probe sd {math.sqrt(pilots[name]['var']):.4f} bits/dim, solver error "
            f"at {method} {tol:g} {pilots[name]['solver_error']:+.5f} bits/dim, {pilots[name]['cpu']:.0f} CPU s")

    # --- score_sde's path: independent one-probe solves
    peer_runs = [_timed(lambda s=s: rk45_log_likelihood(sde, model, x, eps=EPS, seed=s)) for s in range(peer_solves)]
    peer_bpd = torch.stack([_bpd(r["res"]["log_prob"]) for r in peer_runs])  # (P, N)
    peer_cpu = sum(r["cpu"] for r in peer_runs) / peer_solves
    peer_wall = sum(r["wall"] for r in peer_runs) / peer_solves
    peer_var = float(peer_bpd.var(0, unbiased=True).mean()) if peer_solves > 1 else float("nan")
    log(f"  score_sde: {peer_solves} one-probe solves, {peer_cpu:.0f} CPU s each, NFE {[r['res']['nfe'] for r in peer_runs]}")
    pv, pd = pilots["hutchinson"]["var"], pilots["hutchinson"]["dof"]
    rad_var = (pv * pd + peer_var * N * (peer_solves - 1)) / (pd + N * (peer_solves - 1)) if peer_solves > 1 else pv

    rows: List[Dict[str, Any]] = []
    K_peer = _k_needed(rad_var, N, target)  # RK45 at 1e-5: solver error taken as 0 (to its advantage)
    peer_mean = float(peer_bpd.mean())
    rows.append(dict(path="score_sde: scipy RK45 1e-5, K one-probe solves", K=K_peer, solves=K_peer,
                     nfe_per_solve=sum(r["res"]["nfe"] for r in peer_runs) / peer_solves,
                     cpu=K_peer * peer_cpu, wall=K_peer * peer_wall, measured=f"{peer_solves} of the {K_peer} solves run; time = K x mean per solve",
                     per_probe_sd=math.sqrt(rad_var), predicted_se=math.sqrt(rad_var / (N * K_peer)), K_measured=peer_solves,
                     mean_bpd_measured=peer_mean, se_measured=math.sqrt(rad_var / (N * peer_solves))))
    finals = {}
    for name, div in ours.items():
        var = pilots[name]["var"] if name != "hutchinson" else rad_var
        margin = abs(pilots[name]["solver_error"])
        K = _k_needed(var, N, target - margin) if margin < target else 0
        if K == 0:
            log(f"  {name}: solver error {margin:.4f} >= target at tol {tol:g}; skipped")
            continue
        t = _timed(lambda div=div, K=K: dataset_log_likelihood(sde, model, x, divergence=div, n_probes=K, seed=200,
                                                              rtol=tol, atol=tol, **common))
        r = t["res"]
        finals[name] = r
        rows.append(dict(path=f"ours: {name}, {method} {tol:g}, K probes in one solve", K=K, solves=1, nfe_per_solve=r.nfe,
                         cpu=t["cpu"], wall=t["wall"], measured="measured at K", per_probe_sd=math.sqrt(var),
                         predicted_se=math.sqrt(var / (N * K)), solver_error_pilot=pilots[name]["solver_error"],
                         reported_se=r.probe_stderr, mean_bpd_measured=r.mean_bpd, se_measured=math.sqrt(var / (N * K)), K_measured=K))
        log(f"  {rows[-1]['path']:70s} K={K:4d} {t['cpu']:7.0f} CPU s  NFE {r.nfe}  mean bpd {r.mean_bpd:.5f} (reported se {r.probe_stderr:.4f})")

    # --- the reference last (cached per image; its cost is not part of any path's time)
    ref = _reference(sde, model, x, ref_tol, step, out, recompute_reference, log, tag)
    ref_bpd = torch.tensor(ref["bpd"], dtype=torch.float64)
    for row in rows:
        row["error_measured"] = abs(row["mean_bpd_measured"] - ref["mean_bpd"])
        row["z"] = row["error_measured"] / row["se_measured"]
    for row, r in zip(rows[1:], finals.values()):
        row["mean_z2"] = float(((r.bits_per_dim - ref_bpd) / (r.stderr * TO_BITS)).pow(2).mean())
    peer_row = rows[0]
    for r in rows:
        r["speedup_vs_score_sde"] = peer_row["cpu"] / r["cpu"]
    ok = [r for r in rows[1:] if r["error_measured"] <= target and r["predicted_se"] <= target]
    best = max(ok, key=lambda r: r["speedup_vs_score_sde"]) if ok else None
    goal = dict(target=target, N=N, best=best["path"] if best else None, speedup=best["speedup_vs_score_sde"] if best else 0.0,
                passed=bool(best) and best["speedup_vs_score_sde"] >= 3.0,
                line=(f"time to N={N} mean bits/dim within {target:g}: ours {best['cpu']:.0f} CPU s (K={best['K']}, one solve) vs "
                      f"score_sde {peer_row['cpu']:.0f} CPU s (K={peer_row['K']} solves): {best['speedup_vs_score_sde']:.2f}x "
                      f"(goal >= 3x: {'met' if best['speedup_vs_score_sde'] >= 3.0 else 'not met'})") if best else "no route within target")
    res = {"rows": rows, "goal": goal, "pilots": pilots, "peer_per_probe_sd_own": math.sqrt(peer_var) if peer_solves > 1 else None,
           "reference": {k: v for k, v in ref.items() if k != "bpd"}, "N": N, "D": D, "train_steps": step,
           "held_out_total": int(imgs["held_out_total"]), "threads": torch.get_num_threads(),
           "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"likelihood_digits{tag}.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    log(_table(res))
    return res


def _table(res: Dict[str, Any]) -> str:
    lines = [f"N = {res['N']} of {res['held_out_total']} held-out images; reference mean {res['reference']['mean_bpd']:.5f} bits/dim "
             f"({res['reference']['method']}); load {res['load_avg']}",
             f"{'path':72s} {'K':>5s} {'NFE':>5s} {'CPU s':>8s} {'wall s':>8s} {'err':>7s} {'pred se':>8s} {'z':>5s} {'ratio':>6s}"]
    for r in res["rows"]:
        lines.append(f"{r['path']:72s} {r['K']:5d} {r['nfe_per_solve']:5.0f} {r['cpu']:8.0f} {r['wall']:8.0f} "
                     f"{r['error_measured']:7.4f} {r['predicted_se']:8.4f} {r['z']:5.2f} {r['speedup_vs_score_sde']:6.2f}")
    lines.append(res["goal"]["line"])
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 images, target 0.02 bits/dim")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--ref-tol", type=float, default=1e-2)
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--method", default="dopri5")
    ap.add_argument("--tol", type=float, default=1e-1)
    ap.add_argument("--peer-solves", type=int, default=2)
    ap.add_argument("--recompute-reference", action="store_true")
    ap.add_argument("--reference-only", action="store_true", help="only compute and cache the reference (run it in parallel)")
    ap.add_argument("--checkpoint-dir", default=os.path.join(tempfile.gettempdir(), "sdesolve_gen_digits"))
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    n_img, tag = a.n_images or (4 if a.quick else 32), "_quick" if a.quick else ""
    if a.reference_only:
        reference_only(n_images=n_img, ref_tol=a.ref_tol, ckpt_dir=a.checkpoint_dir, train_steps=a.train_steps, out=a.out, tag=tag)
        raise SystemExit(0)
    run(n_images=n_img, ref_tol=a.ref_tol, target=a.target or (0.02 if a.quick else 0.005),
        pilot_probes=4, peer_solves=a.peer_solves, method=a.method, tol=a.tol, ckpt_dir=a.checkpoint_dir,
        train_steps=a.train_steps, out=a.out, recompute_reference=a.recompute_reference, tag=tag)

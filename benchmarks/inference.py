r"""The inference path of a real network: peak memory and wall time of sampling, and a GPU section.

* **Memory**: Euler-Maruyama with an ``nn.Module`` score (``ScoreModel(MLPScoreNet(2))``, B = 2000,
  float32) for 25 / 200 / 800 steps, three ways: our sampler as shipped (inference by default),
  our sampler with ``differentiable=True`` (the graph of every step kept, as before the inference
  default), and a bare hand-written loop under ``torch.no_grad()``. Each run is a fresh
  subprocess; the number is the growth of its peak resident set size (``ru_maxrss``) during the
  sampling call, so imports and the model do not count; the median of 5 processes (3 in quick
  mode; the allocator's peak varies between otherwise identical processes, measured 11.9 to
  38.8 MB for the same 200-step run).
* **Time**: a U-Net score (the shipped ``UNet``, base 32, digits shape ``(B, 1, 8, 8)``) sampled
  with DPM-Solver++(2M) by our sampler and by a bare loop of the same steps, same ``x_T``: wall-time
  ratio (median of repeats), and the outputs are checked equal.
* **GPU** (only when CUDA is available; skipped with a message otherwise): U-Net samples/s at batch
  256, and host synchronisations per step = 0, enforced with ``torch.cuda.set_sync_debug_mode("error")``
  (any synchronising call inside the sampler raises).

Goals (issue "Real networks on real devices"): peak memory of 800 EM steps <= 1.1x the bare
no-grad loop; U-Net sampling wall time <= 1.1x the bare loop.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any, Dict, List

import torch

from .metrics import median_time

_CHILD = r"""
import json, math, resource, sys
import torch
torch.set_num_threads(1)
import sdesolve_gen as sg
mode, steps, B = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sde = sg.VPSDE()
torch.manual_seed(0)
model = sg.ScoreModel(sg.MLPScoreNet(2), sde)
x_T = sde.prior_sample((B, 2), generator=torch.Generator().manual_seed(0))
ts = sg.timesteps(sde, steps)
def bare():
    t, a, g2 = ts.tolist(), sde.drift_coef(ts).tolist(), sde.diffusion2(ts).tolist()
    gen, x = torch.Generator().manual_seed(1), x_T
    with torch.no_grad():
        for i in range(steps):
            h = t[i] - t[i + 1]
            x = x + (g2[i] * model(x, ts[i]) - a[i] * x) * h + math.sqrt(g2[i] * h) * torch.randn(x.shape, generator=gen)
    return x
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "bare":
    x = bare()
else:
    x = sg.euler_maruyama(sde, model, x_T, ts, generator=torch.Generator().manual_seed(1),
                          differentiable=(mode == "grad")).x
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mb": (after - before) / 1024.0, "requires_grad": bool(x.requires_grad)}))
"""


def _memory_rows(steps_list: List[int], B: int, repeats: int, log) -> List[Dict[str, Any]]:
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for steps in steps_list:
        got = {}
        for mode in ("bare", "ours", "grad"):
            runs = []
            for _ in range(repeats if mode != "grad" else 1):  # the allocator's peak varies from process to process
                out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(steps), str(B)], capture_output=True,
                                     text=True, env=env, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            runs.sort(key=lambda r: r["peak_growth_mb"])
            got[mode] = runs[len(runs) // 2]  # median process
        base = max(got["bare"]["peak_growth_mb"], 1.0)  # floor 1 MB: ru_maxrss is in KB pages
        for mode, label in (("bare", "bare loop, no_grad"), ("ours", "ours (inference default)"),
                            ("grad", "ours, differentiable=True")):
            rows.append(dict(measure="peak memory", steps=steps, batch=B, method=label,
                             peak_growth_mb=round(got[mode]["peak_growth_mb"], 1),
                             ratio_vs_bare=got[mode]["peak_growth_mb"] / base,
                             output_requires_grad=got[mode]["requires_grad"]))
        log(f"  inference memory {steps} steps: done")
    return rows


def _bare_dpmpp_2m(sde, model, x_T, ts):
    """DPM-Solver++(2M) written out by hand (the reference loop for the overhead ratio)."""
    alpha = torch.exp(sde.log_alpha(ts)).tolist()
    sigma = torch.sqrt(sde.sigma2(ts)).tolist()
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    x, prev, prev_h = x_T, None, None
    with torch.no_grad():
        for i in range(len(lam) - 1):
            x0 = (x + sigma[i] ** 2 * model(x, ts[i])) / alpha[i]
            h = lam[i + 1] - lam[i]
            c = 0.0 if prev is None else h / (2 * prev_h)  # 1 / (2 r), r = h_{i-1} / h_i
            D = x0 if prev is None else (1 + c) * x0 - c * prev
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * D
            prev, prev_h = x0, h
    return x


def _time_rows(B: int, steps: int, repeats: int, log) -> List[Dict[str, Any]]:
    import sdesolve_gen as sg

    sde = sg.VPSDE()
    torch.manual_seed(0)
    model = sg.ScoreModel(sg.UNet(in_channels=1, base=32), sde).eval()
    x_T = sde.prior_sample((B, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    ts = sg.timesteps(sde, steps, kind="logsnr")
    t_ours, ours = median_time(lambda: sg.dpm_solver_pp_2m(sde, model, x_T, ts).x, repeats, warmup=1)
    t_bare, bare = median_time(lambda: _bare_dpmpp_2m(sde, model, x_T, ts), repeats, warmup=1)
    same = float((ours - bare).abs().max())
    log("  inference U-Net timing: done")
    return [dict(measure="U-Net wall time", steps=steps, batch=B, method="ours dpm_solver_pp_2m", time=t_ours,
                 ratio_vs_bare=t_ours / t_bare, max_abs_diff_vs_bare=same),
            dict(measure="U-Net wall time", steps=steps, batch=B, method="bare loop", time=t_bare, ratio_vs_bare=1.0,
                 max_abs_diff_vs_bare=0.0)]


def _gpu_rows(repeats: int, log) -> List[Dict[str, Any]]:
    import sdesolve_gen as sg

    dev = torch.device("cuda")
    sde = sg.VPSDE()
    torch.manual_seed(0)
    model = sg.ScoreModel(sg.UNet(in_channels=1, base=32), sde).to(dev).eval()
    x_T = sde.prior_sample((256, 1, 8, 8), generator=torch.Generator(device=dev).manual_seed(0), device=dev)
    ts = sg.timesteps(sde, 20, kind="logsnr")

    def run():
        sol = sg.dpm_solver_pp_2m(sde, model, x_T, ts, check_finite="off")
        return sol.x

    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation inside the sampler raises
    try:
        run()
        syncs = 0
    except RuntimeError:
        syncs = -1  # at least one synchronising call: reported, not hidden
    finally:
        torch.cuda.set_sync_debug_mode("default")
    t, _ = median_time(lambda: (run(), torch.cuda.synchronize()), repeats, warmup=1)
    log("  inference GPU: done")
    return [dict(measure="GPU U-Net", steps=20, batch=256, method="ours dpm_solver_pp_2m", time=t,
                 samples_per_s=256 / t, host_syncs_per_step="0" if syncs == 0 else ">0")]


def run(*, quick: bool, repeats: int, log=print) -> Dict[str, Any]:
    """Memory, CPU wall time and (with CUDA) the GPU section; see the module docstring."""
    rows = _memory_rows([25, 200] if quick else [25, 200, 800], 2000, 3 if quick else 5, log)
    rows += _time_rows(16 if quick else 64, 10 if quick else 25, repeats, log)
    skipped = []
    if torch.cuda.is_available():
        rows += _gpu_rows(repeats, log)
    else:
        msg = "inference GPU section: skipped (CUDA not available on this machine)"
        log("  " + msg)
        skipped.append(msg)
    return {"rows": rows, "skipped": skipped, "markdown": markdown(rows)}


def goal(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Memory at the longest run <= 1.1x the bare no-grad loop; U-Net wall time <= 1.1x the bare loop."""
    mem = [r for r in rows if r["measure"] == "peak memory" and r["method"].startswith("ours (")]
    longest = max(mem, key=lambda r: r["steps"]) if mem else None
    tim = [r for r in rows if r["measure"] == "U-Net wall time" and r["method"].startswith("ours")]
    per = {}
    if longest is not None:
        per[f"memory {longest['steps']} steps"] = dict(ratio=longest["ratio_vs_bare"], passed=longest["ratio_vs_bare"] <= 1.1)
    if tim:
        per["U-Net time"] = dict(ratio=tim[0]["ratio_vs_bare"], passed=tim[0]["ratio_vs_bare"] <= 1.1)
    return {"per_problem": per, "passed": bool(per) and all(v["passed"] for v in per.values())}


def markdown(rows: List[Dict[str, Any]]) -> str:
    from .report import table

    g = goal(rows)
    lines = ["\n## Inference path of a network (memory, wall time, GPU)\n",
             f"Goals: **{'PASS' if g['passed'] else 'FAIL'}** — " +
             "; ".join(f"{k}: {v['ratio']:.3g}x ({'PASS' if v['passed'] else 'FAIL'}, goal <= 1.1x)" for k, v in g["per_problem"].items()) + "\n",
             table([r for r in rows if r["measure"] == "peak memory"],
                   ["steps", "batch", "method", "peak_growth_mb", "ratio_vs_bare", "output_requires_grad"]),
             table([r for r in rows if r["measure"] != "peak memory"],
                   ["measure", "steps", "batch", "method", "time", "ratio_vs_bare", "max_abs_diff_vs_bare"])]
    return "\n".join(lines)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    res = run(quick=quick, repeats=1 if quick else 3)
    print(res["markdown"])
    for s in res["skipped"]:
        print(s)

"""
Samplers at matched NFE budgets against the exact answer
========================================================

Every sampler at matched score-evaluation budgets on the demo's 2-D Gaussian mixture (VP SDE,
exact score, exact prior), scored against the exact answer. Run::

    python examples/samplers_comparison.py [--out comparison.png]   # N = 10000, budgets 10..200 NFE
    python examples/samplers_comparison.py --smoke                  # N = 500, budgets 10 and 30

Per sampler and budget B, the grid has B // (evaluations per step) steps (uniform in t for the SDE
samplers, uniform in log-SNR for DPM-Solver, EDM rho=7 for Heun); the adaptive ones (PF-ODE dopri5,
Gotta-Go-Fast SDE) are run at tolerances instead and report the NFE they used. Errors at t = eps:

* dlogp = mean exact log p_eps(samples) - E[log p_eps] (50 000 exact samples; 20 000 for --smoke), +- its MC standard
  error: 0 for a perfect sampler; ``|dlogp| > 3 se`` is a measured bias;
* SW2 = sliced W2 (64 directions) to the quantiles of 50 000 exact samples; the 'exact' row is the
  Monte-Carlo floor for N samples.
"""

import argparse
import math
import sys
import time

import torch

import sdesolve_gen as sg
from sdesolve_gen.demo import demo_mixture, sliced_w2

FIXED = [  # name, evaluations per step, grid kind, call(sde, score, x_T, ts, g)
    ("euler_maruyama", 1, "uniform", lambda s, f, x, ts, g: sg.euler_maruyama(s, f, x, ts, generator=g)),
    ("reverse_diffusion", 1, "uniform", lambda s, f, x, ts, g: sg.reverse_diffusion(s, f, x, ts, generator=g)),
    ("ancestral", 1, "uniform", lambda s, f, x, ts, g: sg.ancestral(s, f, x, ts, generator=g)),
    ("pc[rd+langevin]", 2, "uniform", lambda s, f, x, ts, g: sg.predictor_corrector(s, f, x, ts, generator=g)),
    ("heun (EDM)", 2, "edm", lambda s, f, x, ts, g: sg.heun(s, f, x, ts)),
    ("dpm_solver-1 (DDIM)", 1, "logsnr", lambda s, f, x, ts, g: sg.dpm_solver(s, f, x, ts, order=1)),
    ("dpm_solver-2", 2, "logsnr", lambda s, f, x, ts, g: sg.dpm_solver(s, f, x, ts, order=2)),
    ("dpm_solver-3", 3, "logsnr", lambda s, f, x, ts, g: sg.dpm_solver(s, f, x, ts, order=3)),
    ("dpm_solver_pp_2m", 1, "logsnr", lambda s, f, x, ts, g: sg.dpm_solver_pp_2m(s, f, x, ts)),
]
ADAPTIVE = [  # name, tolerance, call
    ("ode[dopri5]", 1e-3, lambda s, f, x, ts, g, tol: sg.ode(s, f, x, ts, rtol=tol, atol=tol)),
    ("ode[dopri5]", 1e-5, lambda s, f, x, ts, g, tol: sg.ode(s, f, x, ts, rtol=tol, atol=tol)),
    ("adaptive_sde", 5e-2, lambda s, f, x, ts, g, tol: sg.adaptive_sde(s, f, x, ts, generator=g, rtol=tol, atol=tol)),
    ("adaptive_sde", 1e-2, lambda s, f, x, ts, g, tol: sg.adaptive_sde(s, f, x, ts, generator=g, rtol=tol, atol=tol)),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Samplers at matched NFE budgets against the exact answer')
    parser.add_argument("--smoke", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--out", default=None, help="optional PNG: |dlogp| against NFE per sampler")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, budgets, n_big = (500, [10, 30], 20_000) if args.smoke else (10_000, [10, 20, 50, 100, 200], 50_000)
    adaptive = ADAPTIVE[::2] if args.smoke else ADAPTIVE

    sde = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    data = demo_mixture()
    score = data.score_fn(sde)
    p_eps = data.marginal(sde.eps, sde)
    g = torch.Generator().manual_seed(args.seed)
    x_T = data.prior(sde).sample(n, generator=g, dtype=torch.float64)  # exact prior: no prior bias
    big = p_eps.sample(n_big, generator=g, dtype=torch.float64)
    entropy = float(p_eps.log_prob(big).mean())

    def score_row(x):
        lp = p_eps.log_prob(x)
        sw = sliced_w2(x, big, generator=torch.Generator().manual_seed(1))
        return float(lp.mean()) - entropy, float(lp.std()) / math.sqrt(n), sw

    rows = []
    start = time.perf_counter()
    for name, per_step, kind, call in FIXED:
        for b in budgets:
            steps = max(1, b // per_step)
            sol = call(sde, score, x_T, sg.timesteps(sde, steps, kind=kind), g)
            rows.append((name, sol.nfe, *score_row(sol.x)))
    for name, tol, call in adaptive:
        sol = call(sde, score, x_T, sg.timesteps(sde, 1), g, tol)
        rows.append((f"{name} tol={tol:g}", sol.nfe, *score_row(sol.x)))
    rows.append(("exact (MC floor)", 0, *score_row(p_eps.sample(n, generator=g, dtype=torch.float64))))

    print(f"N = {n} samples per run, exact prior, exact score; errors at t = eps = {sde.eps}")
    print(f"{'sampler':<26}{'NFE':>6}{'dlogp':>10}{'se':>8}{'SW2':>9}  bias?")
    for name, nfe, dl, se, sw in rows:
        flag = "yes" if abs(dl) > 3 * se else ""
        print(f"{name:<26}{nfe:>6}{dl:>+10.4f}{se:>8.4f}{sw:>9.4f}  {flag}")
    print(f"total {time.perf_counter() - start:.1f} s")

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, _, _, _ in FIXED:
            pts = [(r[1], abs(r[2])) for r in rows if r[0] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        floor = rows[-1][3]
        ax.axhline(3 * floor, color="k", ls="--", lw=0.8, label="3 x MC standard error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("score evaluations (NFE)")
        ax.set_ylabel("|dlogp| (nats)")
        ax.set_title(f"|mean log p_eps bias| vs NFE, N = {n} (below the dashed line: not measurable)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if main():  # non-zero: a printed check failed (no sys.exit(0): the docs gallery runs this in-process)
        sys.exit(1)

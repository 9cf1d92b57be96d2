"""
Quickstart: reverse SDE and PF-ODE on a 2-D mixture
===================================================

The README quickstart as a script: sample a 2-D Gaussian mixture with the reverse SDE (torchsde)
and the probability-flow ODE (torchdiffeq) using the exact score, and compare the sample means with
the true mean. Run::

    python examples/quickstart.py            # 2000 samples, 500 Euler-Maruyama steps (as the README)
    python examples/quickstart.py --smoke    # 500 samples, 100 steps
    python examples/quickstart.py --out quickstart.png   # also draw both samples over the density

Budget for the printed check: 2000 samples of a mixture with per-coordinate std <= 2.1, so the
Monte-Carlo standard error of a mean is <= 0.05; the script flags an error above 0.25 (5 SE; for
--smoke, 500 samples, SE <= 0.1, it flags above 0.5).
"""

import argparse
import sys

import torch

import sdesolve_gen as sg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='Quickstart: reverse SDE and PF-ODE on a 2-D mixture')
    parser.add_argument("--smoke", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--out", default=None, help="write a PNG of both sample sets over the exact density")
    args = parser.parse_args(argv)
    n, steps, tol = (500, 100, 0.5) if args.smoke else (2000, 500, 0.25)

    sde = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    data = sg.analytic.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                                       torch.stack([0.3 * torch.eye(2), 0.2 * torch.eye(2)]), [0.4, 0.6])
    score = data.score_fn(sde)  # exact score of p_t
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((n, 2), generator=g, dtype=torch.float64)  # standard prior N(0, I)
    ts = sg.timesteps(sde, n=steps)  # float64, T -> eps
    sol = sg.sdeint(sg.ReverseSDE(sde, score), x_T, ts, method="euler", generator=g)  # sol.ys: the whole path
    ode = sg.ProbabilityFlowODE(sde, score)
    x0 = sg.odeint(ode, x_T, ts[[0, -1]], method="dopri5", rtol=1e-5, atol=1e-5).x

    ok = True
    print(f"true mean            {data.mean.tolist()}")
    for name, x in (("reverse SDE (EM)", sol.x), ("PF-ODE (dopri5)", x0)):
        err = float((x.mean(0) - data.mean).abs().max())
        ok &= err < tol
        print(f"{name:<20} {[round(v, 4) for v in x.mean(0).tolist()]}   max |error| {err:.4f}")
    print(f"PF-ODE score evaluations: {ode.nfe}")
    print("OK: both means within the 5-SE budget" if ok else "FAIL: a mean is outside the 5-SE budget")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sdesolve_gen.plotting import scatter_vs_density, trajectory_fan

        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
        p_eps = data.marginal(sde.eps, sde)
        for ax, (name, x, c) in zip(axes, (("reverse SDE (EM)", sol.x, "C0"), ("PF-ODE (dopri5)", x0, "C1"))):
            scatter_vs_density(ax, x, p_eps, extent=(-4, 4, -2.5, 3), color=c, title=f"{name}: {n} samples")
        ode_paths = sg.odeint(ode, x_T[:8], ts, method="dopri5", rtol=1e-5, atol=1e-5).ys
        trajectory_fan(axes[2], sol.ys[:, :8], ode_paths, ts=ts, title="8 paths from the same x_T, x[0]")
        fig.tight_layout()
        fig.savefig(args.out, dpi=90)
        plt.close(fig)
        print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    if main():  # non-zero: a printed check failed (no sys.exit(0): the docs gallery runs this in-process)
        sys.exit(1)

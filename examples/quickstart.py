"""The README quickstart as a script: sample a 2-D Gaussian mixture with the reverse SDE (torchsde)
and the probability-flow ODE (torchdiffeq) using the exact score, and compare the sample means with
the true mean. Run:

    python examples/quickstart.py            # 2000 samples, 500 Euler-Maruyama steps (as the README)
    python examples/quickstart.py --smoke    # 500 samples, 100 steps

Budget for the printed check: 2000 samples of a mixture with per-coordinate std <= 2.1, so the
Monte-Carlo standard error of a mean is <= 0.05; the script flags an error above 0.25 (5 SE; for
--smoke, 500 samples, SE <= 0.1, it flags above 0.5).
"""

import argparse
import sys

import torch

import sdesolve_gen as sg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes (a few seconds)")
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

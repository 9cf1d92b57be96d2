"""Where the predictor-corrector's bias on the demo mixture comes from (docs/cli.rst).

Run: ``python -m benchmarks.pc_bias [--n 40000]``. For 250 and 1000 uniform steps on the demo's
2-D mixture (VP, exact score), prints the mean exact log-density of the samples at ``eps`` minus
its exact expectation (0 for a perfect sampler; +- one standard error) for the reverse-diffusion
predictor alone, Euler-Maruyama, and predictor + Langevin corrector at snr 0.16.
"""

from __future__ import annotations

import argparse
import math

import torch

from sdesolve_gen import VPSDE
from sdesolve_gen.correctors import predictor_corrector
from sdesolve_gen.demo import demo_mixture
from sdesolve_gen.integrate import timesteps
from sdesolve_gen.samplers import euler_maruyama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=40_000)
    args = ap.parse_args()
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    data = demo_mixture()
    score, p_eps = data.score_fn(sde), data.marginal(sde.eps, sde)
    expected = float(p_eps.log_prob(p_eps.sample(10 * args.n, generator=torch.Generator().manual_seed(1),
                                                 dtype=torch.float64)).mean())
    runs = {
        "reverse_diffusion": lambda x, ts, g: predictor_corrector(sde, score, x, ts, generator=g, corrector=None),
        "euler_maruyama": lambda x, ts, g: euler_maruyama(sde, score, x, ts, generator=g),
        "pc snr 0.16": lambda x, ts, g: predictor_corrector(sde, score, x, ts, generator=g, snr=0.16),
    }
    print("| steps | sampler | dlogp (nats) |\n|---|---|---|")
    for steps in (250, 1000):
        for name, fn in runs.items():
            g = torch.Generator().manual_seed(0)
            x_T = data.prior(sde).sample(args.n, generator=g, dtype=torch.float64)
            lp = p_eps.log_prob(fn(x_T, timesteps(sde, steps), g).x)
            print(f"| {steps} | {name} | {float(lp.mean()) - expected:+.4f} +- {float(lp.std()) / math.sqrt(args.n):.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()

"""
Conditional generation: guidance and inpainting
===============================================

Conditional generation on a 2-D Gaussian mixture: classifier guidance and inpainting.

Everything uses exact scores (the analytic oracles), so the numbers printed are properties of the
methods, not of a trained network:

* classifier guidance with the exact noise-conditional classifier p_t(y|x): the fraction of
  samples the Bayes classifier assigns to the requested component, for several scales, next to
  the exact rate P(argmax p(y|x) = y | x ~ component y) (what scale 1 should give);
* classifier-free guidance with w = 0 (the conditional score): sample mean vs component mean;
* inpainting by replacement on a correlated Gaussian: the unknown coordinate's mean/variance vs
  the exact conditional p(x_u | x_k) (replacement is biased when the blocks are correlated).

Run::

    python examples/conditional.py [--smoke] [--out conditional.png]
"""

from __future__ import annotations

import argparse

import torch

import sdesolve_gen as sg

F64 = torch.float64


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Conditional generation: guidance and inpainting')
    parser.add_argument("--smoke", action="store_true", help="few samples and steps (a few seconds)")
    parser.add_argument("--out", default=None, help="write a PNG figure here (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, steps = (500, 50) if args.smoke else (4000, 200)

    sde = sg.VPSDE()
    data = sg.analytic.GaussianMixture(
        torch.tensor([[-1.5, 0.0], [1.5, 0.0], [0.0, 2.0]]),
        torch.tensor([[[0.6, 0.1], [0.1, 0.5]], [[0.5, -0.1], [-0.1, 0.6]], [[0.6, 0.0], [0.0, 0.6]]]),
        torch.tensor([0.5, 0.3, 0.2]),
    )
    y = 1
    ts = sg.timesteps(sde, steps)
    gen = torch.Generator().manual_seed(args.seed)

    def bayes_label(x: torch.Tensor) -> torch.Tensor:
        return data.log_responsibilities(x, 0.0, sde).argmax(1)

    component = sg.analytic.GaussianMixture(data.means[y : y + 1], data.covs[y : y + 1])
    exact_rate = float((bayes_label(component.sample(20 * n, generator=gen, dtype=F64)) == y).double().mean())
    print(f"classifier guidance to component y={y} (EM, {steps} steps, {n} samples)")
    print(f"  exact rate P(argmax p(y|x) = y | x ~ component y) = {exact_rate:.4f}")
    x_T = sde.prior_sample((n, 2), generator=gen, dtype=F64)
    guided_samples = {}
    for scale in (0.0, 1.0, 2.0, 4.0):
        score = sg.classifier_guidance(data.score_fn(sde), sg.analytic_classifier(data, sde), y, scale)
        sol = sg.euler_maruyama(sde, score, x_T, ts, generator=gen)
        x = sol.x
        guided_samples[scale] = x
        rate = float((bayes_label(x) == y).double().mean())
        print(f"  scale {scale:3.1f}: occupancy of y = {rate:.4f}")

    cfg = sg.classifier_free_guidance(sg.analytic_conditional_score(data, sde), data.score_fn(sde), y, 0.0)
    sol = sg.euler_maruyama(sde, cfg, x_T, ts, generator=gen)
    x = sol.x
    print(f"classifier-free guidance w=0: sample mean {[round(v, 3) for v in x.mean(0).tolist()]}"
          f" vs component mean {data.means[y].tolist()}")

    rho, x_k = 0.9, 1.5
    mu, S = torch.tensor([0.5, -0.5], dtype=F64), torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    gauss = sg.analytic.Gaussian(mu, S)
    mask = torch.tensor([True, False])
    x_known = torch.tensor([[x_k, 0.0]], dtype=F64).expand(n, 2).contiguous()
    cm, cv = sg.gaussian_conditional(mu, S, mask, x_known[:1])
    print(f"inpainting x_1 given x_0 = {x_k} (rho = {rho}): exact conditional mean {float(cm):.3f}, var {float(cv):.3f}")
    inpainted = {}
    for sampler in sg.guidance.INPAINT_SAMPLERS:
        sol = sg.inpaint(sde, gauss.score_fn(sde), x_known, mask, ts, sampler=sampler, generator=gen)
        x, info = sol.x, sol
        inpainted[sampler] = x
        assert torch.equal(x[:, 0], x_known[:, 0])
        print(f"  {sampler:18s} mean {float(x[:, 1].mean()):.3f}  var {float(x[:, 1].var()):.3f}  (nfe {info.nfe})")

    if args.out:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not available; no figure written")
            return
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, scale in zip(axes[:2], (0.0, 2.0)):
            xs = guided_samples[scale]
            ax.scatter(xs[:, 0], xs[:, 1], s=2, c=bayes_label(xs), cmap="viridis", vmin=0, vmax=2)
            ax.set_title(f"classifier guidance to y={y}, scale {scale}")
            ax.set_aspect("equal")
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
        grid = torch.linspace(-3.5, 3.0, 200, dtype=F64)
        exact = torch.exp(-0.5 * (grid - float(cm)) ** 2 / float(cv)) / torch.sqrt(2 * torch.pi * cv.reshape(()))
        for sampler in ("euler_maruyama", "pc", "ode"):
            axes[2].hist(inpainted[sampler][:, 1].numpy(), bins=60, density=True, histtype="step", label=f"replacement [{sampler}]")
        axes[2].plot(grid, exact, "k", label="exact p(x_1 | x_0)")
        axes[2].set_title(f"inpainting x_1 given x_0={x_k}, rho={rho}")
        axes[2].set_xlabel("x_1")
        axes[2].set_ylabel("density")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

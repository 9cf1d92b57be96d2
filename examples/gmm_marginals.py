"""
Exact marginals of a Gaussian mixture under the VP SDE
======================================================

Print the exact marginal p_t of a 2-D Gaussian mixture under the VP SDE at a few times.

Under a linear SDE a mixture stays a mixture: component k moves to mean alpha(t) mu_k and
covariance alpha(t)^2 Sigma_k + sigma(t)^2 I. Run::

    python examples/gmm_marginals.py [--out marginals.png]   # the figure: p_t at the same times
"""

import argparse

import torch

import sdesolve_gen as sg


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Exact marginals of a Gaussian mixture under the VP SDE')
    parser.add_argument("--smoke", action="store_true", help="same output (this example is already fast)")
    parser.add_argument("--out", default=None, help="write a PNG of the exact densities p_t (needs matplotlib)")
    args = parser.parse_args(argv)
    times = [0.0, 0.1, 0.25, 0.5, 1.0]

    sde = sg.VPSDE(beta_min=0.1, beta_max=20.0)
    data = sg.analytic.GaussianMixture(
        means=torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
        covs=torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.3]])]),
        weights=torch.tensor([0.4, 0.6]),
    )
    print(f"{sde}\n")
    print(f"{'t':>6} {'alpha':>8} {'sigma':>8}   component means (alpha mu_k)        overall var (x, y)")
    for t in times:
        p_t = data.marginal(t, sde)
        means = "  ".join(f"({m[0]:+.3f}, {m[1]:+.3f})" for m in p_t.means.tolist())
        var = torch.diagonal(p_t.cov).tolist()
        print(f"{t:6.2f} {float(sde.alpha(t)):8.4f} {float(sde.sigma(t)):8.4f}   {means}   ({var[0]:.3f}, {var[1]:.3f})")
    x = data.sample(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print("\nexact log p_t at t=0.5 of five data samples:", [round(v, 3) for v in data.log_prob_t(x, 0.5, sde).tolist()])
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sdesolve_gen.plotting import scatter_vs_density

        fig, axes = plt.subplots(1, len(times), figsize=(3.2 * len(times), 3.4))
        for ax, t in zip(axes, times):
            p_t = data.marginal(t, sde)
            xs = p_t.sample(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            scatter_vs_density(ax, xs, p_t, extent=(-4, 4, -4, 4), n_grid=80, s=1.5,
                               title=f"p_t at t = {t:g}: 1000 exact samples")
        fig.suptitle("The exact marginal p_t (contours) flows from the data (t=0) to N(0, I) (t=1)")
        fig.tight_layout()
        fig.savefig(args.out, dpi=90)
        plt.close(fig)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

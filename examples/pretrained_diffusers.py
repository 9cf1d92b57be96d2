"""
Sampling a (pretrained) diffusers UNet
======================================

Sample a diffusers UNet with three of our samplers and report bits/dim with our likelihood.

By default the model is a tiny, randomly initialised ``diffusers.UNet2DModel`` built from a config
(1x8x8 images, DDPM's linear schedule): nothing is downloaded, and with random weights the
samples are noise and the bits/dim are meaningless (the script says so). With ``--model DIR`` it
loads a local ``from_pretrained`` directory instead: either a pipeline directory (``DIR/unet``
and ``DIR/scheduler``) or a bare UNet directory (then DDPM's linear schedule and
``--prediction-type`` are assumed). The schedule becomes a
:class:`sdesolve_gen.DiscreteVPSDE`, the UNet a :class:`sdesolve_gen.TimestepModelScore`. Run::

    python examples/pretrained_diffusers.py                  # tiny random UNet, 20 steps
    python examples/pretrained_diffusers.py --model DIR      # a local pretrained model
    python examples/pretrained_diffusers.py --smoke          # a few seconds
"""

import argparse
import math
import os
import time

import torch

import sdesolve_gen as sg
from sdesolve_gen.pretrained import sde_from_scheduler_config

SAMPLERS = ("dpm_solver_pp_2m", "unipc_bh2_2", "dpm_solver1")


def tiny_unet():
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def load(model_dir, prediction_type):
    import diffusers

    if model_dir is None:
        return tiny_unet(), sg.DiscreteVPSDE.from_betas("linear"), "epsilon", True
    sub = "unet" if os.path.isdir(os.path.join(model_dir, "unet")) else None
    unet = diffusers.UNet2DModel.from_pretrained(model_dir, subfolder=sub, local_files_only=True).eval()
    if os.path.isdir(os.path.join(model_dir, "scheduler")):
        cfg = diffusers.DDPMScheduler.load_config(model_dir, subfolder="scheduler", local_files_only=True)
        sde, pred = sde_from_scheduler_config(cfg)
    else:
        sde, pred = sg.DiscreteVPSDE.from_betas("linear"), prediction_type
    return unet, sde, pred, False


def save_grid(rows, path):
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), rows[0][1].shape[0]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols, 1.3 * n_rows), squeeze=False)
    for r, (name, x) in enumerate(rows):
        img = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(img[c].squeeze(-1) if img.shape[-1] == 1 else img[c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Sample a diffusers UNet with three of our samplers; bits/dim")
    parser.add_argument("--smoke", action="store_true", help="tiny run (a few seconds)")
    parser.add_argument("--model", default=None, help="local diffusers from_pretrained directory")
    parser.add_argument("--prediction-type", default="epsilon", help="for a bare UNet directory")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=8, help="images per sampler")
    parser.add_argument("--n-bpd", type=int, default=2, help="images whose bits/dim are computed")
    parser.add_argument("--out", default="pretrained_samples.png")
    args = parser.parse_args(argv)
    steps, n, n_bpd = (5, 4, 1) if args.smoke else (args.steps, args.n, args.n_bpd)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers is not installed (pip install diffusers): nothing to do")
        return

    unet, sde, pred, random_weights = load(args.model, args.prediction_type)
    score = sg.TimestepModelScore(unet, sde, pred)
    c, h = unet.config.in_channels, unet.config.sample_size
    shape = (n, c, h, h)
    print(f"{sde}, prediction_type={pred}, images {c}x{h}x{h}")
    if random_weights:
        print("NOTE: the UNet has random weights: the samples are noise and the bits/dim below are meaningless;"
              " they only show the pipeline running. Pass --model DIR for a real model.")
    x_T = sde.prior_sample(shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in SAMPLERS:
        spec = sg.SAMPLERS[name]
        t0 = time.perf_counter()
        sol = spec(sde, score, x_T, spec.timesteps(sde, steps))
        dt = time.perf_counter() - t0
        rows.append((name, sol.x))
        print(f"{name:<18} {steps} steps, NFE {sol.nfe}, {dt:.2f} s, sample mean {float(sol.x.mean()):+.3f} std {float(sol.x.std()):.3f}")
    save_grid(rows, args.out)
    print(f"wrote {args.out} ({len(rows)} rows x {n} images)")

    # bits/dim of a few 8-bit images (our first sampler's output, clamped to [-1, 1] and quantised),
    # by the probability-flow ODE with a Hutchinson divergence
    x8 = torch.floor((rows[0][1][:n_bpd].clamp(-1, 1) + 1) / 2 * 255.999).long()
    x = sg.dequantize(x8, generator=torch.Generator().manual_seed(1), data_range=(-1, 1), dtype=torch.float32)
    t0 = time.perf_counter()
    rtol = 1e-2 if args.smoke else 1e-4
    res = sg.log_likelihood(sde, score, x, divergence="hutchinson", n_probes=1, rtol=rtol, atol=rtol,
                            generator=torch.Generator().manual_seed(2), data_range=(-1, 1))
    bpd = res.bits_per_dim
    print(f"bits/dim of {n_bpd} image(s): {', '.join(f'{float(b):.3f}' for b in bpd)}  "
          f"(PF-ODE dopri5 rtol={rtol}, Hutchinson K=1, {res.nfe} NFE, {time.perf_counter() - t0:.1f} s)"
          + ("  [random weights: meaningless]" if random_weights else ""))
    assert all(math.isfinite(float(b)) for b in bpd)


if __name__ == "__main__":
    main()

"""Agreement and wall time of our samplers vs diffusers' schedulers (and k-diffusion) on a tiny
random diffusers UNet2DModel, the setting of tests/test_pretrained.py (:mod:`benchmarks.diffusers_pairs`).

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.pretrained_agreement [--batch 16] [--repeats 5]``.
Prints a markdown table: for each pair, max abs and relative (Frobenius) difference of the final
samples (float32 state in both), and the median wall time per sample of each loop on the same
model, alternating the two loops in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sdesolve_gen as sg
from sdesolve_gen import samplers as S
from sdesolve_gen.discrete import DiscreteVPSDE
from sdesolve_gen.pretrained import TimestepModelScore

from . import diffusers_pairs as T
from .peers import KDenoiser, load_k_sampling


def _time(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rows = []
    g = torch.Generator().manual_seed(1)
    for ours, cls_name, cfg, _ in T.PAIRS + [("ancestral", "DDPMScheduler", {"clip_sample": False}, None)]:
        sde, sch, unet, _, score = T.setup(cls_name, **cfg)
        x_T = torch.randn(args.batch, 1, 8, 8, generator=g)
        if ours == "ancestral":
            ts = sde.time_of_timestep(sch.timesteps.double())
            ref, td = _time(lambda: T.diffusers_loop(sch, unet, x_T.clone(), generator=torch.Generator().manual_seed(7)), args.repeats)
            x, to = _time(lambda: S.ancestral(sde, score, x_T, ts, generator=torch.Generator().manual_seed(7), denoise=True).x, args.repeats)
        else:
            kw = {"eta": 0.0} if cls_name == "DDIMScheduler" else {}
            ts = T.our_grid(sde, sch, cls_name)
            ref, td = _time(lambda: T.diffusers_loop(sch, unet, x_T.clone(), **kw), args.repeats)
            x, to = _time(lambda: S.SAMPLERS[ours](sde, score, x_T, ts).x, args.repeats)
        name = f"{cls_name}({', '.join(f'{k}={v}' for k, v in cfg.items() if k in ('timestep_spacing', 'solver_order', 'solver_type'))})"
        rows.append((ours, "diffusers " + name, float((x - ref).abs().max()), T.rel(x, ref), td, to))
    ks = load_k_sampling()
    if ks is not None:
        sde = DiscreteVPSDE.from_betas("linear")
        unet = T.tiny_unet()
        score = TimestepModelScore(unet, sde)
        ts = sg.timesteps(sde, 10, kind="logsnr")
        x_T = torch.randn(args.batch, 1, 8, 8, generator=g)
        sig = (sde.sigma(ts) / sde.alpha(ts)).float()
        for k_name, ours in (("sample_euler", "dpm_solver1"), ("sample_dpmpp_2m", "dpm_solver_pp_2m")):
            den = KDenoiser(sde, lambda x, t: score(x, t))

            def run_k():
                with torch.no_grad():
                    return getattr(ks, k_name)(den, x_T / float(sde.alpha(ts[0])), sig, disable=True) * float(sde.alpha(ts[-1]))

            ref, td = _time(run_k, args.repeats)
            x, to = _time(lambda: S.SAMPLERS[ours](sde, score, x_T, ts).x, args.repeats)
            rows.append((ours, "k-diffusion " + k_name, float((x - ref).abs().max()), T.rel(x, ref), td, to))
    print(f"batch {args.batch}, 1x8x8, 10 steps, float32, median of {args.repeats}; torch threads {torch.get_num_threads()}\n")
    print("| ours | peer | max abs diff | rel diff | peer ms/sample | ours ms/sample | ours/peer |")
    print("|---|---|---|---|---|---|---|")
    for ours, peer, mad, rel, td, to in rows:
        print(f"| {ours} | {peer} | {mad:.2e} | {rel:.2e} | {1e3 * td / args.batch:.3f} | {1e3 * to / args.batch:.3f} | {to / td:.2f} |")


if __name__ == "__main__":
    main()

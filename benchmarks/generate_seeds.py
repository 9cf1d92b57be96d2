"""Cost of per-sample seeds and throughput of sharded generation (standalone, not a report section).

    OMP_NUM_THREADS=1 python -m benchmarks.generate_seeds seeds        # SeedStreams vs one generator
    OMP_NUM_THREADS=1 python -m benchmarks.generate_seeds shard N      # generate() of N seeds on this process
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 --standalone -m benchmarks.generate_seeds shard N

``seeds``: Euler-Maruyama, 100 steps, VP SDE, the exact score of a standard normal
(``-x``, so the sampler's own cost dominates) and an MLP score (hidden 128, depth 3), batch
256/1024, data dimension 2/64; best of 3 of the whole solve including the prior draw.
``shard``: :func:`sdesolve_gen.generate.generate` of seeds ``0..N-1``, EM 100 steps, MLP score
(d=2), batch 256, into a fresh temporary directory; prints each rank's samples/s and the
wall time from the first barrier to the last.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch

import sdesolve_gen as sg
from sdesolve_gen.nets import MLPScoreNet
from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.seeds import SeedStreams


def _mlp(d: int, sde):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return sg.ScoreModel(MLPScoreNet(d, hidden=128, depth=3), sde, "eps").eval()


def seeds_cost() -> None:
    sde = sg.VPSDE()
    spec = SAMPLERS["euler_maruyama"]
    ts = spec.timesteps(sde, 100)
    rows = []
    for score_name in ("exact", "mlp"):
        for d in (2, 64):
            score = (lambda x, t: -x) if score_name == "exact" else _mlp(d, sde)
            for B in (256, 1024):
                res = {}
                for kind in ("batch", "per_sample"):
                    best = float("inf")
                    for _ in range(3):
                        t0 = time.perf_counter()
                        g = torch.Generator().manual_seed(0) if kind == "batch" else SeedStreams(range(B))
                        x_T = sde.prior_sample((B, d), generator=g)
                        spec(sde, score, x_T, ts, generator=g)
                        best = min(best, time.perf_counter() - t0)
                    res[kind] = best
                row = dict(score=score_name, d=d, B=B, batch_s=round(res["batch"], 4),
                           per_sample_s=round(res["per_sample"], 4), ratio=round(res["per_sample"] / res["batch"], 2),
                           us_per_sample_step=round((res["per_sample"] - res["batch"]) / (B * 101) * 1e6, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)


def shard(n: int) -> None:
    import torch.distributed as dist

    from sdesolve_gen.generate import generate

    on = "WORLD_SIZE" in __import__("os").environ
    if on:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    sde = sg.VPSDE()
    model = _mlp(2, sde)
    rank = dist.get_rank() if on else 0
    out = tempfile.mkdtemp(prefix="gen-bench-") if rank == 0 else None
    if on:
        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
        dist.barrier()
    t0 = time.perf_counter()
    res = generate(sde, model, "euler_maruyama", range(n), out, batch_size=256, shape=(2,), steps=100, progress=False)
    wall = time.perf_counter() - t0
    print(json.dumps(dict(rank=res.rank, world=res.world_size, samples=res.n_samples, rank_s=round(res.wall_time, 3),
                          samples_per_s=round(res.samples_per_s, 1), wall_s=round(wall, 3),
                          total_samples_per_s=round(n / wall, 1))), flush=True)
    if on:
        dist.destroy_process_group()
    if rank == 0:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1] == "seeds":
        seeds_cost()
    else:
        shard(int(sys.argv[2]))

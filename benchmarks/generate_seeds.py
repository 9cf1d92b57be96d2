"""Cost of per-sample seeds and throughput of sharded generation (section ``generate_seeds``).

    python -m benchmarks --only generate_seeds [--quick]
    OMP_NUM_THREADS=1 python -m benchmarks.generate_seeds seeds        # the cost table alone
    OMP_NUM_THREADS=1 python -m benchmarks.generate_seeds shard N      # generate() of N seeds, this process
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 --standalone -m benchmarks.generate_seeds shard N

Cost: Euler-Maruyama (VP SDE) including the prior draw, the exact score of a standard normal
(``-x``: the sampler's own cost dominates) and an MLP score (hidden 128, depth 3), batch
256/1024, data dimension 2/64; three noise sources in one run, interleaved, median of
``repeats`` (at least 3): one ``torch.Generator`` for the batch ("batch"),
``SeedStreams(method="generator")`` (one generator per sample: "per-sample generator"),
``SeedStreams(method="philox")`` ("per-sample philox"). Ratios are to "batch" in the same row.

Throughput: :func:`sdesolve_gen.generate.generate` of seeds ``0..N-1`` (EM, MLP score, d=2,
batch 256, philox noise) into a fresh temporary directory, by 1 process and by 2 gloo ranks
(torchrun, ``OMP_NUM_THREADS=1`` each), in back-to-back pairs; per-rank samples/s of the 2-rank
run over the 1-process samples/s. On a 2-core machine shared with other jobs the ideal is 1.0
(each rank gets a core) and anything the other jobs take shows up as < 1.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import torch

import sdesolve_gen as sg
from sdesolve_gen.nets import MLPScoreNet
from sdesolve_gen.samplers import SAMPLERS
from sdesolve_gen.seeds import SeedStreams

KINDS = ("batch", "per-sample generator", "per-sample philox")


def _mlp(d: int, sde):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return sg.ScoreModel(MLPScoreNet(d, hidden=128, depth=3), sde, "eps").eval()


def _noise(kind: str, B: int):
    if kind == "batch":
        return torch.Generator().manual_seed(0)
    return SeedStreams(range(B), method="generator" if kind == "per-sample generator" else "philox")


def cost_rows(*, quick: bool, repeats: int, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """The cost table (see the module doc)."""
    sde = sg.VPSDE()
    spec = SAMPLERS["euler_maruyama"]
    steps = 20 if quick else 100
    ts = spec.timesteps(sde, steps)
    reps = max(3, repeats)
    rows = []
    for score_name in ("exact", "mlp"):
        for d in ((2,) if quick else (2, 64)):
            score = (lambda x, t: -x) if score_name == "exact" else _mlp(d, sde)
            for B in ((256,) if quick else (256, 1024)):
                times: Dict[str, List[float]] = {k: [] for k in KINDS}
                for _ in range(reps):  # interleaved: the load of the machine hits all three alike
                    for kind in KINDS:
                        t0 = time.perf_counter()
                        g = _noise(kind, B)
                        x_T = sde.prior_sample((B, d), generator=g)
                        spec(sde, score, x_T, ts, generator=g)
                        times[kind].append(time.perf_counter() - t0)
                med = {k: statistics.median(v) for k, v in times.items()}
                row: Dict[str, Any] = dict(score=score_name, d=d, B=B, steps=steps)
                for k in KINDS:
                    row[f"{k} s"] = med[k]
                row["generator / batch"] = med["per-sample generator"] / med["batch"]
                row["philox / batch"] = med["per-sample philox"] / med["batch"]
                row["generator / philox"] = med["per-sample generator"] / med["per-sample philox"]
                rows.append(row)
                log(f"  generate_seeds cost: {json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})}")
    return rows


def shard(n: int) -> Dict[str, Any]:
    """:func:`~sdesolve_gen.generate.generate` of seeds ``0..n-1`` on this process (or this torchrun rank)."""
    import torch.distributed as dist

    from sdesolve_gen.generate import generate

    on = "WORLD_SIZE" in os.environ
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
    row = dict(rank=res.rank, world=res.world_size, samples=res.n_samples, rank_s=res.wall_time,
               samples_per_s=res.samples_per_s, wall_s=wall, total_samples_per_s=n / wall)
    print(json.dumps(row), flush=True)
    if on:
        dist.destroy_process_group()
    if rank == 0:
        import shutil

        shutil.rmtree(str(out), ignore_errors=True)
    return row


def _shard_subprocess(n: int, ranks: int) -> List[Dict[str, Any]]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "benchmarks.generate_seeds", "shard", str(n)]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--standalone",
               "-m", "benchmarks.generate_seeds", "shard", str(n)]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def shard_rows(*, quick: bool, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Back-to-back pairs (2 ranks, then 1 process) of :func:`shard`; per-rank throughput ratio."""
    n = 512 if quick else 2048
    rows = []
    for pair in range(1 if quick else 3):
        two = _shard_subprocess(n, 2)
        one = _shard_subprocess(n, 1)[0]
        per_rank = statistics.mean(r["samples_per_s"] for r in two)
        wall_two = max(r["wall_s"] for r in two)
        rows.append(dict(pair=pair, seeds=n, one_process_samples_per_s=one["samples_per_s"],
                         two_ranks_per_rank_samples_per_s=per_rank, per_rank_ratio=per_rank / one["samples_per_s"],
                         wall_one_s=one["wall_s"], wall_two_s=wall_two, wall_speedup=one["wall_s"] / wall_two))
        log(f"  generate_seeds shard pair {pair}: per-rank ratio {rows[-1]['per_rank_ratio']:.3f}, "
            f"wall speedup {rows[-1]['wall_speedup']:.3f}")
    return rows


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "n/a"


def run(*, quick: bool, repeats: int, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Both tables; see the module doc."""
    load_before = _load()
    rows = [dict(table="cost", **r) for r in cost_rows(quick=quick, repeats=repeats, log=log)]
    rows += [dict(table="shard", **r) for r in shard_rows(quick=quick, log=log)]
    load = f"load average {load_before} before, {_load()} after (1/5/15 min)"
    return {"rows": rows, "skipped": [], "load": load, "markdown": markdown(rows, load)}


def markdown(rows: List[Dict[str, Any]], load: str = "") -> str:
    from .report import table

    cost = [r for r in rows if r["table"] == "cost"]
    sh = [r for r in rows if r["table"] == "shard"]
    lines = ["\n## Per-sample seeds and sharded generation\n",
             "Cost of per-sample noise: Euler-Maruyama incl. the prior draw, median seconds of interleaved runs; "
             "ratios to one batch generator in the same row. " + load + "\n",
             table(cost, ["score", "d", "B", "steps", "batch s", "per-sample generator s", "per-sample philox s",
                          "generator / batch", "philox / batch", "generator / philox"]),
             "Sharded `generate` (EM 100 steps, MLP d=2, batch 256, philox): 2 gloo ranks vs 1 process, back to back; "
             "per_rank_ratio = per-rank samples/s of the 2-rank run / samples/s of 1 process (ideal 1.0 on 2 free "
             "cores; other jobs on the machine push it below 1).\n",
             table(sh, ["pair", "seeds", "one_process_samples_per_s", "two_ranks_per_rank_samples_per_s",
                        "per_rank_ratio", "wall_one_s", "wall_two_s", "wall_speedup"])]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "shard":
        shard(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "seeds":
        cost_rows(quick="--quick" in sys.argv, repeats=3)
    else:
        res = run(quick="--quick" in sys.argv, repeats=3)
        print(res["markdown"])

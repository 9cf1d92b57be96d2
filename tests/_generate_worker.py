"""Worker for the sharded-generation test: `python -m torch.distributed.run --nproc_per_node=2 --standalone _generate_worker.py OUT`.

Both ranks generate seeds 0-40 (batches of 7) into OUT/two with the tiny model of
tests/test_generate.py, then evaluate the directory (score, labels, bits/dim: EVAL_KW); each
rank saves what it did and the gathered summary to OUT/rank{r}.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import EVAL_KW, SEEDS, eval_summary, tiny_model  # noqa: E402

from sdesolve_gen.generate import evaluate, generate  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    sde, model = tiny_model()
    res = generate(sde, model, "euler_maruyama", SEEDS, Path(out) / "two", batch_size=7, shape=(2,), steps=30,
                   progress=False)
    ev = evaluate(Path(out) / "two", **EVAL_KW(sde, model))
    rank = dist.get_rank()
    torch.save({"batches": res.batches, "written": res.written, "world": res.world_size,
                "eval": eval_summary(ev), "lik_world": ev.likelihood.world_size}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

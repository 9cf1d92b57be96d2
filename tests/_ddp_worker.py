"""Worker for the DDP test: `python -m torch.distributed.run --nproc_per_node=2 --standalone _ddp_worker.py OUT`.

Each rank trains the same tiny model for 6 steps on its own shard with gloo, then saves its final
parameters (and the initial ones) to OUT/rank{r}.pt; rank 0's trainer also writes a checkpoint.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import sdesolve_gen as sg
from sdesolve_gen.nets import MLPScoreNet
from sdesolve_gen.train import Trainer


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # identical initial weights on every rank
    torch.set_num_threads(1)
    sde = sg.VPSDE()
    model = sg.ScoreModel(MLPScoreNet(2, hidden=32, depth=2), sde, "eps")
    init = [p.detach().clone() for p in model.parameters()]
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    tr = Trainer(model, sde, data, batch_size=16, lr=1e-2, seed=0, checkpoint_dir=Path(out) / "ckpt", log_every=2)
    losses = tr.train(6)
    rank = dist.get_rank()
    torch.save({"init": init, "final": [p.detach().clone() for p in model.parameters()], "losses": losses,
                "shard": tr.shard.tolist()}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

"""torchrun worker for ``test_training_d.py``: is a DDP run resumed from its checkpoint bit-exact?

Each rank trains 10 steps straight (run ``a``), and separately 5 steps (run ``b``, checkpoint on
disk), then a NEW trainer resumes ``b`` from the file and trains to step 10. Each rank writes
``rank{r}.pt`` with its final weights of both runs.
"""

import sys

import torch
import torch.distributed as dist

import sdesolve_gen as sg
from sdesolve_gen.nets import MLPScoreNet
from sdesolve_gen.train import Trainer


def make(ckpt, data):
    torch.manual_seed(1)  # identical initial weights on every rank and in every run
    sde = sg.VPSDE()
    model = sg.ScoreModel(MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), sde, "eps")
    return Trainer(model, sde, data, batch_size=16, checkpoint_dir=ckpt, log_every=0)


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    straight = make(f"{out}/a", data)
    straight.train(10)
    half = make(f"{out}/b", data)
    half.train(5)
    del half  # simulate a kill: only the checkpoint file survives
    dist.barrier()
    resumed = make(f"{out}/b", data)
    assert resumed.resume()
    resumed.train(10)
    torch.save({
        "straight": [p.detach().clone() for p in straight.model.parameters()],
        "resumed": [p.detach().clone() for p in resumed.model.parameters()],
    }, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

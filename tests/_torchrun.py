"""Launch a test worker under torchrun with 2 gloo ranks and load what each rank saved."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import torch

HERE = Path(__file__).parent


def run_two_ranks(worker: str, out: Path, timeout: float = 240) -> Tuple[dict, dict]:
    """Run ``tests/<worker> <out>`` on 2 CPU ranks; return the dicts saved as out/rank{0,1}.pt."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(HERE / worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in (0, 1))  # type: ignore[return-value]

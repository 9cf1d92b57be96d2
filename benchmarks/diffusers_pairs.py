"""Our samplers next to diffusers' schedulers on a tiny random diffusers ``UNet2DModel``.

One owner of the cross-check setting shared by ``tests/test_pretrained.py`` (agreement to float32
round-off) and :mod:`benchmarks.pretrained_agreement` (agreement and wall time): the tiny UNet's
config, diffusers' sampling loop, the scheduler/SDE pairs and the map from a scheduler's
timesteps to our times. Needs the ``diffusers`` extra.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from sdesolve_gen.discrete import DiscreteVPSDE
from sdesolve_gen.pretrained import TimestepModelScore

F64 = torch.float64

#: ``(ours, diffusers scheduler class, its config, another of ours for a control)``: each pair is
#: the same method on the same grid.
PAIRS: List[Tuple[str, str, Dict[str, Any], str]] = [
    ("dpm_solver1", "DDIMScheduler", {"timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False}, "dpm_solver_pp_2m"),
    ("dpm_solver1", "DDIMScheduler", {"timestep_spacing": "leading", "set_alpha_to_one": False, "clip_sample": False}, "dpm_solver_pp_2m"),
    ("dpm_solver_pp_2m", "DPMSolverMultistepScheduler",
     {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": False, "final_sigmas_type": "sigma_min"}, "dpm_solver1"),
    ("unipc_bh2_2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2", "final_sigmas_type": "sigma_min"}, "unipc_bh1_2"),
    ("unipc_bh1_3", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "unipc_bh2_3"),
]


def tiny_unet(seed: int = 0, **extra: Any) -> Any:
    """A random ``UNet2DModel`` on ``(B, 1, 8, 8)`` images (weights from ``torch.manual_seed(seed)``)."""
    import diffusers

    torch.manual_seed(seed)
    cfg: Dict[str, Any] = dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    cfg.update(extra)
    return diffusers.UNet2DModel(**cfg).eval()


def diffusers_loop(sch: Any, unet: Any, x: torch.Tensor, generator: Optional[torch.Generator] = None, **step_kw: Any) -> torch.Tensor:
    """diffusers' own loop: ``x <- sch.step(unet(x, k), k, x)`` over ``sch.timesteps`` (state reset first)."""
    sch.set_timesteps(len(sch.timesteps))  # multistep schedulers keep state: reset it
    with torch.no_grad():
        for k in sch.timesteps:
            eps = unet(x, k).sample
            if generator is not None:
                step_kw = {**step_kw, "generator": generator}
            x = sch.step(eps, k, x, **step_kw).prev_sample
    return x


def setup(cls_name: str, n: int = 10, **cfg: Any) -> Tuple[DiscreteVPSDE, Any, Any, torch.Tensor, TimestepModelScore]:
    """``(sde, scheduler with n steps, unet, x_T of shape (4, 1, 8, 8), our score of the unet)`` on the linear DDPM schedule."""
    import diffusers

    sde = DiscreteVPSDE.from_betas("linear")
    sch = getattr(diffusers, cls_name)(beta_schedule="linear", **cfg)
    sch.set_timesteps(n)
    unet = tiny_unet()
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return sde, sch, unet, x_T, TimestepModelScore(unet, sde, "epsilon", num_train_timesteps=sch.config.num_train_timesteps)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius difference ``||a - b|| / ||b||`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def our_grid(sde: DiscreteVPSDE, sch: Any, cls_name: str) -> torch.Tensor:
    """Our times for the scheduler's timesteps; every scheduler here ends at training timestep 0
    (DDIM: its final alpha_bar is alphas_cumprod[0]; multistep: ``final_sigmas_type="sigma_min"``).
    Leading DDIM's timesteps already end at 0 and its last step (0 -> alphas_cumprod[0]) is the identity."""
    k = sch.timesteps.double()
    if not (cls_name == "DDIMScheduler" and int(k[-1]) == 0):
        k = torch.cat([k, torch.zeros(1, dtype=F64)])
    return sde.time_of_timestep(k)

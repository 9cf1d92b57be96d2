"""Measure the reverse-EM moment bias used as the budget of test_integrate's moment test.

    python tests/_measure_em_bias.py      # 20 seeded chunks of 10k samples, 500 EM steps, VP
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from _sampler_configs import target  # noqa: E402

import sdesolve_gen as sg  # noqa: E402
from sdesolve_gen.integrate import sdeint, timesteps  # noqa: E402

torch.set_num_threads(1)
sde, data = sg.VPSDE(), target()
ts = timesteps(sde, 500)
xs = []
for c in range(20):
    x_T = data.prior(sde).sample(10000, generator=torch.Generator().manual_seed(100 + c), dtype=torch.float64)
    rsde = sg.ReverseSDE(sde, data.score_fn(sde))
    xs.append(sdeint(rsde, x_T, ts[[0, -1]], dt=float(ts[0] - ts[-1]) / 500, seed=200 + c)[-1])
x = torch.cat(xs)
var = torch.diagonal(data.cov)
print("N", x.shape[0], "mean bias", (x.mean(0) - data.mean).tolist(), "+-", torch.sqrt(var / x.shape[0]).tolist())
print("var bias", (x.var(0) - var).tolist(), "+-", (var * math.sqrt(2 / x.shape[0])).tolist())

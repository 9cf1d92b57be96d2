"""Measure each sampler config's bias with 200k samples (python tests/_measure_sampler_bias.py [names])."""
import json
import math
import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
torch.set_num_threads(1)
from _sampler_configs import CONFIGS, run, stats, target  # noqa: E402 (after the sys.path insert)

data = target()
out = {}
for name in (sys.argv[1:] or CONFIGS):
    sde = CONFIGS[name][0]
    xs = [run(name, data, 20000, 1000 + 17 * c).x for c in range(10)]
    x = torch.cat(xs)
    m, v, o = stats(data, sde, x)
    ref = data.marginal(sde.eps, sde)
    var = torch.diagonal(ref.cov)
    N = x.shape[0]
    out[name] = dict(mean=m.tolist(), mean_se=torch.sqrt(var / N).tolist(), var=v.tolist(), var_se=(var * math.sqrt(2 / N)).tolist(), occ=o.tolist())
    print(name, json.dumps(out[name]), flush=True)

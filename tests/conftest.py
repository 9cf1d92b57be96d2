"""Shared test configuration: deterministic, single-threaded torch, hypothesis profile."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("SG_TEST_THREADS", "1")))

settings.register_profile(
    "sdesolve",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("sdesolve")

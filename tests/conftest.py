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


def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu",
        help="device for the device-sensitive tests (e.g. cuda); they are skipped if it is unavailable",
    )


import pytest  # noqa: E402


@pytest.fixture
def device(request):
    """The ``--device`` under test as a ``torch.device`` (skips if that device is not available)."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        pytest.skip("--device mps requested but MPS is not available")
    return dev


@pytest.fixture(autouse=True)
def _fresh_global_rng():
    """Every test starts from the same global torch RNG state (``torch.manual_seed(0)``, all
    devices), so a test that draws from the global generator (e.g. an ``nn.Module``'s initial
    weights) sees the same numbers whichever tests ran before it in the same process (xdist
    spreads tests over workers in a run-dependent order)."""
    torch.manual_seed(0)
    yield

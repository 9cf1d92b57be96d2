"""Every script in examples/ runs in its --smoke mode (CI runs this)."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_smoke(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"


def test_readme_quickstart_runs_as_written():
    """The README's quickstart block is executed verbatim; its three printed means agree.

    Budget: 2000 samples of a mixture with per-coordinate std <= 2.1, so the MC standard error
    of a mean is <= 0.05; we allow 0.25 (5 SE) between each sampler and the true mean. The
    standard prior adds a negligible bias for VP (alpha(T)^2 ~ 4e-5).
    """
    import re

    import torch

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(compile(code.replace("print(", "_ = ("), "README", "exec"), scope)
    for est in (scope["sol"].x.mean(0), scope["x0"].mean(0)):
        assert torch.allclose(est, scope["data"].mean, atol=0.25)

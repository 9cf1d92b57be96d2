"""Audit value tests for sdesolve_gen.seeds' "generator" method and the randn dispatcher.

Oracle: EDM's "stacked generators", written here: row i of draw t is the t-th
torch.randn(shape[1:]) of torch.Generator().manual_seed(seed_i).
"""

from __future__ import annotations

import pytest
import torch

from sdesolve_gen.seeds import SeedStreams, randn

F64 = torch.float64


def test_generator_method_rows_are_per_seed_torch_streams_in_order():
    """Bug class: generators seeded with the wrong seed (index, or all the first), rows stacked in
    another order, the stream restarted each draw, draws not counted, dtype ignored."""
    seeds = [5, 123, 5, 2**40 + 7]
    st = SeedStreams(seeds, method="generator")
    refs = [torch.Generator().manual_seed(s) for s in seeds]
    for t, (shape, dt) in enumerate([((4, 3), F64), ((4, 2, 2), torch.float32), ((4, 3), F64)]):
        got = st.randn(shape, dtype=dt)
        want = torch.stack([torch.randn(shape[1:], generator=g, dtype=dt) for g in refs])
        assert got.dtype == dt and torch.equal(got, want), t
        assert st.draws == t + 1
    assert torch.equal(st.generators[0].get_state(), st.generators[2].get_state())
    with pytest.raises(ValueError, match="number of seeds"):
        st.randn((3, 3))


def test_randn_dispatches_to_seed_streams_or_torch_generator():
    """Bug class: the dispatcher ignoring the generator (fresh global draws), or routing a torch
    Generator to SeedStreams. Oracle: the same seeds drawn directly."""
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    torch.testing.assert_close(randn((2, 3), g1, dtype=F64), torch.randn((2, 3), generator=g2, dtype=F64), rtol=0, atol=0)
    a, b = SeedStreams([1, 2]), SeedStreams([1, 2])
    torch.testing.assert_close(randn((2, 3), a, dtype=F64), b.randn((2, 3), dtype=F64), rtol=0, atol=0)
    assert a.draws == 1

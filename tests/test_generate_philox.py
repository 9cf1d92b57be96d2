"""Philox-4x32-10 (sdesolve_gen.philox) and the per-sample normals of SeedStreams(method="philox").

Oracles: the Random123 known-answer vectors of philox4x32 with 10 rounds; a pure-Python
Philox of any word width written here from the published round function, itself checked
against numpy's ``np.random.Philox`` (Philox-4x64-10, public API) and the Random123 vectors.
"""

import math

import numpy as np
import pytest
import torch

from sdesolve_gen.philox import MASK32, normal_from_words, philox4x32
from sdesolve_gen.seeds import SeedStreams

# Random123 kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> output (4 words)
KAT_4X32_10 = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox_reference(ctr, key, width, rounds=10):
    """Philox-4xW in Python integers (exact): the round function of Salmon et al. (2011)."""
    if width == 32:
        m, w = (0xD2511F53, 0xCD9E8D57), (0x9E3779B9, 0xBB67AE85)
    else:
        m, w = (0xD2E7470EE14C6C93, 0xCA5A826395121157), (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)
    mask = (1 << width) - 1
    c, k = list(ctr), list(key)
    for r in range(rounds):
        if r:
            k = [(k[0] + w[0]) & mask, (k[1] + w[1]) & mask]
        p0, p1 = m[0] * c[0], m[1] * c[2]
        c = [(p1 >> width) ^ c[1] ^ k[0], p1 & mask, (p0 >> width) ^ c[3] ^ k[1], p0 & mask]
    return c


def test_reference_matches_numpy_philox4x64_and_random123():
    """The Python reference against numpy's Philox-4x64-10 on 200 random counters/keys.

    numpy's bit generator increments its 256-bit counter before producing a block, so its
    first 4 outputs are Philox(counter + 1).
    """
    rng = np.random.default_rng(2024)
    for _ in range(200):
        ctr = [int(v) for v in rng.integers(0, 2**64, 4, dtype=np.uint64)]
        key = [int(v) for v in rng.integers(0, 2**64, 2, dtype=np.uint64)]
        bg = np.random.Philox(counter=np.array(ctr, dtype=np.uint64), key=np.array(key, dtype=np.uint64))
        nxt = (ctr[0] + (ctr[1] << 64) + (ctr[2] << 128) + (ctr[3] << 192) + 1) % 2**256
        assert [int(v) for v in bg.random_raw(4)] == philox_reference(
            [(nxt >> (64 * i)) & (2**64 - 1) for i in range(4)], key, 64)
    for ctr, key, want in KAT_4X32_10:
        assert tuple(philox_reference(ctr, key, 32)) == want


def test_philox4x32_known_answers(device):
    ctr = torch.tensor([c for c, _, _ in KAT_4X32_10], dtype=torch.int64, device=device).T
    key = torch.tensor([k for _, k, _ in KAT_4X32_10], dtype=torch.int64, device=device).T
    out = philox4x32(ctr, key).T.cpu().tolist()
    assert [tuple(o) for o in out] == [want for _, _, want in KAT_4X32_10]


@pytest.mark.parametrize("rounds", [1, 2, 7, 10])
def test_philox4x32_equals_reference_on_random_and_extreme_words(device, rounds):
    g = torch.Generator().manual_seed(rounds)
    ctr = torch.randint(0, 2**32, (4, 300), generator=g, dtype=torch.int64)
    key = torch.randint(0, 2**32, (2, 300), generator=g, dtype=torch.int64)
    ctr[:, :4] = torch.tensor([0, MASK32, 0xFFFF, 0x10000])  # words at the 16-bit split and the ends
    key[:, 4:8] = torch.tensor([0, MASK32, 0xFFFF, 0x10000])
    out = philox4x32(ctr.to(device), key.to(device), rounds).cpu()
    assert out.min() >= 0 and out.max() <= MASK32
    for i in range(300):
        assert out[:, i].tolist() == philox_reference(ctr[:, i].tolist(), key[:, i].tolist(), 32, rounds)


def test_philox4x32_refuses_bad_words():
    with pytest.raises(TypeError, match="int64"):
        philox4x32(torch.zeros(4, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        philox4x32(torch.zeros(3, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        philox4x32(torch.full((4, 3), 2**32, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------------------- SeedStreams(method="philox")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stream_is_the_documented_function_of_seed_draw_and_block(dtype):
    """Row i of draw t = normal_from_words(Philox_{(s mod 2^32, s div 2^32)}((j, t, 0, 0))), j = block.

    Draws 0..9 of one shape (computed ahead in chunks of 1, 2, 4, ...), then one of another
    shape (the chunk is dropped) and one more of the first: each equals the formula at its t.
    """
    seeds = [3, 2**32 + 3, 2**62 + 12345]
    st = SeedStreams(seeds)
    shapes = [(3, 5)] * 10 + [(3, 2, 2), (3, 5)]
    per_block = 2 if dtype == torch.float64 else 4
    for t, shape in enumerate(shapes):
        z = st.randn(shape, dtype=dtype).reshape(3, -1)
        n = z.shape[1]
        nb = -(-n // per_block)
        for i, s in enumerate(seeds):
            ctr = torch.zeros(4, nb, dtype=torch.int64)
            ctr[0] = torch.arange(nb)
            ctr[1] = t
            key = torch.tensor([[s & MASK32], [s >> 32]])
            assert torch.equal(z[i], normal_from_words(philox4x32(ctr, key), dtype)[:n]), (t, i)
        assert not torch.equal(z[0], z[1])  # the high key word matters
    assert st.draws == len(shapes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_row_of_a_seed_is_free_of_batch_size_and_position(device, dtype):
    seeds = list(range(40, 57))
    whole = SeedStreams(seeds, device=device)
    draws = [whole.randn((17, 3, 5), dtype=dtype) for _ in range(3)]
    for cut in ([1, 7, 9], [16, 1]):
        parts, start = [], 0
        for size in cut:
            st = SeedStreams(seeds[start:start + size], device=device)
            parts.append([st.randn((size, 3, 5), dtype=dtype) for _ in range(3)])
            start += size
        for t in range(3):
            assert torch.equal(draws[t], torch.cat([p[t] for p in parts]))
    rev = SeedStreams(seeds[::-1], device=device)
    assert torch.equal(rev.randn((17, 3, 5), dtype=dtype).flip(0), draws[0])
    assert draws[0].dtype == dtype and draws[0].device.type == torch.device(device).type
    assert not torch.equal(draws[0], draws[1])


def test_seed_streams_method_argument():
    with pytest.raises(ValueError, match="method"):
        SeedStreams([1], method="mt")
    assert SeedStreams([1]).method == "philox"


# ---------------------------------------------------------------------------------- statistics of the normals
#
# N draws of a standard normal: the sample mean has SE 1/sqrt(N), the mean of z^2 SE sqrt(2/N)
# (Var z^2 = 2), the mean of z^4 SE sqrt(96/N) (E z^8 - (E z^4)^2 = 105 - 9), a correlation SE
# 1/sqrt(N). Biases of the construction: the tail cut at |z| < 6.76 (float32) removes mass
# P(|z| > 6.76) ~ 1.4e-11 and shifts E z^4 by ~ 1e-8; float32 rounding ~ 1e-7 relative: both far
# below the 5.5 SE budget used (two-sided p ~ 4e-8 per check). KS: critical distance
# sqrt(ln(2/alpha)/2)/sqrt(N) at alpha = 1e-6.

K_SE = 5.5
ALPHA_KS = 1e-6


def _moment_failures(z):
    """Names of the failed checks of the ``(n_seeds, n)`` normals ``z`` (float64), per block position."""
    bad = []
    n = z.shape[1]
    per_block = 4 if n % 4 == 0 else 2
    for pos in range(per_block):
        x = z[:, pos::per_block].reshape(-1)
        N = x.numel()
        if abs(float(x.mean())) > K_SE / math.sqrt(N):
            bad.append(f"mean[{pos}]")
        if abs(float(x.pow(2).mean()) - 1) > K_SE * math.sqrt(2 / N):
            bad.append(f"var[{pos}]")
        if abs(float(x.pow(4).mean()) - 3) > K_SE * math.sqrt(96 / N):
            bad.append(f"m4[{pos}]")
    x = z.reshape(-1)
    N = x.numel()
    xs = x.sort().values
    cdf = torch.special.ndtr(xs)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / N - cdf, cdf - (i - 1) / N).max())
    if ks > math.sqrt(math.log(2 / ALPHA_KS) / 2) / math.sqrt(N):
        bad.append("ks")
    # per sample: every seed's own mean, Bonferroni over seeds (P(max |z| > c) <= 2 n_seeds (1 - Phi(c)))
    c = 5.5
    if float(z.mean(1).abs().max()) * math.sqrt(n) > c:
        bad.append("per-seed mean")
    # neighbours: adjacent seeds, adjacent elements
    for name, a, b in (("seed-seed", z[:-1], z[1:]), ("elem-elem", z[:, :-1], z[:, 1:])):
        r = float((a * b).mean())
        if abs(r) > K_SE / math.sqrt(a.numel()):
            bad.append(f"corr {name}")
    return bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_pass_moment_ks_and_correlation_checks_with_negative_controls(dtype):
    n_seeds, n = 256, 2048  # 524288 normals per draw
    st = SeedStreams(range(1000, 1000 + n_seeds))
    z = st.randn((n_seeds, n), dtype=dtype).double()
    z2 = st.randn((n_seeds, n), dtype=dtype).double()
    assert _moment_failures(z) == []
    assert _moment_failures(z2) == []
    r = float((z * z2).mean())  # draw t vs draw t+1 of the same seeds
    assert abs(r) < K_SE / math.sqrt(z.numel())
    assert float(z.abs().max()) < (6.77 if dtype == torch.float32 else 8.66)  # the documented tail cut
    # negative controls: the same checks reject
    assert "var[0]" in _moment_failures(z * 1.02)  # 2% scale error: var off by 0.04 = 28 SE
    assert "ks" in _moment_failures(z * 1.02)
    shifted = z.clone()
    shifted[17] += 0.15  # one seed off by 0.15 = 6.8 SE of its own mean
    assert "per-seed mean" in _moment_failures(shifted)
    assert "corr seed-seed" in _moment_failures(torch.cat([z[:1], z[:-1]]) * 0.5 + z * 0.75)
    stale = SeedStreams(range(1000, 1000 + n_seeds))
    stale.randn((n_seeds, n), dtype=dtype)
    stale.draws = 0  # a stream whose draw counter does not advance repeats its draw: correlation 1
    assert float((z * stale.randn((n_seeds, n), dtype=dtype).double()).mean()) > 0.99

r"""Philox-4x32-10, the counter-based generator of Salmon et al. (SC'11), in torch integer ops.

A counter-based generator is a keyed bijection of a 128-bit counter: the random words at
counter ``c`` under key ``k`` are :math:`\mathrm{Philox}_k(c)`, with no state to advance. So the
noise of sample ``i`` (key = its seed), draw ``t`` and element ``j`` can be computed for a whole
batch in one vectorised call, and it is the same whatever the batch, its order, the rank or
the device: every operation below is exact integer arithmetic.

One round maps the counter :math:`(c_0, c_1, c_2, c_3)` (32-bit words) under the round key
:math:`(k_0, k_1)` to

.. math::

    (\mathrm{hi}(M_1 c_2) \oplus c_1 \oplus k_0,\ \mathrm{lo}(M_1 c_2),\
     \mathrm{hi}(M_0 c_0) \oplus c_3 \oplus k_1,\ \mathrm{lo}(M_0 c_0)),

with :math:`\mathrm{hi}, \mathrm{lo}` the upper and lower 32 bits of the 64-bit product,
:math:`M_0 = \mathtt{0xD2511F53}`, :math:`M_1 = \mathtt{0xCD9E8D57}`; the key is bumped by the
Weyl constants :math:`(\mathtt{0x9E3779B9}, \mathtt{0xBB67AE85})` (mod :math:`2^{32}`) before
rounds 2..10. The words live in ``int64`` tensors; the 32x32 -> 64-bit product is formed from
the 16-bit halves of the constant, so no intermediate exceeds :math:`2^{49}` (no overflow):
:math:`aM = 2^{16} a M_h + a M_l` with :math:`a M_h, a M_l < 2^{48}`.

:func:`normal_from_words` maps the words to standard normals by Box-Muller.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["philox4x32", "round_keys", "normal_from_words", "MASK32"]

#: :math:`2^{32} - 1`.
MASK32 = 0xFFFFFFFF
_M = (0xD2511F53, 0xCD9E8D57)
_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32(counter: Tensor, key: Tensor, rounds: int = 10, *, check: bool = True) -> Tensor:
    r"""Philox-4x32 of ``rounds`` rounds (10: the standard, Random123's ``philox4x32_R(10, ...)``).

    Args:
        counter: ``(4, *batch)`` ``int64`` words in :math:`[0, 2^{32})`, word 0 first.
        key: ``(2, *batch')`` ``int64`` words in :math:`[0, 2^{32})`, broadcastable to ``batch``.
        rounds: number of rounds.
        check: check that the words lie in :math:`[0, 2^{32})` (a host synchronisation on an
            accelerator; callers that build the words themselves pass ``False``).

    Returns:
        ``(4, *batch)`` ``int64`` tensor of the output words (in :math:`[0, 2^{32})`).

    Raises:
        TypeError: if ``counter`` or ``key`` is not ``int64``; ValueError for a wrong leading
            dimension or (with ``check``) words outside :math:`[0, 2^{32})`.
    """
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError(f"counter and key must be int64 tensors, got {counter.dtype} and {key.dtype}")
    if counter.shape[0] != 4 or key.shape[0] != 2:
        raise ValueError(f"counter must have shape (4, ...) and key (2, ...), got {tuple(counter.shape)} and "
                         f"{tuple(key.shape)}")
    if check and bool(((counter < 0) | (counter > MASK32)).any() | ((key < 0) | (key > MASK32)).any()):
        raise ValueError("counter and key words must lie in [0, 2**32)")
    keys = round_keys(key, rounds)
    dev = counter.device
    extra = (1,) * (counter.dim() - 1)
    # m[f][h, lane]: 16-bit half h (0 low, 1 high) of the constant of lane `lane`, lanes in natural
    # (f=0: M0, M1) or swapped (f=1: M1, M0) order
    m = [torch.tensor([[c & 0xFFFF for c in ms], [c >> 16 for c in ms]], dtype=torch.int64, device=dev).view(2, 2, *extra)
         for ms in (_M, _M[::-1])]
    # The lanes are (c0, c1) and (c2, c3); a holds (c0, c2), b holds (c1, c3), each either in
    # natural or in swapped lane order (flags fa, fb): a round sends lane 1's product to lane 0
    # and back, so storing a swapped saves the copy of a swap (one swap every 2 rounds is left).
    a, b = counter[0::2], counter[1::2]
    fa = fb = False
    for r in range(rounds):
        p = a.unsqueeze(0) * m[fa]  # (2, 2, ...): a * M_lo, a * M_hi, both < 2**48
        p_lo, p_hi = p[0], p[1]
        hi = (p_lo >> 16).add_(p_hi).bitwise_right_shift_(16)  # floor(a M / 2**32)
        lo = p_hi.bitwise_and_(0xFFFF).bitwise_left_shift_(16).add_(p_lo).bitwise_and_(MASK32)  # a M mod 2**32
        # natural order: (c0, c2) <- (hi(M1 c2) ^ c1 ^ k0, hi(M0 c0) ^ c3 ^ k1), (c1, c3) <- (lo(M1 c2), lo(M0 c0)).
        # hi and lo come in a's stored order, i.e. the new (c0, c2) and (c1, c3) in the opposite order.
        new_f = not fa
        if fb != new_f:
            b = b.flip(0)
        a = hi.bitwise_xor_(b).bitwise_xor_(keys[r].flip(0) if new_f else keys[r])
        b = lo
        fa = fb = new_f
    if fa:
        a = a.flip(0)
    if fb:
        b = b.flip(0)
    return torch.stack([a[0], b[0], a[1], b[1]])


def round_keys(key: Tensor, rounds: int = 10) -> Tensor:
    r"""The round keys :math:`k + r W mod 2^{32}`, ``r = 0 .. rounds-1``: ``(rounds, 2, *batch')``."""
    weyl = torch.tensor(_W, dtype=torch.int64, device=key.device).view(2, *((1,) * (key.dim() - 1)))
    r = torch.arange(rounds, dtype=torch.int64, device=key.device).view(rounds, *((1,) * key.dim()))
    return (key.unsqueeze(0) + r * weyl) & MASK32


def normal_from_words(words: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Standard normals from Philox output words by Box-Muller.

    For ``float64`` each block of 4 words gives 2 normals from two 53-bit uniforms
    :math:`u = (\lfloor w / 2^{11} \rfloor + \tfrac12) 2^{-53}` (``w`` the 64-bit pair
    :math:`c_{1} 2^{32} + c_0`, resp. :math:`c_3 2^{32} + c_2`); for every other dtype each pair of
    words gives 2 normals from 32-bit uniforms :math:`u = (w + \tfrac12) 2^{-32}`, computed in
    ``float32`` (4 normals per block). Then :math:`z = \sqrt{-2\log u_1}\,(\cos 2\pi u_2, \sin 2\pi u_2)`.
    :math:`u_1 > 0` always, so :math:`|z| \le \sqrt{2 \cdot 54 \ln 2} \approx 8.65` (float64) and
    :math:`\sqrt{2 \cdot 33 \ln 2} \approx 6.76` (float32): a tail cut at probability
    :math:`< 10^{-10}`.

    Args:
        words: ``(4, *batch, n_blocks)`` output of :func:`philox4x32`.
        dtype: floating dtype of the result.

    Returns:
        ``(*batch, n_blocks * per_block)`` normals (``per_block`` 2 for float64, 4 otherwise),
        block by block.
    """
    if dtype == torch.float64:
        u1 = ((words[1] << 21) | (words[0] >> 11)).to(torch.float64).add_(0.5).mul_(2.0 ** -53)
        u2 = ((words[3] << 21) | (words[2] >> 11)).to(torch.float64).add_(0.5).mul_(2.0 ** -53)
        r = u1.log_().mul_(-2.0).sqrt_()
        th = u2.mul_(2.0 * math.pi)
        return torch.stack([r * th.cos(), r * th.sin()], dim=-1).flatten(-2)
    u1 = words[0::2].to(torch.float32).add_(0.5).mul_(2.0 ** -32)  # (c0, c2)
    u2 = words[1::2].to(torch.float32).add_(0.5).mul_(2.0 ** -32)  # (c1, c3)
    r = u1.log_().mul_(-2.0).sqrt_()
    th = u2.mul_(2.0 * math.pi)
    z = torch.stack([r * th.cos(), r * th.sin()], dim=-1)  # (2 lanes, *batch, n_blocks, 2)
    z = z.movedim(0, -2).flatten(-3)  # block by block: lane 0 (cos, sin), lane 1 (cos, sin)
    return z.to(dtype)

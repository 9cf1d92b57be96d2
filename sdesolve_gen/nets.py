r"""Small score networks: an MLP for low-dimensional data and a U-Net for small images.

Both are called as ``net(x, t)`` with ``x`` of shape ``(B, *shape)`` and ``t`` of shape ``(B,)``
(physical time), return a tensor shaped like ``x``, and are turned into a score function by
:class:`~sdesolve_gen.ScoreModel` with whichever parameterisation they were trained for.

Time enters through a Gaussian Fourier embedding (Tancik et al. 2020; used by score_sde):
:math:`\gamma(t) = [\sin(2\pi W t/T_{\max}), \cos(2\pi W t/T_{\max})]`, :math:`W\sim\mathcal N(0, s^2)`
fixed at construction.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ._checks import check_int, check_positive, check_time_tensor

Tensor = torch.Tensor

__all__ = ["GaussianFourierEmbedding", "MLPScoreNet", "UNet"]


class GaussianFourierEmbedding(nn.Module):
    r"""Random Fourier features of time: ``(B,) -> (B, dim)``.

    Args:
        dim: output size (even).
        scale: std :math:`s` of the frequencies (default 16).
        t_max: time scale; ``t / t_max`` is embedded (use ``sde.T``).
        seed: seed of the fixed frequencies (part of the architecture, stored as a buffer).
    """

    def __init__(self, dim: int = 64, scale: float = 16.0, t_max: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if dim % 2 or dim <= 0:
            raise ValueError(f"dim must be a positive even int, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)
        self.t_max = float(t_max)

    def forward(self, t: Tensor) -> Tensor:
        W = self.get_buffer("W")
        proj = 2 * math.pi * (t.to(W.dtype) / self.t_max)[:, None] * W[None, :]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class MLPScoreNet(nn.Module):
    r"""MLP :math:`(x, t) \mapsto` output of shape ``(B, dim)``, time-conditioned at every layer.

    .. math:: h_0 = W_0 x,\quad h_{k+1} = \mathrm{SiLU}(W_k h_k + U_k\gamma(t) + b_k),\quad \text{out} = W_{out} h_L .

    Args:
        dim: data dimension.
        hidden: width (default 128).
        depth: hidden layers (default 3).
        embed_dim: time-embedding size (default 64).
        t_max: the SDE's final time (for the embedding's scale).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 64, t_max: float = 1.0) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth), ("embed_dim", embed_dim)):
            check_int(name, v, 1)
        check_positive("t_max", t_max)
        self.dim = dim
        self.embed = GaussianFourierEmbedding(embed_dim, t_max=t_max)
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.temb = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        t = check_time_tensor("t", t, x.shape[0])
        e = self.embed(t).to(x.dtype)
        h = self.inp(x)
        for lin, tl in zip(self.layers, self.temb):
            h = nn.functional.silu(lin(h) + tl(e))
        return self.out(h)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, embed_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(embed_dim, c_out)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""A small time-conditioned U-Net for ``(B, C, H, W)`` images (8x8 digits, 28x28 MNIST-size).

    Levels halve the resolution (H and W must be divisible by ``2**(len(channel_mults)-1)``); each
    level has one residual block (GroupNorm, SiLU, 3x3 convs, additive time embedding) on the way
    down and one on the way up, with skip connections. Optional class conditioning adds a learned
    label embedding to the time embedding; label ``num_classes`` is the "null" label used for
    classifier-free guidance.

    Args:
        in_channels: image channels.
        base: channels at full resolution (default 32).
        channel_mults: multipliers per level (default ``(1, 2)``).
        embed_dim: time/label embedding size (default 128).
        num_classes: number of labels for conditioning, or ``None``.
        t_max: the SDE's final time.
    """

    def __init__(
        self, in_channels: int = 1, base: int = 32, channel_mults: Sequence[int] = (1, 2), embed_dim: int = 128,
        num_classes: Optional[int] = None, t_max: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("base", base, 1)
        check_int("embed_dim", embed_dim, 2)
        check_positive("t_max", t_max)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        if not isinstance(channel_mults, (tuple, list)) or not channel_mults:
            raise TypeError(f"channel_mults must be a non-empty sequence of ints, got {channel_mults!r}")
        for k, m in enumerate(channel_mults):
            check_int(f"channel_mults[{k}]", m, 1)
            if (base * m) % min(8, base * m):
                raise ValueError(f"base * channel_mults[{k}] = {base * m} channels must be <= 8 or a multiple of 8 "
                                 "(GroupNorm with 8 groups)")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.n_down = len(channel_mults) - 1
        self.embed = nn.Sequential(
            GaussianFourierEmbedding(embed_dim, t_max=t_max), nn.Linear(embed_dim, embed_dim), nn.SiLU(),
            nn.Linear(embed_dim, embed_dim),
        )
        self.label = nn.Embedding(num_classes + 1, embed_dim) if num_classes is not None else None
        chans = [base * m for m in channel_mults]
        self.inp = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = chans[0]
        for i, ch in enumerate(chans):
            self.down.append(_ResBlock(c, ch, embed_dim))
            c = ch
            if i < self.n_down:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = _ResBlock(c, c, embed_dim)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(_ResBlock(c + ch, ch, embed_dim))
            c = ch
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        last = self.out[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None  # (internal invariant, for the type checker)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        k = 2**self.n_down
        if x.shape[2] % k or x.shape[3] % k:
            raise ValueError(f"H and W must be divisible by {k} for {self.n_down + 1} levels, got {tuple(x.shape[2:])}")
        t = check_time_tensor("t", t, x.shape[0])
        e = self.embed(t.to(x.dtype))
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), int(self.num_classes or 0), dtype=torch.long, device=x.device)
            elif not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (x.shape[0],):
                got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},), got {got}")
            # (the range [0, num_classes] is checked where labels are made and here for host labels only: no device sync)
            if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) > int(self.num_classes or 0)):
                raise ValueError(f"y must lie in [0, {self.num_classes}] (label {self.num_classes} is the null label), "
                                 f"got [{int(y.min())}, {int(y.max())}]")
            e = e + self.label(y)
        elif y is not None:
            raise ValueError("y was given but the UNet has no class conditioning (num_classes=None)")
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < self.n_down:
                h = self.downsample[i](h)
        h = self.mid(h, e)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), e)
        return self.out(h)

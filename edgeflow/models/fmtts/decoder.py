"""The OT-CFM vector field: a small 1-D U-Net in the style of Matcha-TTS's decoder, convolutions only.

v(x_t, cond, t): x_t [B, n_mels, F] (the state), cond [B, n_mels + 1, F] (the expanded encoder mean and the
frame-level normalized log-f0), t [B] -> [B, n_mels, F]. Structure::

    in: conv3([x_t, cond]) -> C
    down (dec_levels times): dec_blocks x ResBlock(C), keep skip, stride-2 conv
    mid: 2 x ResBlock(C) with dilations 1, 2
    up (dec_levels times): nearest 2x + conv3, concat skip, dec_blocks x ResBlock (2C -> C, then C)
    out: LayerNorm, SiLU, conv1 -> n_mels

Each ResBlock: conv3 -> channel LayerNorm -> SiLU, + a projection of the time embedding, conv3 -> LayerNorm ->
SiLU, + a 1x1 (or identity) residual; masked after each conv. The width between its two convs (``inner``) is C
unless the ``fm_prune`` pass narrowed it (the model config's ``dec_inner``). Matcha uses GroupNorm, Mish and transformer blocks;
here the norms are per frame (channel LayerNorm), so padding never leaks into the statistics and the
network has a finite receptive field (streamable later); SiLU instead of Mish (Mish's backward took 12% of a
training step here); no attention (cheaper on a CPU).
F must be a multiple of ``2 ** dec_levels`` (the model pads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.vits.modules import LayerNorm

Tensor = torch.Tensor


def time_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of times t [B] in [0, 1] (scaled by ``scale`` as in Matcha/Grad-TTS)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half - 1, 1))
    arg = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.sin(arg), torch.cos(arg)], 1)


class ResBlock(nn.Module):
    """conv-norm-SiLU twice with the time embedding added in between; x [B, c_in, F] -> [B, c_out, F].

    ``inner``: channels between the two convs (0: c_out)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, dilation: int = 1, inner: int = 0):
        super().__init__()
        inner = inner or c_out
        self.conv1 = nn.Conv1d(c_in, inner, 3, padding=dilation, dilation=dilation)
        self.norm1 = LayerNorm(inner)
        self.conv2 = nn.Conv1d(inner, c_out, 3, padding=dilation, dilation=dilation)
        self.norm2 = LayerNorm(c_out)
        self.time = nn.Linear(t_dim, inner)
        self.res = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor, temb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x * mask))) + self.time(temb).unsqueeze(-1)
        h = F.silu(self.norm2(self.conv2(h * mask)))
        return (h + self.res(x)) * mask


class VectorField(nn.Module):
    """The U-Net. Args: n_mels, cond_channels, channels (C), levels, blocks, inner (every ResBlock's width between
    its convs; 0: C) (see the module docstring)."""

    def __init__(self, n_mels: int, cond_channels: int, channels: int, levels: int, blocks: int, inner: int = 0):
        super().__init__()
        c, w = channels, inner
        self.levels, self.t_dim = levels, c
        self.t_mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, c))
        self.inp = nn.Conv1d(n_mels + cond_channels, c, 3, padding=1)
        self.down = nn.ModuleList(nn.ModuleList(ResBlock(c, c, c, inner=w) for _ in range(blocks))
                                  for _ in range(levels))
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for _ in range(levels))
        self.mid = nn.ModuleList(ResBlock(c, c, c, dilation=d, inner=w) for d in (1, 2))
        self.upsample = nn.ModuleList(nn.Conv1d(c, c, 3, padding=1) for _ in range(levels))
        self.up = nn.ModuleList(nn.ModuleList(ResBlock(2 * c if i == 0 else c, c, c, inner=w)
                                              for i in range(blocks))
                                for _ in range(levels))
        self.norm = LayerNorm(c)
        self.out = nn.Conv1d(c, n_mels, 1)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor, t: Tensor) -> Tensor:
        """x [B, n_mels, F], cond [B, cond_channels, F], mask [B, 1, F], t [B] -> v [B, n_mels, F]."""
        if x.shape[-1] % (2 ** self.levels):
            raise ValueError(f"VectorField needs a frame count divisible by {2 ** self.levels}, got {x.shape[-1]}")
        temb = self.t_mlp(time_embedding(t, self.t_dim))
        h = self.inp(torch.cat([x, cond], 1) * mask) * mask
        masks, skips = [mask], []
        for blocks, down in zip(self.down, self.downsample):
            for blk in blocks:
                h = blk(h, masks[-1], temb)
            skips.append(h)
            masks.append(masks[-1][:, :, ::2])
            h = down(h * masks[-2]) * masks[-1]
        for blk in self.mid:
            h = blk(h, masks[-1], temb)
        for blocks, up in zip(self.up, self.upsample):
            masks.pop()
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest")) * masks[-1]
            h = torch.cat([h, skips.pop()], 1)
            for blk in blocks:
                h = blk(h, masks[-1], temb)
        return self.out(F.silu(self.norm(h)) * mask) * mask

"""The OT-CFM vector field as a small diffusion transformer (DiT) with ConvNeXt text blocks (F5-TTS's layout,
Chen et al. 2024), the alternative to the 1-D U-Net of :mod:`edgeflow.models.fmtts.decoder`.

v(x_t, cond, t): x_t [B, n_mels, F] (the state), cond [B, n_mels + 1, F] (the expanded encoder mean and the
frame-level normalized log-f0), t [B] -> [B, n_mels, F]; the same call as the U-Net's, so training, export,
runtime and passes that only call the field work for either. Structure (D = ``dec_channels``)::

    text:  Linear(cond -> D), text_blocks x ConvNeXt V2 block (depthwise conv7, LayerNorm, D -> 2D GELU,
           global response norm, 2D -> D)
    in:    Linear([x_t, text] -> D) + convolutional position embedding (two grouped conv31 + Mish, F5's)
    trunk: layers x DiT block: adaLN-zero(t) -> multi-head self-attention (keys masked to the utterance and, with
           ``window`` > 0, to frames at most ``window`` away) -> adaLN-zero(t) -> GELU MLP (ff_mult x D)
    out:   adaLN(t) -> Linear(D -> n_mels)

Everything but the attention and the convolutions is per frame, and the convolutions see masked inputs, so
padding never leaks into a valid frame. No rotary embedding (F5 adds one): the conv position embedding gives
relative position, and with a window the field sees the same context in training (``segment_frames`` windows)
as on a whole utterance. Any frame count works (``frame_multiple`` 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.fmtts.decoder import time_embedding

Tensor = torch.Tensor


class ConvNeXtBlock(nn.Module):
    """ConvNeXt V2 block over [B, D, F] (masked): depthwise conv7 -> LayerNorm -> D->2D GELU -> GRN -> 2D->D,
    residual."""

    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, mult * dim), nn.Linear(mult * dim, dim)
        self.gamma = nn.Parameter(torch.zeros(mult * dim))
        self.beta = nn.Parameter(torch.zeros(mult * dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, D, F], mask [B, 1, F] -> [B, D, F]."""
        h = self.norm(self.dw(x * mask).transpose(1, 2))
        h = F.gelu(self.pw1(h)) * mask.transpose(1, 2)
        gx = torch.sqrt((h * h).sum(1, keepdim=True) + 1e-6)                 # global response norm over frames
        h = self.gamma * (h * (gx / (gx.mean(-1, keepdim=True) + 1e-6))) + self.beta + h
        return (x + self.pw2(h).transpose(1, 2)) * mask


class ConvPositionEmbedding(nn.Module):
    """Two grouped conv31 + Mish over [B, F, D] (masked), added to the input (F5-TTS's)."""

    def __init__(self, dim: int, kernel: int = 31, groups: int = 16):
        super().__init__()
        groups = math.gcd(groups, dim)
        self.conv1 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.conv2 = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, F, D], mask [B, 1, F] -> x + embedding, [B, F, D]."""
        h = F.mish(self.conv1(x.transpose(1, 2) * mask))
        h = F.mish(self.conv2(h * mask)) * mask
        return x + h.transpose(1, 2)


def attention_bias(mask: Tensor, window: int) -> Tensor:
    """Additive attention bias [B, 1, F, F]: 0 where query i may see key j (j inside the utterance and, with
    ``window`` > 0, |i - j| <= window), -1e9 elsewhere. mask [B, 1, F]."""
    allowed = mask.unsqueeze(2)                                                   # [B, 1, 1, F] keys
    if window > 0:
        idx = torch.arange(mask.shape[-1], device=mask.device)
        near = ((idx.view(-1, 1) - idx.view(1, -1)).abs() <= window).to(mask.dtype)
        allowed = allowed * near
    return (allowed - 1.0) * 1e9


class DiTBlock(nn.Module):
    """adaLN-zero transformer block over [B, F, D]: attention and MLP, each scaled, shifted and gated by the
    time embedding (the gates start at zero, so a fresh block is the identity)."""

    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(approximate="tanh"),
                                nn.Linear(ff_mult * dim, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def attend(self, x: Tensor, bias: Tensor) -> Tensor:
        """Multi-head self-attention of x [B, F, D] with additive bias [B, 1, F, F]."""
        b, f, d = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d // self.heads) ** -0.5 + bias
        out = torch.matmul(torch.softmax(scores, -1), v)                         # [B, H, F, D/H]
        return self.proj(out.transpose(1, 2).reshape(b, f, d))

    def forward(self, x: Tensor, temb: Tensor, bias: Tensor) -> Tensor:
        """x [B, F, D], temb [B, D] (after SiLU), bias [B, 1, F, F] -> [B, F, D]."""
        s1, b1, g1, s2, b2, g2 = self.ada(temb).unsqueeze(1).chunk(6, -1)
        x = x + g1 * self.attend(self.norm1(x) * (1 + s1) + b1, bias)
        return x + g2 * self.ff(self.norm2(x) * (1 + s2) + b2)


class DiTField(nn.Module):
    """The DiT vector field (see the module docstring).

    Args:
        n_mels: state channels. cond_channels: conditioning channels (n_mels + 1). dim: width D.
        layers: DiT blocks. heads: attention heads (D divisible by it). ff_mult: MLP width / D.
        text_blocks: ConvNeXt blocks over the conditioning. window: attention reach in frames (0: unlimited).
    """

    def __init__(self, n_mels: int, cond_channels: int, dim: int, layers: int, heads: int, ff_mult: int = 2,
                 text_blocks: int = 2, window: int = 64):
        super().__init__()
        self.t_dim, self.window = dim, window
        self.t_mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
        self.text_in = nn.Linear(cond_channels, dim)
        self.text = nn.ModuleList(ConvNeXtBlock(dim) for _ in range(text_blocks))
        self.inp = nn.Linear(n_mels + dim, dim)
        self.pos = ConvPositionEmbedding(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, ff_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, n_mels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor, t: Tensor) -> Tensor:
        """x [B, n_mels, F], cond [B, cond_channels, F], mask [B, 1, F], t [B] -> v [B, n_mels, F]."""
        temb = F.silu(self.t_mlp(time_embedding(t, self.t_dim)))
        text = self.text_in((cond * mask).transpose(1, 2)).transpose(1, 2) * mask     # [B, D, F]
        for blk in self.text:
            text = blk(text, mask)
        h = self.inp(torch.cat([x * mask, text], 1).transpose(1, 2))                 # [B, F, D]
        h = self.pos(h, mask)
        bias = attention_bias(mask, self.window)
        for blk in self.blocks:
            h = blk(h, temb, bias)
        shift, scale = self.ada_out(temb).unsqueeze(1).chunk(2, -1)
        v = self.out(self.norm(h) * (1 + scale) + shift)                               # [B, F, n_mels]
        return v.transpose(1, 2) * mask

"""Building blocks shared by the VITS parts: channel LayerNorm, DDSConv, the WaveNet stack ``WN``.

Tensors are [B, C, T] with a mask [B, 1, T] (1 on valid frames/phonemes).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

Tensor = torch.Tensor


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T] (parameters ``gamma``, ``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class DDSConv(nn.Module):
    """Dilated depth-separable conv stack: per layer, depthwise conv (dilation k^i), LN, GELU, 1x1, LN,
    GELU, residual. Used by the stochastic duration predictor."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, p_dropout: float = 0.0):
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.convs_sep, self.convs_1x1 = nn.ModuleList(), nn.ModuleList()
        self.norms_1, self.norms_2 = nn.ModuleList(), nn.ModuleList()
        for i in range(n_layers):
            dil = kernel_size ** i
            self.convs_sep.append(nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dil,
                                            padding=(kernel_size * dil - dil) // 2))
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: Tensor, mask: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """x [B, C, T], mask [B, 1, T], g [B, C, T] added first (or None) -> [B, C, T]."""
        if g is not None:
            x = x + g
        for i in range(self.n_layers):
            y = self.convs_sep[i](x * mask)
            y = F.gelu(self.norms_1[i](y))
            y = F.gelu(self.norms_2[i](self.convs_1x1[i](y)))
            x = x + self.drop(y)
        return x * mask


class WN(nn.Module):
    """Non-causal WaveNet stack with gated tanh-sigmoid units and weight-normed convs (VITS's ``WN``).

    Args:
        hidden: residual channels H.
        kernel_size: odd kernel of the dilated convs.
        dilation_rate: layer i has dilation ``dilation_rate ** i``.
        n_layers: layers.
        gin_channels: global conditioning channels (speaker embedding), 0 for none.
        p_dropout: dropout on the gated activations.
    """

    def __init__(self, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int = 0,
                 p_dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("WN kernel_size must be odd")
        self.hidden, self.n_layers, self.gin_channels = hidden, n_layers, gin_channels
        self.drop = nn.Dropout(p_dropout)
        self.in_layers, self.res_skip_layers = nn.ModuleList(), nn.ModuleList()
        if gin_channels:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden * n_layers, 1))
        for i in range(n_layers):
            dil = dilation_rate ** i
            self.in_layers.append(weight_norm(nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=dil,
                                                        padding=(kernel_size * dil - dil) // 2)))
            out = 2 * hidden if i < n_layers - 1 else hidden
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden, out, 1)))

    def forward(self, x: Tensor, mask: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """x [B, H, T], mask [B, 1, T], g [B, gin, 1] or None -> skip sum [B, H, T]."""
        out = torch.zeros_like(x)
        if g is not None and self.gin_channels:
            g = self.cond_layer(g)
        h = self.hidden
        for i in range(self.n_layers):
            a = self.in_layers[i](x)
            if g is not None and self.gin_channels:
                a = a + g[:, i * 2 * h:(i + 1) * 2 * h]
            acts = self.drop(torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:]))
            rs = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


def sequence_mask(lengths: Tensor, max_len: Optional[Tensor | int] = None) -> Tensor:
    """Boolean mask [B, max_len]: position < length."""
    if max_len is None:
        max_len = lengths.max()
    pos = torch.arange(max_len, dtype=lengths.dtype, device=lengths.device)
    return pos.unsqueeze(0) < lengths.unsqueeze(1)


def generate_path(durations: Tensor, mask: Tensor) -> Tensor:
    """Monotonic alignment [B, 1, T_y, T_x] from integer-valued durations [B, 1, T_x] and mask [B, 1, T_y, T_x]."""
    b, _, t_y, t_x = mask.shape
    cum = torch.cumsum(durations, -1).view(b * t_x)
    path = sequence_mask(cum, t_y).to(mask.dtype).view(b, t_x, t_y)
    path = path - F.pad(path, (0, 0, 1, 0, 0, 0))[:, :-1]
    return path.unsqueeze(1).transpose(2, 3) * mask

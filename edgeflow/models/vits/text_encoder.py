"""VITS text encoder: phoneme embedding + transformer with windowed relative-position self-attention.

Parameter names follow VITS (``emb``, ``encoder.attn_layers.i.conv_q``, ``emb_rel_k``, ``ffn_layers``, ...).
The relative-position code pads the embedding table by the sequence length on both sides and slices, with
no Python branching on the length, so one traced graph serves every phoneme count.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.vits.modules import LayerNorm, sequence_mask

Tensor = torch.Tensor


class RelativeMultiHeadAttention(nn.Module):
    """Self-attention with relative keys and values shared by the heads, window ``window_size``."""

    def __init__(self, channels: int, n_heads: int, window_size: int = 4, p_dropout: float = 0.0):
        super().__init__()
        if channels % n_heads:
            raise ValueError("channels must be divisible by n_heads")
        self.n_heads, self.k_channels, self.window = n_heads, channels // n_heads, window_size
        for name in ("conv_q", "conv_k", "conv_v", "conv_o"):
            setattr(self, name, nn.Conv1d(channels, channels, 1))
        std = self.k_channels ** -0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        self.drop = nn.Dropout(p_dropout)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def _rel_embeddings(self, emb: Tensor, length: int) -> Tensor:
        """[1, 2L-1, d]: the embedding of relative positions -(L-1)..L-1 (zero beyond the window)."""
        padded = F.pad(emb, (0, 0, length, length))
        return padded[:, self.window + 1:self.window + 2 * length]

    @staticmethod
    def _rel_to_abs(x: Tensor) -> Tensor:
        """[b, h, l, 2l-1] -> [b, h, l, l]."""
        b, h, l, _ = x.shape
        x = F.pad(x, (0, 1)).reshape(b, h, l * 2 * l)
        x = F.pad(x, (0, l - 1)).reshape(b, h, l + 1, 2 * l - 1)
        return x[:, :, :l, l - 1:]

    @staticmethod
    def _abs_to_rel(x: Tensor) -> Tensor:
        """[b, h, l, l] -> [b, h, l, 2l-1]."""
        b, h, l, _ = x.shape
        x = F.pad(x, (0, l - 1)).reshape(b, h, l * l + l * (l - 1))
        x = F.pad(x, (l, 0)).reshape(b, h, l, 2 * l)
        return x[:, :, :, 1:]

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x [B, C, T], attn_mask [B, 1, T, T] -> [B, C, T]."""
        b, d, t = x.shape
        q, k, v = self.conv_q(x), self.conv_k(x), self.conv_v(x)
        q = q.view(b, self.n_heads, self.k_channels, t).transpose(2, 3) / math.sqrt(self.k_channels)
        k = k.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        v = v.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        scores = torch.matmul(q, k.transpose(-2, -1))
        rel_k = self._rel_embeddings(self.emb_rel_k, t)
        scores = scores + self._rel_to_abs(torch.matmul(q, rel_k.unsqueeze(0).transpose(-2, -1)))
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p, v)
        rel_v = self._rel_embeddings(self.emb_rel_v, t)
        out = out + torch.matmul(self._abs_to_rel(p), rel_v.unsqueeze(0))
        return self.conv_o(out.transpose(2, 3).reshape(b, d, t))


class FFN(nn.Module):
    """Two 'same'-padded convs with ReLU, masked."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        return F.pad(x, ((k - 1) // 2, k // 2)) if k > 1 else x

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.drop(torch.relu(self.conv_1(self._pad(x * mask))))
        return self.conv_2(self._pad(x * mask)) * mask


class Encoder(nn.Module):
    """Post-LN transformer encoder: n_layers x (relative attention, LN, FFN, LN)."""

    def __init__(self, hidden: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int,
                 p_dropout: float, window_size: int = 4):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(RelativeMultiHeadAttention(hidden, n_heads, window_size, p_dropout)
                                         for _ in range(n_layers))
        self.norm_layers_1 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FFN(hidden, filter_channels, kernel_size, p_dropout)
                                        for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(LayerNorm(hidden) for _ in range(n_layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)
        x = x * mask
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + self.drop(attn(x, attn_mask)))
            x = n2(x + self.drop(ffn(x, mask)))
        return x * mask


class TextEncoder(nn.Module):
    """Phoneme ids -> hidden states and the prior's per-phoneme mean and log-std.

    Args:
        n_vocab: number of phoneme symbols. out_channels: prior channels (inter_channels).
        hidden, filter_channels, n_heads, n_layers, kernel_size, p_dropout: the transformer's.
    """

    def __init__(self, n_vocab: int, out_channels: int, hidden: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float):
        super().__init__()
        self.hidden, self.out_channels = hidden, out_channels
        self.emb = nn.Embedding(n_vocab, hidden)
        nn.init.normal_(self.emb.weight, 0.0, hidden ** -0.5)
        self.encoder = Encoder(hidden, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden, out_channels * 2, 1)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """ids [B, N] int64, lengths [B] -> (h [B, H, N], m [B, C, N], logs [B, C, N], mask [B, 1, N])."""
        x = (self.emb(ids) * math.sqrt(self.hidden)).transpose(1, -1)
        mask = sequence_mask(lengths, ids.shape[1]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * mask, mask)
        stats = self.proj(x) * mask
        return x, stats[:, :self.out_channels], stats[:, self.out_channels:], mask

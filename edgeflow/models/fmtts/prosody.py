"""Phone-level prosody models: a conditional normalizing flow and an L2 (mean-squared) baseline.

Both model the per-phone features x = (log-duration, log-f0), normalized by the model's stored feature
statistics, from the text encoder's states h (detached: prosody losses do not shape the encoder, as in
Matcha-TTS / Glow-TTS's duration predictor). A conditioning net (conv stack over h, context across phones)
gives each phone a vector c; the flow is then per phone: every phone is one batch item [M, 2, 1], so the
couplings' WN nets (kernel 1) see no padding and the log-determinant of each phone is exact.

Flow (the project's invertible contract, :mod:`edgeflow.flows`): ``prosody_flows`` x (AffineCoupling over
the two features conditioned on c, then Permute.reverse), base N(0, I). Sampling draws z ~ N(0, tau^2 I)
(temperature tau) and runs the inverse. The L2 predictor is a conv stack + 1x1 projection trained by MSE:
the over-smoothing baseline of arXiv 2307.16679.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from edgeflow.flows.base import Sequential
from edgeflow.flows.coupling import AffineCoupling
from edgeflow.flows.reshape import Permute
from edgeflow.models.vits.modules import LayerNorm

Tensor = torch.Tensor
N_FEATURES = 2          # log-duration, log-f0
LOG_2PI = math.log(2 * math.pi)


class CondNet(nn.Module):
    """Conv3 -> ReLU -> LayerNorm, ``layers`` times: h [B, H, N] (masked) -> [B, C, N]."""

    def __init__(self, in_channels: int, channels: int, layers: int, p_dropout: float = 0.1):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_channels if i == 0 else channels, channels, 3, padding=1)
                                   for i in range(layers))
        self.norms = nn.ModuleList(LayerNorm(channels) for _ in range(layers))
        self.drop = nn.Dropout(p_dropout)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            h = self.drop(norm(torch.relu(conv(h * mask))))
        return h * mask


def per_phone(x: Tensor, mask: Tensor) -> Tensor:
    """The valid phones of x [B, C, N] (mask [B, 1, N]) as a batch [M, C, 1], in (item, phone) order."""
    keep = mask[:, 0].bool()
    return x.transpose(1, 2)[keep].unsqueeze(-1)


def scatter_phones(v: Tensor, mask: Tensor) -> Tensor:
    """Inverse of :func:`per_phone`: [M, C, 1] -> [B, C, N] with zeros at padded phones."""
    b, _, n = mask.shape
    out = v.new_zeros(b, n, v.shape[1])
    out[mask[:, 0].bool()] = v[:, :, 0]
    return out.transpose(1, 2)


class ProsodyFlow(nn.Module):
    """Conditional flow over phone-level (log-duration, log-f0). Args: hidden (encoder width), channels,
    layers (conditioning net), n_flows, wn_channels, wn_layers (couplings)."""

    def __init__(self, hidden: int, channels: int, layers: int, n_flows: int, wn_channels: int, wn_layers: int,
                 p_dropout: float = 0.1):
        super().__init__()
        self.cond = CondNet(hidden, channels, layers, p_dropout)
        blocks = []
        for _ in range(n_flows):
            blocks += [AffineCoupling(N_FEATURES, channels, n_layers=wn_layers, wn_channels=wn_channels,
                                      kernel_size=1), Permute.reverse(N_FEATURES)]
        self.flow = Sequential(blocks)

    def nll(self, h: Tensor, mask: Tensor, x: Tensor) -> Tensor:
        """Mean negative log-likelihood per phone and feature (nats). h [B, H, N], mask [B, 1, N], x [B, 2, N]."""
        c = per_phone(self.cond(h, mask), mask)
        z, logdet = self.flow(per_phone(x, mask), c)
        nll = 0.5 * (z ** 2).sum((1, 2)) + 0.5 * N_FEATURES * LOG_2PI - logdet
        return nll.mean() / N_FEATURES

    def sample(self, h: Tensor, mask: Tensor, z: Tensor, tau: float) -> Tensor:
        """Features [B, 2, N] (normalized) from standard normal noise z [B, 2, N] at temperature tau."""
        c = per_phone(self.cond(h, mask), mask)
        x, _ = self.flow.inverse(per_phone(z * tau, mask), c)
        return scatter_phones(x, mask)


class L2Prosody(nn.Module):
    """The mean-squared-error baseline: conditioning net + 1x1 projection to the two features."""

    def __init__(self, hidden: int, channels: int, layers: int, p_dropout: float = 0.1):
        super().__init__()
        self.cond = CondNet(hidden, channels, layers, p_dropout)
        self.proj = nn.Conv1d(channels, N_FEATURES, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """Predicted features [B, 2, N] (normalized)."""
        return self.proj(self.cond(h, mask)) * mask

    def loss(self, h: Tensor, mask: Tensor, x: Tensor) -> Tensor:
        """Mean squared error per valid phone and feature."""
        err = (self(h, mask) - x) ** 2 * mask
        return err.sum() / (mask.sum() * N_FEATURES)


def phone_features(attn: Tensor, lf0: Tensor, voiced: Tensor) -> Tuple[Tensor, Tensor]:
    """Phone-level (log-duration, mean log-f0) from a hard alignment.

    Args:
        attn: [B, N, F] 0/1 path (every valid phone has >= 1 frame). lf0: [B, F] continuous log-f0 (unvoiced
            frames interpolated). voiced: [B, F] 1.0 on voiced frames.

    Returns:
        (features [B, 2, N] raw (log frames, log Hz), durations [B, N] frames). Phones with no voiced frame
        take the mean of the interpolated contour over their frames.
    """
    dur = attn.sum(-1)
    w = attn * voiced.unsqueeze(1)
    n_voiced = w.sum(-1)
    mean_v = (w * lf0.unsqueeze(1)).sum(-1) / n_voiced.clamp_min(1)
    mean_all = (attn * lf0.unsqueeze(1)).sum(-1) / dur.clamp_min(1)
    f0 = torch.where(n_voiced > 0, mean_v, mean_all)
    return torch.stack([torch.log(dur.clamp_min(1)), f0], 1), dur

"""HiFi-GAN / VITS discriminators (training only): multi-period (2-D convs over the waveform folded by a
period) and multi-scale (1-D grouped convs over the waveform, average-pooled per scale).

VITS uses :class:`VitsDiscriminator`: one scale discriminator at full rate plus periods 2, 3, 5, 7, 11
(state-dict names ``discriminators.0`` = scale, ``1..5`` = periods, as Piper's ``model_d``).
``width`` scales every channel count (1.0 = the published sizes; smaller for tests).
"""

from __future__ import annotations

import math

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

LRELU_SLOPE = 0.1
Tensor = torch.Tensor
Output = Tuple[Tensor, List[Tensor]]


def _norm(use_spectral: bool):
    return spectral_norm if use_spectral else weight_norm


def _ch(c: int, width: float, groups: int = 1) -> int:
    return max(groups, int(round(c * width / groups)) * groups)


def _run(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> Output:
    """Leaky-ReLU conv stack then the post conv: (logits [B, K], every layer's output as feature maps)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    """Period discriminator: audio [B, 1, T] reflect-padded to a multiple of ``period``, folded [B, 1, T/p, p]."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 width: float = 1.0):
        super().__init__()
        self.period, norm = period, _norm(use_spectral_norm)
        chans = [1] + [_ch(c, width) for c in (32, 128, 512, 1024, 1024)]
        pad = ((kernel_size - 1) // 2, 0)
        self.convs = nn.ModuleList(
            norm(nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1), padding=pad))
            for i in range(5))
        self.conv_post = norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> Output:
        """Returns (logits [B, K], feature maps)."""
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t += n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _run(self.convs, self.conv_post, x)


class DiscriminatorS(nn.Module):
    """Scale discriminator: grouped strided 1-D convs over audio [B, 1, T]."""

    def __init__(self, use_spectral_norm: bool = False, width: float = 1.0):
        super().__init__()
        norm = _norm(use_spectral_norm)
        spec = [(1, 16, 15, 1, 1, 7), (16, 64, 41, 4, 4, 20), (64, 256, 41, 4, 16, 20), (256, 1024, 41, 4, 64, 20),
                (1024, 1024, 41, 4, 256, 20), (1024, 1024, 5, 1, 1, 2)]
        groups = [max(1, int(g * width)) if g > 1 else 1 for *_, g, _ in spec]
        convs, ci = [], 1
        for i, (_, cout, k, s, _, p) in enumerate(spec):
            # a layer's width is a multiple of its own groups and the next layer's (width 1: VITS's exactly)
            nxt = groups[i + 1] if i + 1 < len(spec) else 1
            co = _ch(cout, width, groups[i] * nxt // math.gcd(groups[i], nxt))
            convs.append(norm(nn.Conv1d(ci, co, k, s, groups=groups[i], padding=p)))
            ci = co
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm(nn.Conv1d(convs[-1].out_channels, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> Output:
        return _run(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN's MPD: one :class:`DiscriminatorP` per period."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), use_spectral_norm: bool = False, width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, use_spectral_norm=use_spectral_norm, width=width)
                                            for p in periods)

    def forward(self, x: Tensor) -> List[Output]:
        return [d(x) for d in self.discriminators]


class MultiScaleDiscriminator(nn.Module):
    """HiFi-GAN's MSD: :class:`DiscriminatorS` at full rate (spectral norm) and after 2x, 4x average pooling."""

    def __init__(self, n_scales: int = 3, width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorS(use_spectral_norm=(i == 0), width=width)
                                            for i in range(n_scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: Tensor) -> List[Output]:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.pool(x)
            outs.append(d(x))
        return outs


class VitsDiscriminator(nn.Module):
    """VITS's discriminator: one full-rate scale discriminator and period discriminators 2, 3, 5, 7, 11."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), use_spectral_norm: bool = False,
                 width: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(use_spectral_norm, width)]
            + [DiscriminatorP(p, use_spectral_norm=use_spectral_norm, width=width) for p in periods])

    def forward(self, y: Tensor, y_hat: Tensor):
        """Real y and generated y_hat [B, 1, T] -> (real logits, fake logits, real fmaps, fake fmaps)."""
        rs, gs, frs, fgs = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            rs.append(r)
            gs.append(g)
            frs.append(fr)
            fgs.append(fg)
        return rs, gs, frs, fgs

"""VITS flow layers on the invertible contract (:mod:`edgeflow.flows.base`).

``cond`` is a :class:`FlowCond` (mask [B, 1, T], g): g is the speaker embedding [B, gin, 1] for the prior
flow, or the text hidden states [B, C, T] for the duration flows. Log-determinants are summed over the
masked elements and have shape [B]; forward's is log|det dz/dx|, inverse's is its negative.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from edgeflow.flows.base import InvertibleModule
from edgeflow.flows.spline import rq_spline
from edgeflow.models.vits.modules import WN, DDSConv

Tensor = torch.Tensor


class FlowCond(NamedTuple):
    """Conditioning of a VITS flow layer: ``mask`` [B, 1, T] and ``g`` (or None)."""

    mask: Tensor
    g: Optional[Tensor] = None


def _sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


class Flip(InvertibleModule):
    """Reverse the channel order (its own inverse, logdet 0)."""

    def forward(self, x, cond=None):
        return torch.flip(x, [1]), x.new_zeros(x.shape[0])

    def inverse(self, z, cond=None):
        return self.forward(z, cond)


class ElementwiseAffine(InvertibleModule):
    """y = m + exp(logs) * x per channel (parameters ``m``, ``logs`` [C, 1])."""

    def __init__(self, channels: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x, cond):
        return (self.m + torch.exp(self.logs) * x) * cond.mask, _sum(self.logs * cond.mask)

    def inverse(self, z, cond):
        return (z - self.m) * torch.exp(-self.logs) * cond.mask, -_sum(self.logs * cond.mask)


class Log(InvertibleModule):
    """y = log(max(x, 1e-5)) on the masked elements (durations -> log durations)."""

    def forward(self, x, cond):
        y = torch.log(torch.clamp_min(x, 1e-5)) * cond.mask
        return y, -_sum(y)

    def inverse(self, z, cond):
        return torch.exp(z) * cond.mask, _sum(z * cond.mask)


class ResidualCouplingLayer(InvertibleModule):
    """Affine coupling over a WN stack: x1 <- m(x0) + x1 * exp(logs(x0)) (mean-only: logs = 0).

    Args:
        channels: C (even); the first half conditions the second.
        hidden: WN channels. kernel_size, dilation_rate, n_layers: the WN's.
        gin_channels: speaker conditioning channels (0: none).
        mean_only: VITS's prior flow is mean-only (volume preserving, logdet 0).
    """

    def __init__(self, channels: int, hidden: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, mean_only: bool = True, p_dropout: float = 0.0):
        super().__init__()
        if channels % 2:
            raise ValueError("coupling channels must be even")
        self.half, self.mean_only = channels // 2, mean_only
        self.pre = nn.Conv1d(self.half, hidden, 1)
        self.enc = WN(hidden, kernel_size, dilation_rate, n_layers, gin_channels, p_dropout)
        self.post = nn.Conv1d(hidden, self.half * (1 if mean_only else 2), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)
        self.kernel_engine = "torch"   # "triton": WN + update through edgeflow.flows.triton_ops (set_engine)

    def _stats(self, x0: Tensor, cond: FlowCond):
        h = self.enc(self.pre(x0) * cond.mask, cond.mask, g=cond.g)
        stats = self.post(h) * cond.mask
        if self.mean_only:
            return stats, torch.zeros_like(stats)
        return stats[:, :self.half], stats[:, self.half:]

    def _triton(self, x: Tensor, cond: FlowCond, reverse: bool):
        """Both directions through the Triton kernels: (out [B, C, T], logdet [B])."""
        from edgeflow.flows.triton_ops import coupling_update, wn_stack

        enc, hf = self.enc, self.half
        x0, x1 = x[:, :hf], x[:, hf:]
        mask = cond.mask[:, 0]
        g = enc.cond_layer(cond.g) if cond.g is not None and enc.gin_channels else None
        skip = wn_stack(self.pre(x0) * cond.mask, enc, g, mask)
        w, b = self.post.weight, self.post.bias
        wl, bl = (None, None) if self.mean_only else (w[hf:], b[hf:])
        out, ld = coupling_update(skip, w[:hf], b[:hf], wl, bl, x1, mask, reverse)
        return torch.cat([x0, out], 1), -ld if reverse else ld

    def forward(self, x, cond):
        if self.kernel_engine == "triton":
            return self._triton(x, cond, reverse=False)
        x0, x1 = x[:, :self.half], x[:, self.half:]
        m, logs = self._stats(x0, cond)
        x1 = m + x1 * torch.exp(logs) * cond.mask
        return torch.cat([x0, x1], 1), _sum(logs)

    def inverse(self, z, cond):
        if self.kernel_engine == "triton":
            return self._triton(z, cond, reverse=True)
        x0, x1 = z[:, :self.half], z[:, self.half:]
        m, logs = self._stats(x0, cond)
        x1 = (x1 - m) * torch.exp(-logs) * cond.mask
        return torch.cat([x0, x1], 1), -_sum(logs)


class PriorFlow(InvertibleModule):
    """VITS's residual-coupling prior flow: ``n_flows`` x (mean-only coupling, Flip); data z <-> prior z_p.

    Parameter names follow VITS (``flows.{0,2,..}.pre/enc/post``; the Flips at odd indices)."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 5, dilation_rate: int = 1,
                 n_layers: int = 4, n_flows: int = 4, gin_channels: int = 0):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(channels, hidden, kernel_size, dilation_rate, n_layers,
                                                    gin_channels, mean_only=True))
            self.flows.append(Flip())

    def forward(self, x, cond):
        total = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, ld = f(x, cond)
            total = total + ld
        return x, total

    def inverse(self, z, cond):
        total = z.new_zeros(z.shape[0])
        for f in reversed(self.flows):
            z, ld = f.inverse(z, cond)
            total = total + ld
        return z, total


class ConvFlow(InvertibleModule):
    """Rational-quadratic spline coupling over a DDSConv net (VITS's duration ``ConvFlow``).

    Args:
        in_channels: C (2 in VITS); x[:, C//2:] is transformed conditioned on x[:, :C//2] and g.
        filter_channels: DDSConv width. kernel_size, n_layers: the DDSConv's.
        num_bins: spline bins K. tail_bound: B (identity outside [-B, B]).
    """

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, n_layers: int,
                 num_bins: int = 10, tail_bound: float = 5.0):
        super().__init__()
        self.half, self.filter_channels = in_channels // 2, filter_channels
        self.num_bins, self.tail_bound = num_bins, tail_bound
        self.pre = nn.Conv1d(self.half, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers, p_dropout=0.0)
        self.proj = nn.Conv1d(filter_channels, self.half * (num_bins * 3 - 1), 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _spline(self, x: Tensor, cond: FlowCond, inverse: bool):
        x0, x1 = x[:, :self.half], x[:, self.half:]
        h = self.proj(self.convs(self.pre(x0), cond.mask, g=cond.g)) * cond.mask
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)
        k, scale = self.num_bins, math.sqrt(self.filter_channels)
        x1, lad = rq_spline(x1, h[..., :k] / scale, h[..., k:2 * k] / scale, h[..., 2 * k:],
                            inverse=inverse, tail_bound=self.tail_bound)
        return torch.cat([x0, x1], 1) * cond.mask, _sum(lad * cond.mask)

    def forward(self, x, cond):
        return self._spline(x, cond, False)

    def inverse(self, z, cond):
        return self._spline(z, cond, True)

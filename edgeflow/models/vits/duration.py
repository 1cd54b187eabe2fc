"""Duration models: VITS's stochastic duration predictor (a spline flow, temperature ``noise_w``) and the
optional deterministic one. Both see the text encoder's hidden states detached (no gradient to the encoder).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.vits.flows import ConvFlow, ElementwiseAffine, Flip, FlowCond, Log
from edgeflow.models.vits.modules import DDSConv, LayerNorm

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)


def _flow_stack(channels: int, kernel_size: int, n_flows: int) -> nn.ModuleList:
    mods = [ElementwiseAffine(2)]
    for _ in range(n_flows):
        mods += [ConvFlow(2, channels, kernel_size, n_layers=3), Flip()]
    return nn.ModuleList(mods)


class StochasticDurationPredictor(nn.Module):
    """Flow over (log duration, a free channel) conditioned on the text hidden states.

    Training (:meth:`nll`) is variational dequantisation of the integer durations through the posterior
    flows ``post_flows``; sampling (:meth:`sample_logw`) inverts ``flows``. As in VITS, sampling skips
    ``flows[1]`` (the first spline coupling): the released models were trained and exported that way, so
    a Piper ONNX carries no weights for it.

    Args:
        in_channels: hidden channels of the text encoder (also the filter width, as in VITS).
        kernel_size, p_dropout: the DDSConv nets'. n_flows: spline couplings. gin_channels: speaker cond.
    """

    def __init__(self, in_channels: int, kernel_size: int = 3, p_dropout: float = 0.5, n_flows: int = 4,
                 gin_channels: int = 0):
        super().__init__()
        fc = in_channels
        self.log_flow = Log()
        self.flows = _flow_stack(fc, kernel_size, n_flows)
        self.post_pre = nn.Conv1d(1, fc, 1)
        self.post_proj = nn.Conv1d(fc, fc, 1)
        self.post_convs = DDSConv(fc, kernel_size, n_layers=3, p_dropout=p_dropout)
        self.post_flows = _flow_stack(fc, kernel_size, 4)
        self.pre = nn.Conv1d(in_channels, fc, 1)
        self.proj = nn.Conv1d(fc, fc, 1)
        self.convs = DDSConv(fc, kernel_size, n_layers=3, p_dropout=p_dropout)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, fc, 1)

    def _hidden(self, x: Tensor, mask: Tensor, g: Optional[Tensor]) -> Tensor:
        x = self.pre(x.detach())
        if g is not None and hasattr(self, "cond"):
            x = x + self.cond(g.detach())
        return self.proj(self.convs(x, mask)) * mask

    def nll(self, x: Tensor, mask: Tensor, w: Tensor, noise: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """Negative log-likelihood bound of durations [B] (sum over phonemes).

        Args:
            x: text hidden states [B, H, N]. mask: [B, 1, N]. w: durations in frames [B, 1, N].
            noise: standard normal [B, 2, N] (the posterior's e_q). g: speaker embedding or None.
        """
        h = self._hidden(x, mask, g)
        h_w = self.post_proj(self.post_convs(self.post_pre(w), mask)) * mask
        e_q = noise * mask
        z_q, logdet_q = e_q, x.new_zeros(x.shape[0])
        cond_q = FlowCond(mask, h + h_w)
        for f in self.post_flows:
            z_q, ld = f(z_q, cond_q)
            logdet_q = logdet_q + ld
        z_u, z1 = z_q[:, :1], z_q[:, 1:]
        u = torch.sigmoid(z_u) * mask
        z0 = (w - u) * mask
        logdet_q = logdet_q + ((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * mask).sum([1, 2])
        logq = (-0.5 * (LOG_2PI + e_q ** 2) * mask).sum([1, 2]) - logdet_q
        cond = FlowCond(mask, h)
        z0, logdet = self.log_flow(z0, cond)
        z = torch.cat([z0, z1], 1)
        for f in self.flows:
            z, ld = f(z, cond)
            logdet = logdet + ld
        return (0.5 * (LOG_2PI + z ** 2) * mask).sum([1, 2]) - logdet + logq

    def sample_logw(self, x: Tensor, mask: Tensor, noise: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """Log durations [B, 1, N] from noise [B, 2, N] (already scaled by noise_w)."""
        cond = FlowCond(mask, self._hidden(x, mask, g))
        z = noise
        for f in reversed([self.flows[0]] + list(self.flows[2:])):
            z, _ = f.inverse(z, cond)
        return z[:, :1]


class DurationPredictor(nn.Module):
    """Deterministic log-duration regressor (two conv + LN + ReLU layers), VITS's ``use_sdp=False`` option."""

    def __init__(self, in_channels: int, filter_channels: int = 256, kernel_size: int = 3, p_dropout: float = 0.5,
                 gin_channels: int = 0):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = LayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = LayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)

    def forward(self, x: Tensor, mask: Tensor, g: Optional[Tensor] = None) -> Tensor:
        """x [B, H, N] -> log durations [B, 1, N]."""
        x = x.detach()
        if g is not None and hasattr(self, "cond"):
            x = x + self.cond(g.detach())
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * mask))))
        return self.proj(x * mask) * mask

    def nll(self, x: Tensor, mask: Tensor, w: Tensor, noise: Optional[Tensor] = None,
            g: Optional[Tensor] = None) -> Tensor:
        """Squared error of log durations [B] (summed), the deterministic predictor's loss."""
        target = torch.log(w + 1e-6) * mask
        return ((self.forward(x, mask, g) - target) ** 2).sum([1, 2])

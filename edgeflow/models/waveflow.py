"""WaveFlow (Ping et al., 2020): flows autoregressive over the height of the folded waveform.

Paper config r=64 (8 flows x 8 layers, h=16, 64 residual channels, 80 mels) has 5.91M parameters.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from edgeflow.flows.base import Sequential
from edgeflow.flows.reshape import Conjugate, Fold2d
from edgeflow.flows.waveflow import DEFAULT_DILATIONS_H, WaveFlowCoupling
from edgeflow.models.base import FlowVocoder, VocoderConfig, check_lengths


@dataclasses.dataclass
class WaveFlowConfig(VocoderConfig):
    """WaveFlow hyper-parameters.

    Attributes:
        n_flows: number of autoregressive flows.
        n_layers: layers of each flow's 2-D WaveNet.
        height: h, rows of the folded waveform (the number of sequential steps per flow).
        channels: residual channels r.
        kernel_size: 2-D conv kernel (k x k).
        dilations_h: height dilation per layer; None: the paper's defaults for ``height``.
        upsample_factors: stride of each transposed-conv upsampling layer; product = hop_length.
        row_orders: the row order of each flow (n_flows permutations of range(height)); None: the
            default cumulative reversals of :func:`row_orders` (explicit orders come from reduce_flows).
    """

    n_flows: int = 8
    n_layers: int = 8
    height: int = 16
    channels: int = 64
    kernel_size: int = 3
    dilations_h: Optional[List[int]] = None
    upsample_factors: List[int] = dataclasses.field(default_factory=lambda: [16, 16])
    row_orders: Optional[List[List[int]]] = None

    def __post_init__(self):
        if int(np.prod(self.upsample_factors)) != self.mel.hop_length:
            raise ValueError("product of upsample_factors must equal mel.hop_length")
        if self.dilations_h is not None and len(self.dilations_h) != self.n_layers:
            raise ValueError("dilations_h must have n_layers entries")
        if min(self.n_flows, self.n_layers, self.height, self.channels) < 1:
            raise ValueError("n_flows, n_layers, height and channels must be >= 1")
        if self.row_orders is not None and (len(self.row_orders) != self.n_flows or any(
                sorted(o) != list(range(self.height)) for o in self.row_orders)):
            raise ValueError("row_orders must hold n_flows permutations of range(height)")

    def height_dilations(self) -> List[int]:
        if self.dilations_h is not None:
            return list(self.dilations_h)
        base = DEFAULT_DILATIONS_H.get(self.height, [1] * 8)
        return (base * ((self.n_layers + len(base) - 1) // len(base)))[:self.n_layers]


def row_orders(height: int, n_flows: int) -> List[List[int]]:
    """Row order each flow runs in: cumulative reversals (first half) and half-reversals (second half)."""
    rev = list(range(height - 1, -1, -1))
    half = height // 2
    bip = list(range(half - 1, -1, -1)) + list(range(height - 1, half - 1, -1))
    orders, cur = [], list(range(height))
    for k in range(n_flows):
        orders.append(cur)
        p = rev if k < n_flows // 2 else bip
        cur = [cur[j] for j in p]
    return orders


class UpsampleNet(nn.Module):
    """Mel [B, n_mels, F] -> [B, n_mels, F * prod(factors)] by 2-D transposed convs (leaky ReLU 0.4).

    :meth:`fuse` (called by the exporter on its frozen copy) rewrites each transposed conv as the same
    linear map in "phase" form: a plain 3 x 3 conv with ``s`` output channels (output phase r of every
    input step) and an interleave (transpose + reshape). Exact up to float rounding; onnxruntime's single-channel
    ConvTranspose is slow (about 10 % of the float demo bundle's time, 20 % of an INT8 one's).
    """

    def __init__(self, factors: List[int]):
        super().__init__()
        self.factors = list(factors)
        self.layers = nn.ModuleList(
            weight_norm(nn.ConvTranspose2d(1, 1, (3, 2 * s), stride=(1, s), padding=(1, s // 2))) for s in factors)
        self.phased = False

    def fuse(self) -> None:
        """Precompute the phase-form weights [s, 1, 3, 3] (and keep the biases) of every layer.

        Odd factors (whose transposed conv yields one extra sample) keep the transposed conv.
        """
        if any(s % 2 for s in self.factors):
            return
        with torch.no_grad():
            for i, (layer, s) in enumerate(zip(self.layers, self.factors)):
                w = layer.weight.detach()[0, 0].flip(0)               # [3, 2s], height taps reversed
                k = torch.zeros(s, 1, 3, 3, dtype=w.dtype)
                p = s // 2
                for r in range(s):
                    for m in (-1, 0, 1):                              # input step q - m feeds output q*s + r
                        j = m * s + r + p
                        if 0 <= j < 2 * s:
                            k[r, 0, :, 1 - m] = w[:, j]
                self.register_buffer(f"phase_weight_{i}", k.to(w.device))   # in the export copy only
        self.phased = True

    def forward(self, mel):
        x = mel[:, None]
        for i, (layer, s) in enumerate(zip(self.layers, self.factors)):
            if not self.phased:
                x = layer(x)
            else:                                                     # [B, s, H, F] -> [B, 1, H, F * s]
                b, _, hgt, f = x.shape
                y = F.conv2d(x, getattr(self, f"phase_weight_{i}"), layer.bias.expand(s), padding=1)
                x = y.permute(0, 2, 3, 1).reshape(b, 1, hgt, f * s)
            x = F.leaky_relu(x, 0.4)
        return x[:, 0]


class WaveFlow(FlowVocoder):
    """WaveFlow vocoder. forward(audio [B, T], mel [B, n_mels, T / hop]) -> (z [B, T], logdet [B])."""

    family = "waveflow"

    def __init__(self, config: WaveFlowConfig):
        super().__init__(config)
        c = config
        self.upsample = UpsampleNet(c.upsample_factors)
        self.fold = Fold2d(c.height)
        flows = [Conjugate(WaveFlowCoupling(c.mel.n_mels, c.n_layers, c.channels, c.kernel_size,
                                            c.height_dilations()), order, dim=2)
                 for order in (c.row_orders or row_orders(c.height, c.n_flows))]
        self.flows = Sequential(flows)

    @property
    def length_multiple(self) -> int:
        return int(np.lcm(self.hop_length, self.config.height))

    def cond(self, mel: torch.Tensor) -> torch.Tensor:
        """Upsampled, folded conditioning [B, n_mels, h, T / h]."""
        up = self.upsample(mel)
        return self.fold(up)[0]

    def forward(self, audio, mel=None):
        check_lengths(audio, mel, self.hop_length)
        x, _ = self.fold(audio[:, None])
        z, logdet = self.flows(x, self.cond(mel))
        return self.fold.inverse(z)[0][:, 0], logdet

    def inverse(self, z, mel=None):
        check_lengths(z, mel, self.hop_length)
        x, _ = self.fold(z[:, None])
        audio, logdet = self.flows.inverse(x, self.cond(mel))
        return self.fold.inverse(audio)[0][:, 0], logdet

    def set_cached(self, cached: bool) -> None:
        """Choose the cached row-by-row inverse (True, default) or the plain h^2 reference."""
        for m in self.modules():
            if isinstance(m, WaveFlowCoupling):
                m.cached = cached


"""WaveGlow (Prenger et al., 2019): Glow-style flows over groups of 8 samples, conditioned by WN nets.

Paper config (12 flows, group 8, early output of 2 channels every 4 flows, WN of 8 layers with
256 channels, 80 mels) has 87.9M parameters.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from edgeflow.flows.base import Sequential
from edgeflow.flows.conv1x1 import Invertible1x1Conv, InvertibleLU1x1Conv
from edgeflow.flows.coupling import AffineCoupling
from edgeflow.flows.reshape import EarlySplit, Squeeze1d
from edgeflow.models.base import FlowVocoder, VocoderConfig, check_lengths


@dataclasses.dataclass
class WaveGlowConfig(VocoderConfig):
    """WaveGlow hyper-parameters.

    Attributes:
        n_flows: flows (each an invertible 1x1 conv followed by an affine coupling).
        n_group: samples squeezed into channels.
        n_early_every: an early output every this many flows.
        n_early_size: channels sent to z at each early output.
        wn_layers, wn_channels, wn_kernel_size: the WN conditioning net of each coupling.
        lu_conv: use the LU-parametrised 1x1 conv instead of the plain one.
    """

    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    wn_layers: int = 8
    wn_channels: int = 256
    wn_kernel_size: int = 3
    lu_conv: bool = False
    sigma_infer: float = 0.6

    def __post_init__(self):
        if self.n_group % 2 or self.n_group < 2:
            raise ValueError("n_group must be even and >= 2")
        n_early = (self.n_flows - 1) // self.n_early_every if self.n_early_every > 0 else 0
        if self.n_group - n_early * self.n_early_size < 2:
            raise ValueError("early outputs leave fewer than 2 channels")


class WaveGlow(FlowVocoder):
    """WaveGlow vocoder. forward(audio [B, T], mel [B, n_mels, T / hop]) -> (z [B, T], logdet [B])."""

    family = "waveglow"

    def __init__(self, config: WaveGlowConfig):
        super().__init__(config)
        c = config
        hop = c.mel.hop_length
        self.upsample = nn.ConvTranspose1d(c.mel.n_mels, c.mel.n_mels, 4 * hop, stride=hop)
        self.squeeze = Squeeze1d(c.n_group)
        self.flows = self._build(0, c.n_group)

    def _build(self, start: int, channels: int) -> Sequential:
        c = self.config
        blocks = []
        for k in range(start, c.n_flows):
            if k > start and c.n_early_every > 0 and k % c.n_early_every == 0:
                blocks.append(EarlySplit(c.n_early_size, self._build(k, channels - c.n_early_size)))
                break
            conv = InvertibleLU1x1Conv(channels) if c.lu_conv else Invertible1x1Conv(channels)
            blocks += [conv, AffineCoupling(channels, c.mel.n_mels * c.n_group, c.wn_layers, c.wn_channels,
                                            c.wn_kernel_size)]
        return Sequential(blocks)

    @property
    def length_multiple(self) -> int:
        import math
        return self.hop_length * self.config.n_group // math.gcd(self.hop_length, self.config.n_group)

    def cond(self, mel: torch.Tensor) -> torch.Tensor:
        """Upsampled, squeezed conditioning [B, n_mels * n_group, T / n_group]."""
        up = self.upsample(mel)[:, :, :mel.shape[2] * self.hop_length]
        return self.squeeze(up)[0]

    def forward(self, audio, mel=None):
        check_lengths(audio, mel, self.hop_length)
        x, _ = self.squeeze(audio[:, None])
        z, logdet = self.flows(x, self.cond(mel))
        return self.squeeze.inverse(z)[0][:, 0], logdet

    def inverse(self, z, mel=None):
        check_lengths(z, mel, self.hop_length)
        x, _ = self.squeeze(z[:, None])
        audio, logdet = self.flows.inverse(x, self.cond(mel))
        return self.squeeze.inverse(audio)[0][:, 0], logdet


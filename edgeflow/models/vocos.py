"""A frame-rate vocoder with an inverse-STFT head (Vocos, Siuzdak 2023): the "vocos" family.

HiFi-GAN upsamples a mel 256x through convolutions that run at up to the audio rate; this model stays at the
frame rate (one 1-D ConvNeXt stack over the mel frames) and predicts each frame's complex spectrum, which an
inverse STFT turns into audio. Its cost per second of audio is about 1/40 of the universal HiFi-GAN V1's.

The inverse STFT is written out (:class:`ISTFT`: one matmul with a windowed inverse-DFT basis, overlap-add by
slicing, division by the window envelope), so the same module trains in PyTorch and exports to ONNX, which has
no inverse STFT. Its frames sit where the project's log-mel frames sit (frame ``t`` covers samples
``t * hop - (n_fft - hop) / 2`` onwards, :func:`edgeflow.audio.mel.log_mel`), so the network predicts the
spectrum of the frame its input describes.

Shapes: mel [B, n_mels, F] -> audio [B, F * hop].
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeflow.audio.mel import MelConfig, hann_window
from edgeflow.core.config import ConfigBase
from edgeflow.models.base import MelConditioned


@dataclasses.dataclass
class VocosNetConfig(ConfigBase):
    """The backbone: ``layers`` ConvNeXt blocks of ``channels`` (depthwise conv ``kernel_size``, pointwise MLP
    ``hidden``); ``max_log_magnitude`` clamps the predicted log-magnitude (exp(4.6) = 100)."""

    channels: int = 256
    hidden: int = 768
    layers: int = 8
    kernel_size: int = 7
    max_log_magnitude: float = 4.6

    def __post_init__(self):
        for name in ("channels", "hidden", "layers", "kernel_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")


@dataclasses.dataclass
class VocosConfig(ConfigBase):
    """Stand-alone iSTFT vocoder: the mel front-end it expects (its n_fft / hop are the inverse STFT's) and its
    backbone."""

    mel: MelConfig = dataclasses.field(default_factory=MelConfig)
    net: VocosNetConfig = dataclasses.field(default_factory=VocosNetConfig)

    def __post_init__(self):
        if self.mel.win_length != self.mel.n_fft:
            raise ValueError("the inverse STFT needs mel.win_length == mel.n_fft")
        if self.mel.n_fft % self.mel.hop_length or self.mel.n_fft < 2 * self.mel.hop_length:
            raise ValueError("mel.n_fft must be a multiple of mel.hop_length, at least twice it")


class ISTFT(nn.Module):
    """Inverse STFT of per-frame spectra in the log-mel framing (periodic Hann window of ``n_fft``).

    Shapes: real, imag [B, n_fft // 2 + 1, F] -> audio [B, F * hop].
    """

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop, self.ratio = n_fft, hop, n_fft // hop
        k = np.arange(n_fft // 2 + 1)
        n = np.arange(n_fft)[:, None]
        scale = np.where((k == 0) | (k == n_fft // 2), 1.0, 2.0) / n_fft
        window = hann_window(n_fft)
        ang = 2 * np.pi * n * k / n_fft
        basis = np.concatenate([np.cos(ang) * scale, -np.sin(ang) * scale], axis=1) * window[:, None]
        self.register_buffer("basis", torch.from_numpy(basis.astype(np.float32)), persistent=False)
        self.register_buffer("window_sq", torch.from_numpy((window ** 2).astype(np.float32)), persistent=False)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, n_fft, F] -> [B, (F + ratio - 1) * hop]: frame t added at offset t * hop."""
        b, _, f = frames.shape
        parts = frames.reshape(b, self.ratio, self.hop, f)
        out = None
        for j in range(self.ratio):
            part = F.pad(parts[:, j], (j, self.ratio - 1 - j))
            out = part if out is None else out + part
        return out.transpose(1, 2).reshape(b, -1)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        frames = torch.matmul(self.basis, torch.cat([real, imag], dim=1))
        audio = self._overlap_add(frames)
        env = self._overlap_add(self.window_sq[None, :, None].expand(1, -1, real.shape[-1]))
        start = (self.n_fft - self.hop) // 2
        length = real.shape[-1] * self.hop
        return audio[:, start:start + length] / env[:, start:start + length].clamp_min(1e-6)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm, pointwise MLP (GELU), layer scale, residual. [B, C, F] -> [B, C, F]."""

    def __init__(self, channels: int, hidden: int, kernel_size: int):
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1, self.pw2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.transpose(1, 2)


class Vocos(MelConditioned, nn.Module):
    """iSTFT mel vocoder: :meth:`synthesize` maps mel [B, n_mels, F] to audio [B, F * hop]; no noise."""

    family = "vocos"

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.config = config
        net, mel = config.net, config.mel
        self.embed = nn.Conv1d(mel.n_mels, net.channels, net.kernel_size, padding=net.kernel_size // 2)
        self.norm_in = nn.LayerNorm(net.channels)
        self.blocks = nn.ModuleList([ConvNeXtBlock(net.channels, net.hidden, net.kernel_size)
                                     for _ in range(net.layers)])
        self.norm_out = nn.LayerNorm(net.channels)
        self.head = nn.Linear(net.channels, mel.n_fft + 2)
        self.istft = ISTFT(mel.n_fft, mel.hop_length)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop]."""
        x = self.norm_in(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.norm_out(x.transpose(1, 2))).transpose(1, 2)
        log_mag, phase = x.chunk(2, dim=1)
        mag = torch.exp(log_mag.clamp(max=self.config.net.max_log_magnitude))
        return self.istft(mag * torch.cos(phase), mag * torch.sin(phase))

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor, **_ignored) -> torch.Tensor:
        """Audio [B, F * hop] (deterministic: no noise; sigma/seed are ignored)."""
        return self.forward(mel)


def receptive_field(config: VocosConfig) -> Dict[str, int]:
    """Frames each side one output sample depends on: the embedding and every block's depthwise conv
    (kernel_size // 2 each), plus the frames the inverse STFT overlaps (n_fft / hop), plus one."""
    net = config.net
    n = (net.layers + 1) * (net.kernel_size // 2) + config.mel.n_fft // config.mel.hop_length + 1
    return {"left": n, "right": n, "net_left": n, "net_right": n}


def flops_per_frame(config: VocosConfig) -> float:
    """Multiply-adds x 2 per mel frame: embedding, blocks, head, the inverse-DFT matmul (overlap-add and the
    elementwise ops left out)."""
    net, mel = config.net, config.mel
    bins = mel.n_fft // 2 + 1
    macs = (mel.n_mels * net.channels * net.kernel_size
            + net.layers * (net.channels * net.kernel_size + 2 * net.channels * net.hidden)
            + net.channels * (mel.n_fft + 2) + mel.n_fft * 2 * bins)
    return 2.0 * macs


def _family():
    """The "vocos" Family (task "vocoder"): export (mel -> audio, no z/sigma inputs) and the cost model."""
    from edgeflow.models.family import ExportDecl, Family

    class VocosFamily(Family):
        name, task = "vocos", "vocoder"
        config_cls, model_cls = VocosConfig, Vocos
        export = ExportDecl(receptive_field=receptive_field, input_names=("mel",), wrapper=lambda m: m)
        free_fields = ()

        def flops_breakdown(self, config):
            return {"backbone+istft": flops_per_frame(config) * config.mel.sample_rate / config.mel.hop_length}

    return VocosFamily()


def register():
    """Register the "vocos" family once (idempotent); returns it."""
    from edgeflow.models.family import FAMILIES, register_family

    if "vocos" in FAMILIES:
        return FAMILIES.get("vocos")
    return register_family(_family())


register()

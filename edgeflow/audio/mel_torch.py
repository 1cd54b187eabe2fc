"""Log-mel spectrogram in torch, identical in convention to :func:`edgeflow.audio.mel.log_mel`."""

from __future__ import annotations

import numpy as np
import torch

from edgeflow.audio.mel import MelConfig, mel_filterbank


class LogMel(torch.nn.Module):
    """Torch log-mel front-end (differentiable; used in training losses and data loading).

    Shapes: audio [B, T] -> log-mel [B, n_mels, frames].
    """

    def __init__(self, cfg: MelConfig | None = None):
        super().__init__()
        self.cfg = cfg or MelConfig()
        self.register_buffer("basis", torch.from_numpy(np.asarray(mel_filterbank(self.cfg), dtype=np.float32)),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        squeeze = audio.dim() == 1
        if squeeze:
            audio = audio[None]
        pad = (cfg.n_fft - cfg.hop_length) // 2
        x = torch.nn.functional.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                          window=self.window.to(x.dtype), center=False, return_complex=True)
        mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
        mel = torch.matmul(self.basis.to(x.dtype), mag)
        out = torch.log(torch.clamp(mel, min=cfg.log_clamp))
        return out[0] if squeeze else out


def log_mel_torch(audio: torch.Tensor, cfg: MelConfig | None = None) -> torch.Tensor:
    """Functional form of :class:`LogMel`."""
    return LogMel(cfg).to(audio.device)(audio)

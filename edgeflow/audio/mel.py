"""Log-mel spectrogram in numpy (the runtime's front-end; no torch).

Convention (HiFi-GAN / WaveGlow): reflect-pad (n_fft - hop) / 2 on each side, STFT without
centering, periodic Hann window, magnitude sqrt(re^2 + im^2 + 1e-9), Slaney mel filterbank
(librosa's ``htk=False, norm='slaney'``), natural log with clamp. With this padding a clip of
T samples (T a multiple of hop) gives exactly T / hop frames.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import InputError


@dataclasses.dataclass
class MelConfig(ConfigBase):
    """Parameters of the log-mel front-end. Defaults are the HiFi-GAN/WaveGlow convention."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_clamp: float = 1e-5

    def __post_init__(self):
        if self.win_length > self.n_fft:
            raise ValueError("win_length must be <= n_fft")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError("n_fft - hop_length must be even")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError("need 0 <= fmin < fmax <= sample_rate / 2")


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=16)
def _mel_filterbank_cached(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fftfreqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """Slaney-normalised mel filterbank, float64 [n_mels, n_fft // 2 + 1] (equals librosa's)."""
    return _mel_filterbank_cached(cfg.sample_rate, cfg.n_fft, cfg.n_mels, float(cfg.fmin), float(cfg.fmax))


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window [n] (as torch.hann_window and scipy's fftbins=True)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def num_frames(num_samples: int, cfg: MelConfig) -> int:
    """Mel frames produced for a clip of ``num_samples`` samples."""
    return (num_samples + 2 * ((cfg.n_fft - cfg.hop_length) // 2) - cfg.n_fft) // cfg.hop_length + 1


def log_mel(audio: np.ndarray, cfg: MelConfig | None = None) -> np.ndarray:
    """Log-mel spectrogram of float audio.

    Args:
        audio: [T] or [B, T] float waveform in [-1, 1]; T >= n_fft // 2 + 1 (reflect padding).
        cfg: front-end parameters.

    Returns:
        float32 [n_mels, frames] or [B, n_mels, frames].
    """
    cfg = cfg or MelConfig()
    x = np.asarray(audio, dtype=np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    if x.ndim != 2:
        raise InputError(f"log_mel: expected [T] or [B, T] audio, got shape {tuple(np.shape(audio))}")
    pad = (cfg.n_fft - cfg.hop_length) // 2
    if x.shape[1] <= pad:
        raise InputError(f"log_mel: audio of {x.shape[1]} samples is too short (need > {pad})")
    x = np.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    n_frames = (x.shape[1] - cfg.n_fft) // cfg.hop_length + 1
    win = np.zeros(cfg.n_fft)
    off = (cfg.n_fft - cfg.win_length) // 2
    win[off:off + cfg.win_length] = hann_window(cfg.win_length)
    idx = np.arange(cfg.n_fft)[None, :] + cfg.hop_length * np.arange(n_frames)[:, None]
    frames = x[:, idx] * win                                # [B, frames, n_fft]
    spec = np.fft.rfft(frames, n=cfg.n_fft, axis=-1)        # [B, frames, bins]
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = np.einsum("mf,btf->bmt", mel_filterbank(cfg), mag)
    out = np.log(np.maximum(mel, cfg.log_clamp)).astype(np.float32)
    return out[0] if squeeze else out

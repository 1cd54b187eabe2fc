"""Wav I/O through soundfile, with resampling, validation and atomic writes. No torch."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from edgeflow.core.errors import AudioError, short_reason
from edgeflow.core.io import atomic_path

#: Longest audio edgeflow accepts by default (seconds). Longer input is refused, not truncated.
MAX_SECONDS = 600.0


def check_audio(audio: np.ndarray, what: str = "audio", max_seconds: float | None = None,
                sample_rate: int | None = None) -> np.ndarray:
    """Validate a waveform: 1-D, non-empty, finite. Returns it as float32.

    Raises:
        AudioError: empty, NaN/Inf, or longer than ``max_seconds``.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"{what}: expected mono 1-D audio, got shape {tuple(audio.shape)}")
    if audio.size == 0:
        raise AudioError(f"{what}: audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{what}: audio contains NaN or Inf")
    if max_seconds is not None and sample_rate and audio.size / sample_rate > max_seconds:
        raise AudioError(f"{what}: audio is {audio.size / sample_rate:.0f} s long, more than the "
                         f"{max_seconds:.0f} s limit")
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy), float32 in and out. Shape [T] -> [T * target_sr / orig_sr]."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(orig_sr), int(target_sr))
    out = resample_poly(audio.astype(np.float64), target_sr // g, orig_sr // g)
    return out.astype(np.float32)


def load_wav(path: str | Path, sample_rate: int | None = None,
             max_seconds: float | None = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 in [-1, 1], resampled to ``sample_rate`` if given.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: target rate; None keeps the file's rate.
        max_seconds: refuse longer files (None: no limit).

    Returns:
        (audio [T] float32, sample rate).

    Raises:
        AudioError: unreadable, empty, NaN/Inf or too long.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
        if max_seconds is not None and info.frames / max(info.samplerate, 1) > max_seconds:
            raise AudioError(f"{path}: audio is {info.frames / info.samplerate:.0f} s long, more "
                             f"than the {max_seconds:.0f} s limit")
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"cannot read audio file {path}: {short_reason(exc)}") from None
    audio = data.mean(axis=1)
    check_audio(audio, what=str(path))
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    return audio, int(sr)


def save_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM wav, atomically. Samples are clipped to [-1, 1]."""
    import soundfile as sf

    audio = check_audio(np.asarray(audio, dtype=np.float32).reshape(-1), what=f"audio for {path}")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")

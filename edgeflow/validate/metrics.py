"""Objective audio metrics (numpy/scipy only). Their names, definitions and directions are listed once,
in :mod:`edgeflow.validate.table` (which also holds ``compare`` / ``no_reference``).

Every metric takes float waveforms in [-1, 1]. Full-reference metrics take ``(ref, test, sr)``;
when the two lengths differ (a vocoder returns ``frames * hop`` samples) both are cut to the
shorter one, which is harmless for the sub-hop differences copy synthesis produces; unaligned
audio (a delay, another take) needs :func:`mcd` with ``use_dtw=True`` instead.

Functions: :func:`mr_stft_distance` (``mr_stft``), :func:`log_mel_l1` (``mel_l1``), :func:`mcd`
(``mcd``: frames index by index; ``mcd_dtw``: DTW-aligned), :func:`lsd`, :func:`snr`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from edgeflow.audio.io import check_audio
from edgeflow.audio.mel import MelConfig, hann_window, log_mel
from edgeflow.audio.snr import snr_db
from edgeflow.core.errors import InputError

#: (n_fft, hop, win) of the multi-resolution STFT distance (Parallel WaveGAN / HiFi-GAN style).
RESOLUTIONS: Tuple[Tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))

_MAG_FLOOR = 1e-7
_MCD_K = 10.0 / math.log(10.0) * math.sqrt(2.0)


def _pair(ref: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Validate two waveforms and cut both to the shorter length (float64)."""
    ref = check_audio(ref, "reference audio").astype(np.float64)
    test = check_audio(test, "test audio").astype(np.float64)
    n = min(ref.size, test.size)
    return ref[:n], test[:n]


def stft_magnitude(audio: np.ndarray, n_fft: int, hop: int, win: int) -> np.ndarray:
    """|STFT| [frames, n_fft // 2 + 1], centred frames (reflect padding of n_fft // 2), periodic Hann."""
    x = np.asarray(audio, dtype=np.float64)
    pad = n_fft // 2
    x = np.pad(x, pad, mode="reflect" if x.size > pad else "constant")
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    window = np.zeros(n_fft)
    off = (n_fft - win) // 2
    window[off:off + win] = hann_window(win)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * window, axis=-1))


def mr_stft_distance(ref: np.ndarray, test: np.ndarray, sr: int = 22050,
                     resolutions: Sequence[Tuple[int, int, int]] = RESOLUTIONS,
                     return_parts: bool = False):
    """Multi-resolution STFT distance. Lower is better; 0 for identical signals; unitless.

    For each (n_fft, hop, win): spectral convergence ``||S_r - S_t||_F / ||S_r||_F`` plus the
    mean absolute difference of natural-log magnitudes (floored at 1e-7). The result is the
    mean over resolutions of SC + log-magnitude. ``sr`` is unused (kept for a uniform API).

    Returns:
        float, or with ``return_parts`` a dict ``{"total", "sc", "logmag"}`` (means over resolutions).
    """
    ref, test = _pair(ref, test)
    sc_all, lm_all = [], []
    for n_fft, hop, win in resolutions:
        r, t = stft_magnitude(ref, n_fft, hop, win), stft_magnitude(test, n_fft, hop, win)
        num, den = np.linalg.norm(r - t), np.linalg.norm(r)
        sc_all.append(0.0 if num == 0 else (num / den if den > 0 else math.inf))
        lm_all.append(float(np.mean(np.abs(np.log(np.maximum(r, _MAG_FLOOR)) - np.log(np.maximum(t, _MAG_FLOOR))))))
    sc, lm = float(np.mean(sc_all)), float(np.mean(lm_all))
    return {"total": sc + lm, "sc": sc, "logmag": lm} if return_parts else sc + lm


def _mel_config(sr: int, cfg: Optional[MelConfig]) -> MelConfig:
    if cfg is not None:
        if cfg.sample_rate != sr:
            raise InputError(f"mel config is for {cfg.sample_rate} Hz audio, got {sr} Hz")
        return cfg
    return MelConfig(sample_rate=int(sr), fmax=min(8000.0, sr / 2))


def log_mel_l1(ref: np.ndarray, test: np.ndarray, sr: int = 22050, cfg: Optional[MelConfig] = None) -> float:
    """Mean absolute difference of edgeflow log-mel spectrograms (natural log of mel magnitude).

    Lower is better; 0 for identical signals; unit: nats. ``cfg`` defaults to the HiFi-GAN
    convention (80 bands, n_fft 1024, hop 256, fmax 8 kHz) at ``sr``.
    """
    ref, test = _pair(ref, test)
    cfg = _mel_config(sr, cfg)
    return float(np.mean(np.abs(log_mel(ref, cfg) - log_mel(test, cfg))))


def mel_cepstrum(audio: np.ndarray, sr: int = 22050, order: int = 24, cfg: Optional[MelConfig] = None) -> np.ndarray:
    """Mel-cepstral coefficients c_0..c_order [frames, order + 1] of the audio.

    ``c_d = 1/N sum_n L_n cos(pi d (n + 1/2) / N)`` over the N mel bands of edgeflow's
    natural-log mel *magnitude* spectrogram L (a DCT-II divided by 2N), which is the real
    cepstrum's scaling: a log spectrum ``c_0 + 2 sum_d c_d cos(d w)`` sampled on the mel axis
    gives back c_d. (The orthonormal DCT would be sqrt(2N) times larger.)"""
    from scipy.fft import dct

    cfg = _mel_config(sr, cfg)
    if order >= cfg.n_mels:
        raise InputError(f"mel-cepstrum order {order} needs more than {cfg.n_mels} mel bands")
    lm = log_mel(check_audio(audio), cfg).astype(np.float64)          # [n_mels, frames]
    return (dct(lm, type=2, axis=0)[:order + 1] / (2.0 * cfg.n_mels)).T


def dtw(x: np.ndarray, y: np.ndarray) -> Tuple[float, np.ndarray]:
    """Dynamic time warping of feature sequences x [N, D] and y [M, D] (Euclidean frame distance).

    Steps (1,1), (1,0), (0,1) with equal weights; the accumulated cost is filled one
    anti-diagonal at a time (vectorised), then backtracked.

    Returns:
        (total path cost, path [L, 2] of (i, j) index pairs from (0, 0) to (N - 1, M - 1)).
    """
    from scipy.spatial.distance import cdist

    x, y = np.atleast_2d(x), np.atleast_2d(y)
    n, m = len(x), len(y)
    cost = cdist(x, y)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for s in range(2, n + m + 1):
        i = np.arange(max(1, s - m), min(n, s - 1) + 1)
        j = s - i
        best = np.minimum(acc[i - 1, j - 1], np.minimum(acc[i - 1, j], acc[i, j - 1]))
        acc[i, j] = cost[i - 1, j - 1] + best
    i, j, path = n, m, [(n - 1, m - 1)]
    while (i, j) != (1, 1):
        steps = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
        i, j = min(steps, key=lambda p: acc[p])           # ties prefer the diagonal (listed first)
        path.append((i - 1, j - 1))
    return float(acc[n, m]), np.array(path[::-1])


def mcd_order(cfg: Optional[MelConfig] = None, order: int = 24) -> int:
    """The cepstral order MCD uses with this front-end: ``order``, or ``n_mels - 1`` when it has fewer bands."""
    return order if cfg is None else max(1, min(order, cfg.n_mels - 1))


def mcd(ref: np.ndarray, test: np.ndarray, sr: int = 22050, order: int = 24, use_dtw: bool = False,
        cfg: Optional[MelConfig] = None) -> float:
    """Mel-cepstral distortion in dB. Lower is better; 0 for identical signals.

    ``MCD = 10 / ln 10 * sqrt(2 * sum_{d=1..order} (c_d - c'_d)^2)`` per frame (c_0, the
    energy term, excluded), averaged over frames, with c from :func:`mel_cepstrum` (natural
    log of mel *magnitude*, so the usual formula applies unchanged). Values from other toolkits
    (SPTK mel-cepstra, other orders) are not directly comparable.

    Args:
        use_dtw: align the two frame sequences with :func:`dtw` first (for audio that is not
            sample-aligned: a delay, another synthesiser); otherwise frames are compared
            index by index after cutting both to the shorter length.
    """
    ref = check_audio(ref, "reference audio")
    test = check_audio(test, "test audio")
    cr, ct = mel_cepstrum(ref, sr, order, cfg)[:, 1:], mel_cepstrum(test, sr, order, cfg)[:, 1:]
    if use_dtw:
        _, path = dtw(cr, ct)
        cr, ct = cr[path[:, 0]], ct[path[:, 1]]
    else:
        n = min(len(cr), len(ct))
        cr, ct = cr[:n], ct[:n]
    return float(_MCD_K * np.mean(np.sqrt(np.sum((cr - ct) ** 2, axis=1))))


def mcd_dtw(ref: np.ndarray, test: np.ndarray, sr: int = 22050, order: int = 24) -> float:
    """:func:`mcd` with DTW alignment (dB, lower is better)."""
    return mcd(ref, test, sr, order, use_dtw=True)


def lsd(ref: np.ndarray, test: np.ndarray, sr: int = 22050, n_fft: int = 2048, hop: int = 512) -> float:
    """Log-spectral distance in dB. Lower is better; 0 for identical signals.

    Per frame ``sqrt(mean_f (10 log10(P_ref / P_test))^2)`` over power spectra (floored at
    1e-10), averaged over frames.
    """
    ref, test = _pair(ref, test)
    pr = stft_magnitude(ref, n_fft, hop, n_fft) ** 2 + 1e-10
    pt = stft_magnitude(test, n_fft, hop, n_fft) ** 2 + 1e-10
    return float(np.mean(np.sqrt(np.mean((10.0 * np.log10(pr / pt)) ** 2, axis=1))))


def snr(ref: np.ndarray, test: np.ndarray, sr: int = 22050) -> float:
    """Signal-to-noise ratio in dB (:func:`edgeflow.audio.snr.snr_db`, capped at
    :data:`~edgeflow.audio.snr.SNR_CAP_DB`, the value for identical signals). Higher is better. Only
    meaningful for sample-aligned audio (e.g. the same model and noise before/after an optimisation
    pass), not for vocoder vs recording."""
    return snr_db(*_pair(ref, test))

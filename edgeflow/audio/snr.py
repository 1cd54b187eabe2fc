"""Sample-aligned distances between a reference signal and an estimate of it (numpy only, no torch).

Only meaningful for sample-aligned audio (the same model and noise before/after an optimisation, a
bundle against its PyTorch source, a whole against a streamed synthesis), not for a vocoder against
a recording.

:func:`snr_db` is the project's one SNR: the quantization budgets, the streaming-context check, the
evaluation's ``snr_vs_ref`` and the ``snr`` metric all call it, with the one cap :data:`SNR_CAP_DB`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from edgeflow.audio.mel import log_mel

#: The SNR reported for identical signals and the most ever reported (dB). 120 dB is far below float32
#: rounding noise (about 150 dB for audio near full scale) and far above any audible difference, so every
#: pair that is identical up to rounding reads the same, and reports stay finite (valid JSON).
SNR_CAP_DB = 120.0


def snr_db(reference: np.ndarray, estimate: np.ndarray, cap_db: Optional[float] = SNR_CAP_DB) -> float:
    """``10 log10(sum reference^2 / sum (estimate - reference)^2)`` in dB (float64), at most ``cap_db``.

    Args:
        reference: waveform (any shape, any float dtype).
        estimate: waveform of the same shape.
        cap_db: the result's upper bound and the value for identical signals (default
            :data:`SNR_CAP_DB`; None: no bound, ``inf`` for identical signals).

    Returns:
        dB, higher is better; ``-inf`` for a silent reference with a non-zero error, or NaN/Inf samples.

    Raises:
        ValueError: the shapes differ.
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"snr_db: shapes differ ({ref.shape} vs {est.shape})")
    cap = math.inf if cap_db is None else float(cap_db)
    noise = float(np.sum((est - ref) ** 2))
    if not math.isfinite(noise):                  # NaN/Inf samples: as bad as it gets
        return -math.inf
    if noise == 0.0:
        return cap
    signal = float(np.sum(ref ** 2))
    if signal == 0.0:
        return -math.inf
    return min(cap, 10.0 * math.log10(signal / noise))


def log_mel_l1(ref: np.ndarray, est: np.ndarray, cfg: Any) -> float:
    """Mean absolute difference (nats) of the two signals' log-mel spectrograms (front-end ``cfg``, a MelConfig)."""
    return float(np.mean(np.abs(log_mel(np.asarray(ref, dtype=np.float64), cfg)
                                - log_mel(np.asarray(est, dtype=np.float64), cfg))))

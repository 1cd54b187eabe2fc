"""Does the reference model produce speech at all? A plain check for reports, so that "budget held" (the
optimized bundle matches the unoptimized model) is not read as "quality kept".

:func:`voiced_fraction` is a small autocorrelation pitch tracker (numpy only); :func:`sanity_check`
compares the unoptimized model's voiced fraction, WER and DNSMOS with the ground truth's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

#: the reference is flagged when its voiced fraction is below this share of the ground truth's
MIN_VOICED_RATIO = 0.5
#: ... or its word-error rate is above this
MAX_WER = 0.8
#: ... or its DNSMOS is this far below the ground truth's
MAX_DNSMOS_GAP = 1.0


def voiced_fraction(audio: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 400.0, frame_s: float = 0.04,
                    hop_s: float = 0.01, threshold: float = 0.5, silence_db: float = -35.0) -> float:
    """Fraction of frames with a pitch (0..1).

    A frame (``frame_s`` long, every ``hop_s``) is voiced when it is not silent (RMS above ``silence_db``
    relative to the loudest frame) and its normalised autocorrelation (mean removed, divided by the
    lag-0 value and corrected for the shrinking overlap) peaks above ``threshold`` at a lag between
    ``sr / fmax`` and ``sr / fmin``: a periodic signal does, noise does not.

    Args:
        audio: waveform [T], float.
        sr: sample rate (Hz).

    Returns:
        voiced frames / all frames (0.0 for audio shorter than one frame or all silent).
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n, hop = int(round(frame_s * sr)), int(round(hop_s * sr))
    if x.size < n or n < 4:
        return 0.0
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    loud = rms > max(rms.max() * 10 ** (silence_db / 20), 1e-5)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(frames * np.hanning(n), size, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, size, axis=1)[:, :n]
    win_ac = np.fft.irfft(np.abs(np.fft.rfft(np.hanning(n), size)) ** 2, size)[:n]    # the window's own decay
    lo, hi = max(1, int(sr / fmax)), min(n - 1, int(sr / fmin))
    norm = ac[:, lo:hi + 1] / np.maximum(ac[:, :1], 1e-20) / np.maximum(win_ac[lo:hi + 1] / win_ac[0], 1e-3)
    voiced = loud & (norm.max(axis=1) > threshold)
    return float(voiced.mean())


def sanity_check(truth: Sequence[np.ndarray], reference: Sequence[np.ndarray], sr: int,
                 reference_scores: Dict[str, float], truth_scores: Dict[str, float]) -> Dict[str, Any]:
    """The reference model's voiced fraction, WER and DNSMOS next to the ground truth's, with a warning.

    Args:
        truth: ground-truth clips; reference: the unoptimized model's outputs for them.
        reference_scores, truth_scores: table metrics of each (``wer``, ``dnsmos`` used when present).

    Returns:
        ``{"voiced_fraction": {"ground_truth", "unoptimized"}, "wer": {...}, "dnsmos": {...},
        "warning": str or None}``.
    """
    out: Dict[str, Any] = {"voiced_fraction": {
        "ground_truth": float(np.mean([voiced_fraction(a, sr) for a in truth])),
        "unoptimized": float(np.mean([voiced_fraction(a, sr) for a in reference]))}}
    for m in ("wer", "dnsmos"):
        if m in reference_scores or m in truth_scores:
            out[m] = {"ground_truth": truth_scores.get(m), "unoptimized": reference_scores.get(m)}
    out["warning"] = _warning(out)
    return out


def _warning(s: Dict[str, Any]) -> Optional[str]:
    why = []
    vf = s["voiced_fraction"]
    if vf["unoptimized"] < MIN_VOICED_RATIO * vf["ground_truth"]:
        why.append(f"voiced frames {vf['unoptimized']:.2f} against {vf['ground_truth']:.2f} in the ground truth")
    wer = (s.get("wer") or {}).get("unoptimized")
    if wer is not None and wer > MAX_WER:
        why.append(f"WER {wer:.2f}")
    mos = s.get("dnsmos") or {}
    if None not in (mos.get("unoptimized"), mos.get("ground_truth")) and \
            mos["unoptimized"] < mos["ground_truth"] - MAX_DNSMOS_GAP:
        why.append(f"DNSMOS {mos['unoptimized']:.2f} against {mos['ground_truth']:.2f}")
    if not why:
        return None
    return ("the unoptimized model does not produce intelligible speech on these clips (" + "; ".join(why) +
            "): 'budget held' means the optimized bundle matches this model, not that it sounds like speech")


#: a voice (no ground truth) is flagged when its voiced fraction is below this (read speech: 0.4-0.7) ...
MIN_VOICED_TTS = 0.2
#: ... or its DNSMOS P.808 is below this (clean read speech scores 3.5-4.2; noise and buzz below 2.5)
MIN_DNSMOS_TTS = 2.5


def tts_sanity(audios: Sequence[np.ndarray], sr: int, scores: Dict[str, float]) -> Dict[str, Any]:
    """Does a text-to-speech reference (the unoptimized voice) speak? Absolute thresholds, no ground truth.

    Args:
        audios: its output per evaluation sentence; scores: its ``wer`` and ``dnsmos`` (P.808).

    Returns:
        ``{"voiced_fraction", "wer", "dnsmos", "thresholds", "warning": str or None}``.
    """
    vf = float(np.mean([voiced_fraction(a, sr) for a in audios])) if len(audios) else 0.0
    out = {"voiced_fraction": vf, "wer": scores.get("wer"), "dnsmos": scores.get("dnsmos"),
           "thresholds": {"voiced_fraction": MIN_VOICED_TTS, "wer": MAX_WER, "dnsmos": MIN_DNSMOS_TTS}}
    why = []
    if vf < MIN_VOICED_TTS:
        why.append(f"voiced frames {vf:.2f} (read speech: 0.4-0.7)")
    if out["wer"] is not None and out["wer"] > MAX_WER:
        why.append(f"WER {out['wer']:.2f}")
    if out["dnsmos"] is not None and out["dnsmos"] < MIN_DNSMOS_TTS:
        why.append(f"DNSMOS P.808 {out['dnsmos']:.2f}")
    out["warning"] = None if not why else (
        "the unoptimized voice does not produce intelligible speech on these sentences (" + "; ".join(why) +
        "): 'budget held' means the optimized bundle matches this voice, not that it sounds like speech")
    return out

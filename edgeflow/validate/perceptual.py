"""Perceptual and intelligibility metrics through optional packages, all at 16 kHz.

- PESQ-WB (``pesq``, ITU-T P.862.2): MOS-LQO 1.04..4.64, higher is better.
- STOI (``pystoi``): 0..1, higher is better.
- DNSMOS (``speechmos``): no-reference MOS estimates 1..5, higher is better: P.835 ``sig``,
  ``bak``, ``ovrl`` and the P.808 ``p808`` model. speechmos tiles clips shorter than 9.01 s
  and averages 9.01 s windows hopped by 1 s.
- Word-error rate of pocketsphinx's bundled US-English model (lower is better). It shares
  CMU's dictionary with the flite/Festival voices, which flatters them; use it to compare
  vocoders on the same clips, not as an absolute intelligibility figure.

Input audio at any rate is resampled to 16 kHz with :func:`edgeflow.audio.io.resample`. Each
function raises :class:`~edgeflow.core.errors.DependencyError` when its package is missing.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Dict, List, Sequence

import numpy as np

from edgeflow.audio.io import check_audio, resample
from edgeflow.core.errors import AudioError, DependencyError, InputError

SR_16K = 16000

_decoder = None


def require(module: str, package: str, what: str):
    """Import ``module`` or raise a one-line DependencyError naming the PyPI ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DependencyError(f"{what} needs the Python package {package!r} (pip install {package})") from None


def to_16k(audio: np.ndarray, sr: int, what: str = "audio") -> np.ndarray:
    """Validated float32 mono audio resampled to 16 kHz."""
    return resample(check_audio(audio, what), int(sr), SR_16K)


def _pair_16k(ref, test, sr):
    r, t = to_16k(ref, sr, "reference audio"), to_16k(test, sr, "test audio")
    n = min(r.size, t.size)
    return r[:n], t[:n]


def pesq_wb(ref: np.ndarray, test: np.ndarray, sr: int = 22050) -> float:
    """Wide-band PESQ (P.862.2) MOS-LQO of ``test`` against ``ref``; 1.04..4.64, higher is better.

    Raises:
        AudioError: PESQ finds no speech in the reference (or the clip is too short).
        DependencyError: ``pesq`` is not installed.
    """
    pesq = require("pesq", "pesq", "PESQ")
    r, t = _pair_16k(ref, test, sr)
    try:
        return float(pesq.pesq(SR_16K, r, t, "wb"))
    except pesq.PesqError as exc:
        raise AudioError(f"PESQ cannot score this clip: {type(exc).__name__} {exc}".strip()) from None


def stoi(ref: np.ndarray, test: np.ndarray, sr: int = 22050, extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended``) of ``test`` against ``ref``; 0..1, higher is better."""
    pystoi = require("pystoi", "pystoi", "STOI")
    r, t = _pair_16k(ref, test, sr)
    return float(pystoi.stoi(r, t, SR_16K, extended=extended))


def dnsmos(audio: np.ndarray, sr: int = 22050) -> Dict[str, float]:
    """DNSMOS of one clip: ``{"ovrl", "sig", "bak", "p808"}``, MOS 1..5, higher is better.

    ``ovrl``/``sig``/``bak`` are the P.835 model's overall, signal and background scores;
    ``p808`` is the P.808 overall-quality model. No reference needed.
    """
    require("onnxruntime", "onnxruntime", "DNSMOS")
    mod = require("speechmos.dnsmos", "speechmos", "DNSMOS")
    a = np.clip(to_16k(audio, sr), -1.0, 1.0).astype(np.float32)
    res = mod.run(a, sr=SR_16K)
    return {"ovrl": float(res["ovrl_mos"]), "sig": float(res["sig_mos"]), "bak": float(res["bak_mos"]),
            "p808": float(res["p808_mos"])}


def _get_decoder():
    global _decoder
    if _decoder is None:
        ps = require("pocketsphinx", "pocketsphinx", "word-error rate")
        _decoder = ps.Decoder(logfn=os.devnull)
    return _decoder


def transcribe(audio: np.ndarray, sr: int = 22050) -> str:
    """Pocketsphinx transcript (default US-English acoustic model, language model and
    dictionary) of the audio, fed as 16 kHz int16; normalised with :func:`normalize_text`.

    A pure function of the audio: the shared decoder's feature front end (its noise estimate
    and cepstral mean) is reset before every utterance, so a transcript does not depend on
    what was transcribed before it (without the reset, pocketsphinx 5 carries that state over
    and the same clip can decode differently after a different predecessor).
    """
    a = to_16k(audio, sr)
    pcm = (np.clip(a, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    dec = _get_decoder()
    dec.reinit_feat()
    dec.start_utt()
    dec.process_raw(pcm.tobytes(), full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return normalize_text(hyp.hypstr if hyp is not None else "")


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation (apostrophes inside words kept), pronunciation-variant marks
    like ``word(2)`` and filler tokens like ``<sil>`` / ``[noise]``, collapse whitespace."""
    text = text.lower()
    text = re.sub(r"<[^>]*>|\[[^\]]*\]|\(\d+\)", " ", text)
    text = re.sub(r"[^a-z0-9']+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitutions + deletions + insertions)."""
    prev: List[int] = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(ref_text: str, hyp_text: str) -> float:
    """Word-error rate = word edit distance / reference words, after :func:`normalize_text`.
    0 is perfect, lower is better; can exceed 1 with many insertions.

    Raises:
        InputError: the reference has no words.
    """
    ref, hyp = normalize_text(ref_text).split(), normalize_text(hyp_text).split()
    if not ref:
        raise InputError("word-error rate needs a non-empty reference transcript")
    return edit_distance(ref, hyp) / len(ref)


def asr_wer(audio: np.ndarray, sr: int, text: str) -> Dict[str, object]:
    """Transcribe ``audio`` with pocketsphinx and score it against ``text``:
    ``{"wer": float, "hypothesis": str}``."""
    hyp = transcribe(audio, sr)
    return {"wer": wer(text, hyp), "hypothesis": hyp}


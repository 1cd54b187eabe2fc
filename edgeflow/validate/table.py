"""The one metric table: name -> definition, direction, unit, what it needs, and how to score one clip.

The quality budget (:mod:`.budget`), the evaluation (:func:`edgeflow.validate.evaluate.score`), the
report and :func:`compare` all read this table, so a name means one thing everywhere: ``mel_l1`` is
the log-mel L1 of the model's own front-end, ``mcd`` compares frames index by index (sample-aligned
audio of the same length, as copy synthesis gives), ``mcd_dtw`` aligns them by DTW first.

``kind``: ``"reference"`` (scored against the ground-truth clip), ``"no_reference"`` (the output
alone) or ``"transcript"`` (against the clip's transcript; clips without one are not scored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.validate import metrics as M
from edgeflow.validate import perceptual as P

#: clip scorer: (ground truth [T], output [T], sample rate, MelConfig or None, transcript) -> value or None
Scorer = Callable[[np.ndarray, np.ndarray, int, object, str], Optional[float]]


_last_dnsmos: Optional[Tuple[tuple, Dict[str, float]]] = None


def _dnsmos(audio: np.ndarray, sr: int) -> Dict[str, float]:
    """:func:`edgeflow.validate.perceptual.dnsmos` of one clip, remembered for the last clip scored: ``dnsmos``
    and ``dnsmos_p808`` read one speechmos run (it gives every score at once)."""
    global _last_dnsmos
    key = (P.dnsmos, sr, hashlib.blake2b(np.ascontiguousarray(audio).tobytes(), digest_size=16).digest())
    last = _last_dnsmos
    if last is None or last[0] != key:
        last = _last_dnsmos = (key, P.dnsmos(audio, sr))
    return last[1]


@dataclasses.dataclass(frozen=True)
class Metric:
    """One row of the table.

    Attributes:
        name: the one name used in budgets, reports and JSON.
        definition: what is computed, in one sentence (printed in reports).
        higher_is_better: direction; a budget allows this much fall (higher) or rise (lower).
        unit: unit of the value ("" when unitless).
        kind: "reference", "no_reference" or "transcript" (see the module docstring).
        requires: (import name, PyPI package) pairs the scorer needs.
        score: the clip scorer (see :data:`Scorer`).
        budget: whether a quality budget may name it.
    """

    name: str
    definition: str
    higher_is_better: bool
    unit: str
    kind: str
    requires: Tuple[Tuple[str, str], ...]
    score: Scorer
    budget: bool = True


def _wer(truth, out, sr, cfg, text):
    return P.asr_wer(out, sr, text)["wer"] if text else None


TABLE: Dict[str, Metric] = {m.name: m for m in (
    Metric("pesq", "PESQ wide-band (ITU-T P.862.2, pesq package) MOS-LQO against the ground truth, at 16 kHz; "
           "1.04..4.64", True, "MOS-LQO", "reference", (("pesq", "pesq"),),
           lambda t, o, sr, cfg, text: P.pesq_wb(t, o, sr)),
    Metric("stoi", "STOI (pystoi) against the ground truth, at 16 kHz; 0..1", True, "", "reference",
           (("pystoi", "pystoi"),), lambda t, o, sr, cfg, text: P.stoi(t, o, sr)),
    Metric("mel_l1", "mean |log-mel difference| against the ground truth with the model's own mel front-end "
           "(natural log of mel magnitude)", False, "nats", "reference", (),
           lambda t, o, sr, cfg, text: M.log_mel_l1(t, o, sr, cfg)),
    Metric("mr_stft", "multi-resolution STFT distance against the ground truth (spectral convergence + "
           "log-magnitude L1, FFT 512/1024/2048); 0 = equal", False, "", "reference", (),
           lambda t, o, sr, cfg, text: M.mr_stft_distance(t, o, sr)),
    Metric("mcd", "mel-cepstral distortion c1..c24 (c1..c(n_mels-1) for front-ends of 24 mel bands or fewer) "
           "against the ground truth, frames compared index by index (same-length, sample-aligned audio)", False,
           "dB", "reference", (), lambda t, o, sr, cfg, text: M.mcd(t, o, sr, M.mcd_order(cfg), cfg=cfg)),
    Metric("mcd_dtw", "mel-cepstral distortion c1..c24 (c1..c(n_mels-1) for front-ends of 24 mel bands or fewer) "
           "against the ground truth after DTW alignment of the frames", False, "dB", "reference", (),
           lambda t, o, sr, cfg, text: M.mcd(t, o, sr, M.mcd_order(cfg), use_dtw=True, cfg=cfg)),
    Metric("lsd", "log-spectral distance against the ground truth (power spectra, FFT 2048, hop 512)", False, "dB",
           "reference", (), lambda t, o, sr, cfg, text: M.lsd(t, o, sr)),
    Metric("snr", "signal-to-noise ratio against the ground truth (meaningful for sample-aligned audio only)",
           True, "dB", "reference", (), lambda t, o, sr, cfg, text: M.snr(t, o, sr), budget=False),
    Metric("dnsmos", "DNSMOS P.835 overall MOS of the output alone (speechmos), 1..5", True, "MOS",
           "no_reference", (("speechmos", "speechmos"), ("onnxruntime", "onnxruntime")),
           lambda t, o, sr, cfg, text: _dnsmos(o, sr)["ovrl"]),
    Metric("dnsmos_p808", "DNSMOS P.808 overall-quality MOS of the output alone (speechmos), 1..5: the figure the "
           "benchmarks and the TTS reports give", True, "MOS", "no_reference",
           (("speechmos", "speechmos"), ("onnxruntime", "onnxruntime")),
           lambda t, o, sr, cfg, text: _dnsmos(o, sr)["p808"]),
    Metric("wer", "word-error rate of pocketsphinx's US-English model on the output against the clip's "
           "transcript (clips without a transcript are not scored)", False, "", "transcript",
           (("pocketsphinx", "pocketsphinx"),), _wer),
)}

#: metrics a quality budget may name
BUDGET_METRICS = tuple(k for k, m in TABLE.items() if m.budget)


def get(name: str) -> Metric:
    """The table row of ``name``. Raises ConfigError naming the known metrics."""
    if name not in TABLE:
        raise ConfigError(f"unknown metric {name!r} (known: {', '.join(TABLE)})")
    return TABLE[name]


def missing_package(name: str) -> Optional[str]:
    """The PyPI package metric ``name`` needs and cannot import here, or None."""
    for module, package in get(name).requires:
        if importlib.util.find_spec(module) is None:
            return package
    return None


def why_unscorable(name: str, texts: Sequence[str]) -> Optional[str]:
    """Why metric ``name`` cannot be scored on clips with these transcripts (None: it can)."""
    pkg = missing_package(name)
    if pkg:
        return f"{name} needs the Python package {pkg!r} (pip install {pkg})"
    if get(name).kind == "transcript" and not any(texts):
        return (f"{name} needs transcripts of the evaluation clips (a corpus's metadata.csv or transcripts.txt "
                f"'id|text' beside the wavs; clips cropped to 4 s lose theirs), and none of these clips has one")
    return None


# -- the plain full-reference API ---------------------------------------------------------------------------

#: name -> (function(ref, test, sr) -> float, higher_is_better, unit) of the full-reference metrics
METRICS: Dict[str, Tuple[Callable[..., float], bool, str]] = {
    k: ((lambda m: lambda ref, test, sr=22050: float(m.score(ref, test, sr, None, "")))(m), m.higher_is_better, m.unit)
    for k, m in TABLE.items() if m.kind == "reference"}

DEFAULT_METRICS = ("mr_stft", "mel_l1", "mcd", "lsd", "snr", "pesq", "stoi")


def compare(ref: np.ndarray, test: np.ndarray, sr: int, metrics: Iterable[str] = DEFAULT_METRICS) -> Dict[str, float]:
    """Full-reference metrics of ``test`` against ``ref`` (both at ``sr``).

    Args:
        metrics: names from :data:`METRICS`.

    Returns:
        ``{name: value}`` in the order asked.

    Raises:
        ConfigError: an unknown metric name.
        DependencyError: a metric's optional package is missing.
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    return {name: float(METRICS[name][0](ref, test, sr)) for name in metrics}


def no_reference(test: np.ndarray, sr: int, text: Optional[str] = None) -> Dict[str, object]:
    """No-reference metrics: DNSMOS (``dnsmos_ovrl``, ``dnsmos_sig``, ``dnsmos_bak``,
    ``dnsmos_p808``; MOS 1..5, higher is better) and, when ``text`` is given, the pocketsphinx
    word-error rate ``wer`` (lower is better) with its ``asr_hypothesis``.

    Raises:
        DependencyError: speechmos (or pocketsphinx, with ``text``) is missing.
    """
    out: Dict[str, object] = {f"dnsmos_{k}": v for k, v in P.dnsmos(test, sr).items()}
    if text is not None:
        res = P.asr_wer(test, sr, text)
        out["wer"], out["asr_hypothesis"] = res["wer"], res["hypothesis"]
    return out

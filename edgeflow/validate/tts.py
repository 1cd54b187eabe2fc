"""Validation of text-to-speech voices: intelligibility, quality, speed, and distance to a teacher.

Scores (every function takes a :class:`edgeflow.runtime.Voice`, or anything with ``speak_stream`` and
``sample_rate``, like :class:`BarePiper`):

- **WER**: pocketsphinx (:func:`edgeflow.validate.perceptual.transcribe`) against the sentence, both
  normalised by :func:`normalize_transcript` (lower case, numbers as words, punctuation stripped);
  reported as corpus WER (total word edits / total reference words) and the per-sentence mean.
- **DNSMOS** P.808 and P.835 (sig, bak, ovrl) through speechmos, at 16 kHz
  (:func:`edgeflow.validate.perceptual.dnsmos` resamples).
- **RTF** (synthesis wall time / audio seconds, phonemization included) and **time to first audio**
  (from the call to the first chunk ``speak_stream`` yields).
- Against a teacher: :func:`mel_cepstral_distance` of two wavs of equal length, i.e. synthesised with the
  same noise and the same durations (the same seed for edgeflow bundles and model.pt; noise_scale = noise_w
  = 0 when a stock Piper graph, whose noise is internal, takes part).

The sentences are :mod:`edgeflow.data.tts_text` (evaluation part by default). No torch.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgeflow.core.errors import InputError

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """English cardinal words of a non-negative integer below 10**12 (``123`` -> "one hundred twenty three")."""
    if n < 0 or n >= 10 ** 12:
        raise InputError(f"number_to_words takes 0 <= n < 10**12, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{number_to_words(head)} {name}" + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = _ORDINAL.get(last, last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return f"{head} {last}".strip()


def _number(m: "re.Match[str]") -> str:
    whole = number_to_words(int(m.group(1).replace(",", "")))
    if m.group(2):
        whole += " point " + " ".join(_ONES[int(d)] for d in m.group(2))
    if m.group(3):
        whole = _ordinal(whole)
    return f" {whole} "


def normalize_transcript(text: str) -> str:
    """Text as a recogniser writes it: lower case, numbers as words (``1,234``, ``3.5``, ``21st``; ``%`` ->
    percent, ``$`` dropped), punctuation stripped (:func:`edgeflow.validate.perceptual.normalize_text`)."""
    from edgeflow.validate.perceptual import normalize_text

    text = text.replace("%", " percent ").replace("$", " ")
    text = re.sub(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?\b", _number, text)
    return normalize_text(text)


def mel_cepstral_distance(ref: np.ndarray, test: np.ndarray, sr: int) -> float:
    """Mel-cepstral distance (dB, :func:`edgeflow.validate.metrics.mcd`, frame by frame) between two wavs of
    equal length: a student and its teacher synthesised with the same noise and durations.

    Raises:
        InputError: the lengths differ (different durations or noise; align with ``mcd_dtw`` instead).
    """
    from edgeflow.validate.metrics import mcd

    ref, test = np.asarray(ref).reshape(-1), np.asarray(test).reshape(-1)
    if ref.size != test.size:
        raise InputError(f"mel-cepstral distance needs equal lengths (same noise and durations), got "
                         f"{ref.size} and {test.size} samples")
    return mcd(ref, test, sr)


def timed_speak(voice: Any, text: str, **kwargs: Any) -> Dict[str, Any]:
    """Synthesize ``text`` with ``voice.speak_stream``: the audio, wall time, time to first audio, RTF."""
    t0 = time.perf_counter()
    first, pieces = None, []
    for chunk in voice.speak_stream(text, **kwargs):
        if first is None:
            first = time.perf_counter() - t0
        pieces.append(chunk)
    wall = time.perf_counter() - t0
    audio = np.concatenate(pieces)
    seconds = audio.size / voice.sample_rate
    return {"audio": audio, "wall": wall, "time_to_first_audio": first, "seconds": seconds,
            "rtf": wall / max(seconds, 1e-9)}


def evaluate_voice(voice: Any, texts: Optional[Sequence[str]] = None, wer: bool = True, dnsmos: bool = True,
                   keep_audio: bool = False, progress: Any = None, **kwargs: Any) -> Dict[str, Any]:
    """Score a voice on sentences (default: the evaluation part of :mod:`edgeflow.data.tts_text`).

    Args:
        voice: a Voice (or BarePiper).
        texts: the sentences.
        wer, dnsmos: compute those scores (pocketsphinx, speechmos).
        keep_audio: keep each sentence's audio in the rows.
        progress: a :class:`edgeflow.validate.progress.Progress` advanced once per sentence (lines with an ETA), or None.
        kwargs: synthesis options for ``speak_stream`` (scales, seed).

    Returns:
        {"rows": [per sentence: text, seconds, wall, rtf, time_to_first_audio, wer, hypothesis, dnsmos],
         "summary": {rtf (total wall / total audio), time_to_first_audio (median), wer (corpus), wer_mean,
         p808, sig, bak, ovrl (means), sentences, audio_seconds}}.
    """
    from edgeflow.validate import perceptual

    if texts is None:
        from edgeflow.data.tts_text import sentences

        texts = sentences("evaluation")
    rows, edits, words = [], 0, 0
    for text in texts:
        r = timed_speak(voice, text, **kwargs)
        audio = r.pop("audio")
        row: Dict[str, Any] = dict(text=text, **r)
        if wer:
            ref = normalize_transcript(text).split()
            hyp = perceptual.transcribe(audio, voice.sample_rate).split()
            e = perceptual.edit_distance(ref, hyp)
            row.update(wer=e / max(len(ref), 1), hypothesis=" ".join(hyp))
            edits, words = edits + e, words + len(ref)
        if dnsmos:
            row["dnsmos"] = perceptual.dnsmos(audio, voice.sample_rate)
        if keep_audio:
            row["audio"] = audio
        rows.append(row)
        if progress is not None:
            progress.advance()
    total = sum(r["seconds"] for r in rows)
    summary: Dict[str, Any] = {"sentences": len(rows), "audio_seconds": total,
                               "rtf": sum(r["wall"] for r in rows) / max(total, 1e-9),
                               "time_to_first_audio": float(np.median([r["time_to_first_audio"] for r in rows]))}
    if wer:
        summary.update(wer=edits / max(words, 1), wer_mean=float(np.mean([r["wer"] for r in rows])))
    if dnsmos:
        for key in ("p808", "sig", "bak", "ovrl"):
            summary[key] = float(np.mean([r["dnsmos"][key] for r in rows]))
    return {"rows": rows, "summary": summary}


def teacher_distance(student: Any, teacher: Any, texts: Optional[Sequence[str]] = None,
                     **kwargs: Any) -> Dict[str, Any]:
    """Mel-cepstral distance of ``student`` to ``teacher`` per sentence, same options (seed, scales) for both.

    Returns:
        {"mcd": mean dB, "rows": [{"text", "mcd"}]}.

    Raises:
        InputError: a sentence's lengths differ (the durations or noise are not shared).
    """
    if texts is None:
        from edgeflow.data.tts_text import sentences

        texts = sentences("evaluation")
    rows = []
    for text in texts:
        a = np.concatenate(list(teacher.speak_stream(text, **kwargs)))
        b = np.concatenate(list(student.speak_stream(text, **kwargs)))
        rows.append({"text": text, "mcd": mel_cepstral_distance(a, b, teacher.sample_rate)})
    return {"mcd": float(np.mean([r["mcd"] for r in rows])), "rows": rows}


class BarePiper:
    """A stock Piper voice in bare onnxruntime (default graph optimizations, as Piper's own runtime), for
    ``--against`` comparisons: ids from the same text front-end, one ``session.run`` per sentence."""

    def __init__(self, onnx_path: str | Path, threads: Optional[int] = None, config: Optional[str | Path] = None):
        import onnxruntime as ort

        from edgeflow.core.ort import session_options
        from edgeflow.runtime.voice_config import VoiceConfig

        self.config = VoiceConfig.read(config or f"{onnx_path}.json")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.sample_rate = self.config.sample_rate

    def speak_ids(self, ids: List[int], noise_scale: Optional[float] = None, length_scale: Optional[float] = None,
                  noise_w: Optional[float] = None) -> np.ndarray:
        c = self.config
        scales = np.array([c.noise_scale if noise_scale is None else noise_scale,
                           c.length_scale if length_scale is None else length_scale,
                           c.noise_w if noise_w is None else noise_w], dtype=np.float32)
        x = np.array([ids], dtype=np.int64)
        return self.session.run(None, {"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64),
                                       "scales": scales})[0].reshape(-1)

    def speak_stream(self, text: str, seed: int = 0, **scales: Any):
        """Sentence audio in order (``seed`` is ignored: the graph's noise is internal)."""
        from edgeflow import text as frontend

        for phonemes in self.config.phonemize_iter(text):
            yield self.speak_ids(frontend.phonemes_to_ids(phonemes, self.config.phoneme_id_map), **scales)

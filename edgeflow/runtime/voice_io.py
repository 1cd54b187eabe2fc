"""onnxruntime sessions of the voice runtimes (:class:`edgeflow.runtime.Voice`, :class:`edgeflow.runtime.FmVoice`)
and streamed wav output (numpy, soundfile; no torch)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np

from edgeflow.core.errors import BundleError, DependencyError, short_reason


def open_session(path: Path, threads: Optional[int], providers: Any, what: str, spin: bool = True,
                 conv_layout: str = "auto"):
    """An onnxruntime session; ``spin=False``: its idle pool threads sleep at once instead of spin-waiting (the
    short encoder run: its spinning pool would take cores from the decoder session that runs next; measured
    on joe at 2 threads: RTF 0.194 -> 0.164); ``conv_layout``: the layout of its float 1-D convolutions
    (:func:`edgeflow.runtime.conv_layout.choose_layout`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed (pip install onnxruntime)") from None
    from edgeflow.core.ort import session_options
    from edgeflow.runtime.conv_layout import session_source
    from edgeflow.runtime.synthesizer import resolve_providers

    if not path.is_file():
        raise BundleError(f"{what} not found: {path}")
    opts = session_options(threads)
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        names = resolve_providers(providers)
        return ort.InferenceSession(session_source(path, conv_layout, threads, names)[0], sess_options=opts,
                                    providers=names)
    except DependencyError:
        raise
    except Exception as exc:
        raise BundleError(f"{path}: onnxruntime cannot load this {what} ({short_reason(exc)})") from None


def write_wav_stream(chunks: Iterator[np.ndarray], sample_rate: int, path: str | Path) -> Dict[str, float]:
    """Write float audio chunks as they come into a 16-bit PCM wav: a temporary file renamed when the stream
    ends, removed if it raises (nothing half-written). Memory: one chunk at a time.

    Returns:
        {"seconds": audio seconds, "time_to_first_audio": s, "wall": s} (times from the call).
    """
    import soundfile as sf

    from edgeflow.core.io import atomic_path

    t0 = time.perf_counter()
    first, samples = None, 0
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=int(sample_rate), channels=1, subtype="PCM_16",
                          format="WAV") as f:
            for chunk in chunks:
                if first is None:
                    first = time.perf_counter() - t0
                f.write(np.clip(np.asarray(chunk, dtype=np.float32).reshape(-1), -1.0, 1.0))
                samples += chunk.size
    return {"seconds": samples / sample_rate, "time_to_first_audio": first or 0.0,
            "wall": time.perf_counter() - t0}

"""onnxruntime sessions of the voice runtimes (:class:`edgeflow.runtime.Voice`, :class:`edgeflow.runtime.FmVoice`)
and streamed wav output (numpy, soundfile; no torch)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np

from edgeflow.core.errors import BundleError, DependencyError, short_reason


#: How a session's idle pool threads wait (:func:`open_session`).
SPIN_MODES = ("always", "run", "never")


def open_session(path: Path, threads: Optional[int], providers: Any, what: str, spin: str = "always",
                 conv_layout: str = "auto", nhwc: bool = True):
    """An onnxruntime session.

    Args:
        spin: how its idle pool threads wait. "always": onnxruntime's default, they spin-wait between runs too.
            "run": they spin between the nodes of a run and sleep when it ends (the short encoder run: between
            its ~1,500 small nodes a sleeping pool wakes too slowly, and after it a spinning pool would take the
            cores from the next session; joe at 2 threads, RTF 0.0210 -> 0.0203 against "never", 2026-12-05).
            "never": they sleep at once (a session that runs beside the native engine's OpenMP threads).
        conv_layout: the layout of its float 1-D convolutions (:func:`edgeflow.runtime.conv_layout.choose_layout`).
        nhwc: False disables onnxruntime's NHWC transformer (its QLinearConvs then run in the graph's layout, without
            the Transposes it puts around each one between float ops; the same numbers).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed (pip install onnxruntime)") from None
    from edgeflow.core.ort import session_options
    from edgeflow.runtime.conv_layout import session_source
    from edgeflow.runtime.synthesizer import resolve_providers

    if not path.is_file():
        raise BundleError(f"{what} not found: {path}")
    if spin not in SPIN_MODES:
        raise ValueError(f"spin must be one of {', '.join(SPIN_MODES)}, not {spin!r}")
    opts = session_options(threads)
    if spin == "never":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spin == "run":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        names = resolve_providers(providers)
        return ort.InferenceSession(session_source(path, conv_layout, threads, names)[0], sess_options=opts,
                                    providers=names, disabled_optimizers=None if nhwc else ["NhwcTransformer"])
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

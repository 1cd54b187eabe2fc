"""Checks of the runtime's inputs: mel spectrograms, seeds, sigma (numpy only)."""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from edgeflow.core.errors import InputError


def check_mel(mel: Any, n_mels: int, allow_empty: bool = False) -> Tuple[np.ndarray, bool]:
    """Validate a mel spectrogram and return it as float32 [B, n_mels, F].

    Args:
        mel: array-like [n_mels, F] or [B, n_mels, F] of floats (float16/32/64).
        n_mels: channels the model expects.
        allow_empty: accept F == 0 (stream chunks).

    Returns:
        (mel float32 [B, n_mels, F], True if the input was 2-D).

    Raises:
        InputError: not numeric, a non-float dtype, wrong rank or channel count, zero frames or
            batch, NaN or Inf.
    """
    try:
        arr = np.asarray(mel)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"mel is not an array ({type(exc).__name__})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"mel must be a float array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputError(f"mel must be [{n_mels}, frames] or [B, {n_mels}, frames], got shape {arr.shape}")
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.shape[1] != n_mels:
        raise InputError(f"mel has {arr.shape[1]} channels, the model expects {n_mels} "
                         f"(shape {arr.shape[1 if squeeze else 0:]})")
    if arr.shape[0] == 0:
        raise InputError("mel has an empty batch")
    if arr.shape[2] == 0 and not allow_empty:
        raise InputError("mel has zero frames")
    if not np.all(np.isfinite(arr)):
        raise InputError("mel contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=np.float32), squeeze


def check_seed(seed: Any) -> int:
    """A non-negative integer seed, else InputError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_sigma(sigma: Any) -> float:
    """A finite non-negative float sigma, else InputError."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"sigma must be a number, got {sigma!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"sigma must be finite and >= 0, got {sigma!r}")
    return value


def check_stream_options(text: Any, chunk_frames: Any, first_chunk_frames: Any, sentence_silence: Any,
                         sample_rate: int) -> np.ndarray:
    """Check a voice's ``speak_stream`` options; returns the silence between sentences, float32 [n].

    Raises:
        InputError: a chunk size that is not a non-negative integer (None allowed), or a text that is not a str.
    """
    for name, v in (("chunk_frames", chunk_frames), ("first_chunk_frames", first_chunk_frames)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise InputError(f"{name} must be a non-negative integer, got {v!r}")
    if not isinstance(text, str):
        raise InputError(f"text must be a str, got {type(text).__name__}")
    return np.zeros(int(round(max(0.0, float(sentence_silence)) * sample_rate)), dtype=np.float32)


def resolve_engine(engine: str, native: Any, providers: Any, where: Any, missing: str, load: Any,
                   layout: str = "1d") -> str:
    """"native" or "onnxruntime" for an engine request, given the bundle's checked ``native`` manifest section.

    Args:
        engine: "onnxruntime" | "native" | "auto" (already checked to be one of them).
        native: the section (a dict with the pass's ``timing`` and, from the ``tts_kernels`` pass since
            2026-12-05, ``timings_other``: the same at 1 thread, in that layout), or None when the bundle has no
            usable kernels.
        providers: the onnxruntime providers asked for (None or "cpu": the CPU).
        where: the bundle, for messages.
        missing: the message's end when "native" is asked of a bundle without kernels.
        load: a callable that loads the C library (raises DependencyError, one line, when it cannot).
        layout: the conv layout the onnxruntime session would run ("1d" or "2d",
            :func:`edgeflow.runtime.conv_layout.choose_layout`): the pass's timing counts only if it timed
            onnxruntime in that layout (bundles whose timing names none were timed in 1-D).

    Returns:
        "onnxruntime" as asked; "native" as asked; for "auto", "native" only where the bundle's pass measured
        it faster than onnxruntime in ``layout``, the providers are the CPU and the library loads.

    Raises:
        BundleError: "native" asked of a bundle without kernels. DependencyError: "native" asked, no library.
    """
    from edgeflow.core.errors import BundleError, DependencyError

    if engine == "onnxruntime":
        return engine
    if engine == "native":
        if native is None:
            raise BundleError(f"{where}: {missing}")
        load()
        return engine
    cpu_only = providers is None or (isinstance(providers, str) and providers.lower() == "cpu")
    timings = [native.get("timing"), *(native.get("timings_other") or [])] if native else []
    timing = next((t for t in timings if isinstance(t, dict) and t.get("conv_layout", "1d") == layout), None)
    if not cpu_only or timing is None or timing.get("faster") != "native":
        return "onnxruntime"
    try:
        load()
    except DependencyError:
        return "onnxruntime"
    return "native"


def chunk_windows(total: int, chunk_frames: Optional[int], first_chunk_frames: Optional[int],
                  context: Tuple[int, int]) -> Iterator[Tuple[int, int, int, int]]:
    """The streaming windows of ``total`` frames: (a, b, ws, we) per chunk, the chunk's frames [a, b) computed
    over [ws, we) (``context`` = (left, right) frames of receptive field, clipped at the ends); the first chunk
    has ``first_chunk_frames`` (or ``chunk_frames``) frames, the others ``chunk_frames``. One window of the whole
    when ``chunk_frames`` is 0 or None."""
    if not chunk_frames:
        yield 0, total, 0, total
        return
    left, right = context
    a, size = 0, first_chunk_frames or chunk_frames
    while a < total:
        b = min(total, a + size)
        yield a, b, max(0, a - left), min(total, b + right)
        a, size = b, chunk_frames

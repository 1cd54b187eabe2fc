"""Streaming synthesis: emit audio for mel frames as soon as enough right context has arrived.

Each emitted span [a, b) of frames is synthesised from the window
[max(0, a - left), min(total, b + right)) with the utterance's own noise for those absolute
frames (:func:`edgeflow.core.noise.noise`), and the audio of [a, b) is cut from it. With context
at least the model's effective receptive field, the stitched audio equals whole-utterance
synthesis; at the utterance's edges the window has the same boundary as the whole utterance.
Memory is bounded: only the last ``left`` emitted frames and the pending ones are kept.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import numpy as np

from edgeflow.core.errors import InputError
from edgeflow.runtime.checks import check_mel


def stream(synth, mel_chunks: Iterable[Any], sigma: float, seed: int, left: int, right: int
           ) -> Iterator[np.ndarray]:
    """Generator behind :meth:`edgeflow.runtime.Synthesizer.synthesize_stream` (arguments checked there).

    Args:
        synth: the Synthesizer (``run_frames``, ``n_mels``, ``hop_length``).
        mel_chunks: iterable of [n_mels, f] or [B, n_mels, f] chunks; all of the same rank and batch.
        sigma, seed: noise scale and seed.
        left, right: context frames.

    Yields:
        float32 audio [n * hop] (or [B, n * hop]) for each newly complete span of n frames.
    """
    hop = synth.hop_length
    buf: Optional[np.ndarray] = None   # frames [buf_start, total) as [B, n_mels, f]
    buf_start = total = emitted = 0
    squeeze = None

    def emit(a: int, b: int) -> np.ndarray:
        nonlocal buf, buf_start
        ws, we = max(0, a - left), min(total, b + right)
        audio = synth.run_frames(buf[:, :, ws - buf_start:we - buf_start], sigma, seed, start_frame=ws)
        out = audio[:, (a - ws) * hop:(b - ws) * hop]
        keep_from = max(buf_start, b - left)           # next window starts at >= b - left
        buf = buf[:, :, keep_from - buf_start:]
        buf_start = keep_from
        return out[0] if squeeze else out

    for i, chunk in enumerate(mel_chunks):
        arr, sq = check_mel(chunk, synth.n_mels, allow_empty=True)
        if squeeze is None:
            squeeze = sq
        elif sq != squeeze or arr.shape[0] != buf.shape[0]:
            raise InputError(f"mel chunk {i} has shape {np.shape(chunk)}, unlike the earlier chunks")
        buf = arr if buf is None else np.concatenate([buf, arr], axis=2)
        total += arr.shape[2]
        ready = total - right
        if ready > emitted:
            yield emit(emitted, ready)
            emitted = ready
    if total == 0:
        raise InputError("mel stream has zero frames")
    if total > emitted:
        yield emit(emitted, total)

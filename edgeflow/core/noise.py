"""Deterministic noise for synthesis, shared by the PyTorch models and the torch-free runtime.

z is drawn in blocks of ``BLOCK_FRAMES`` mel frames, each from ``numpy.random.default_rng([seed, block])``,
so the noise for frames [a, b) is the same whether an utterance is synthesised whole or streamed
in chunks: streaming reproduces whole-utterance output with the same seed.
"""

from __future__ import annotations

import numpy as np

BLOCK_FRAMES = 64


def noise(seed: int, start_frame: int, n_frames: int, hop_length: int, batch: int = 1) -> np.ndarray:
    """Standard normal float32 noise [batch, n_frames * hop_length] for frames [start, start + n).

    Batch item b uses seed ``seed + b``.
    """
    if n_frames < 0 or start_frame < 0:
        raise ValueError("frames must be non-negative")
    out = np.empty((batch, n_frames * hop_length), dtype=np.float32)
    for b in range(batch):
        first, last = start_frame // BLOCK_FRAMES, (start_frame + n_frames - 1) // BLOCK_FRAMES
        pieces = [np.random.default_rng([int(seed) + b, blk]).standard_normal(BLOCK_FRAMES * hop_length,
                                                                                 dtype=np.float32)
                  for blk in range(first, last + 1)] if n_frames else []
        if pieces:
            cat = np.concatenate(pieces)
            off = (start_frame - first * BLOCK_FRAMES) * hop_length
            out[b] = cat[off:off + n_frames * hop_length]
    return out

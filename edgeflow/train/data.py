"""Training data: whole clips in memory, random segments chosen by (seed, step, rank) alone."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from edgeflow.audio.io import load_wav
from edgeflow.core.errors import CorpusError


def split_wavs(data_dir: str | Path, split: str) -> List[Path]:
    """Wav paths of a corpus split (LJSpeech layout; split fixed by the corpus's splits.json)."""
    from edgeflow.data.ljspeech import load_split

    utts = load_split(data_dir, split)
    if not utts:
        raise CorpusError(f"{data_dir}: split {split!r} is empty")
    return [Path(u.wav) for u in utts]


class SegmentSampler:
    """Draws training segments deterministically.

    Args:
        clips: mono float32 clips.
        segment: samples per segment; shorter clips are zero-padded.
        seed: base seed; the batch of step k depends only on (seed, k, rank).
    """

    def __init__(self, clips: Sequence[np.ndarray], segment: int, seed: int = 0):
        if not clips:
            raise CorpusError("no training clips")
        self.clips = list(clips)
        self.segment = segment
        self.seed = seed
        lengths = np.array([len(c) for c in self.clips], dtype=np.float64)
        self.p = lengths / lengths.sum()

    @classmethod
    def from_paths(cls, paths: Sequence[Path], sample_rate: int, segment: int, seed: int = 0) -> "SegmentSampler":
        return cls([load_wav(p, sample_rate)[0] for p in paths], segment, seed)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> np.ndarray:
        """float32 [batch_size, segment] for this step and rank."""
        rng = np.random.default_rng([self.seed, step, rank])
        out = np.zeros((batch_size, self.segment), dtype=np.float32)
        for b, i in enumerate(rng.choice(len(self.clips), size=batch_size, p=self.p)):
            clip = self.clips[i]
            if len(clip) <= self.segment:
                out[b, :len(clip)] = clip
            else:
                off = int(rng.integers(0, len(clip) - self.segment + 1))
                out[b] = clip[off:off + self.segment]
        return out


def center_segments(clips: Sequence[np.ndarray], segment: int) -> np.ndarray:
    """Fixed validation segments: the middle ``segment`` samples of each clip, [N, segment]."""
    out = np.zeros((len(clips), segment), dtype=np.float32)
    for i, clip in enumerate(clips):
        if len(clip) <= segment:
            out[i, :len(clip)] = clip
        else:
            off = (len(clip) - segment) // 2
            out[i] = clip[off:off + segment]
    return out

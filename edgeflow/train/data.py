"""Training data: whole clips in memory, random segments chosen by (seed, step, rank) alone."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

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


class PairSampler:
    """Draws aligned (audio, log-mel) training segments from a pairs folder (:mod:`edgeflow.pipeline_pairs`:
    ``NAME.mel.npy`` [n_mels, frames] beside ``NAME.wav`` of frames * hop samples), deterministically.

    Args:
        mels: float32 [n_mels, frames] per clip.
        clips: float32 audio per clip, ``frames * hop`` samples each.
        segment: samples per segment (a multiple of ``hop``); shorter clips are padded (audio with zeros, the
            mel with ``pad_value``, the log of silence).
        hop: samples per mel frame.
        seed: base seed; the batch of step k depends only on (seed, k, rank).
        pad_value: the log-mel of silence (the mel config's log of its clamp).
    """

    def __init__(self, mels: Sequence[np.ndarray], clips: Sequence[np.ndarray], segment: int, hop: int,
                 seed: int = 0, pad_value: float = float(np.log(1e-5))):
        if not clips or len(mels) != len(clips):
            raise CorpusError("no training pairs")
        if segment % hop:
            raise CorpusError(f"segment {segment} is not a multiple of the hop {hop}")
        for i, (m, c) in enumerate(zip(mels, clips)):
            if m.ndim != 2 or len(c) != m.shape[1] * hop:
                raise CorpusError(f"pair {i}: {len(c)} samples do not match a mel of shape {list(m.shape)} "
                                  f"at hop {hop}")
        self.mels, self.clips = list(mels), list(clips)
        self.segment, self.hop, self.seed, self.pad_value = segment, hop, seed, float(pad_value)
        lengths = np.array([m.shape[1] for m in self.mels], dtype=np.float64)
        self.p = lengths / lengths.sum()

    @classmethod
    def from_dir(cls, pairs_dir: str | Path, sample_rate: int, segment: int, hop: int, seed: int = 0,
                 pad_value: float = float(np.log(1e-5))) -> "PairSampler":
        """Load every ``*.mel.npy`` + ``*.wav`` pair of a folder (in name order)."""
        root = Path(pairs_dir)
        names = sorted(p.name[:-len(".mel.npy")] for p in root.glob("*.mel.npy"))
        if not names:
            raise CorpusError(f"{root}: no *.mel.npy pairs (see `edgeflow corpus pairs`)")
        missing = [n for n in names if not (root / f"{n}.wav").is_file()]
        if missing:
            raise CorpusError(f"{root}: {len(missing)} mels without a wav, e.g. {missing[0]}.mel.npy")
        mels = [np.load(root / f"{n}.mel.npy", allow_pickle=False).astype(np.float32) for n in names]
        clips = [load_wav(root / f"{n}.wav", sample_rate)[0] for n in names]
        return cls(mels, clips, segment, hop, seed, pad_value)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """(audio float32 [batch_size, segment], log-mel float32 [batch_size, n_mels, segment / hop])."""
        rng = np.random.default_rng([self.seed, step, rank, 1])
        frames = self.segment // self.hop
        audio = np.zeros((batch_size, self.segment), dtype=np.float32)
        mel = np.full((batch_size, self.mels[0].shape[0], frames), self.pad_value, dtype=np.float32)
        for b, i in enumerate(rng.choice(len(self.clips), size=batch_size, p=self.p)):
            m, clip = self.mels[i], self.clips[i]
            n = min(frames, m.shape[1])
            off = int(rng.integers(0, m.shape[1] - n + 1))
            mel[b, :, :n] = m[:, off:off + n]
            audio[b, :n * self.hop] = clip[off * self.hop:(off + n) * self.hop]
        return audio, mel


class MixedSampler:
    """Recordings and pairs in one batch: the last ``round(batch_size * fraction)`` rows come from ``pairs``.

    ``batch`` returns (audio [B, T], mel of the pair rows [P, n_mels, T / hop]); the recordings' mels are
    computed from their audio by the objective.
    """

    def __init__(self, recordings: SegmentSampler, pairs: PairSampler, fraction: float):
        if not 0.0 < fraction <= 1.0:
            raise CorpusError(f"pairs_fraction must be in (0, 1], got {fraction!r}")
        self.recordings, self.pairs, self.fraction = recordings, pairs, float(fraction)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        n_pairs = min(batch_size, max(1, int(round(batch_size * self.fraction))))
        audio_p, mel_p = self.pairs.batch(step, n_pairs, rank)
        if n_pairs == batch_size:
            return audio_p, mel_p
        audio_r = self.recordings.batch(step, batch_size - n_pairs, rank)
        return np.concatenate([audio_r, audio_p]), mel_p

"""Distillation data: short training segments with their mels, chosen by (seed, step) alone.

Sources (see :func:`resolve_source`):

* a corpus folder (``metadata.csv``, LJSpeech layout): its **train** split, audio + mels, with fixed
  validation segments from the valid split (never the test split that the quality gate scores on);
* a calibration set (``edgeflow calibrate``, train-split mels only): mel crops, no audio, so the
  likelihood term is unavailable; the teacher's outputs are the only targets;
* a folder of wavs named explicitly (the user's choice of training audio).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from edgeflow.audio.io import load_wav
from edgeflow.audio.mel_torch import LogMel
from edgeflow.core.errors import ConfigError, CorpusError
from edgeflow.train.data import SegmentSampler, center_segments

Batch = Tuple[Optional[torch.Tensor], torch.Tensor]


class NoTrainingData(ConfigError):
    """No training data was named and none could be found (passes may skip themselves on it)."""


class DistillData:
    """Batches of (audio [B, T] or None, mel [B, n_mels, T / hop]) for distillation.

    Args:
        mel_cfg: the model's MelConfig.
        segment: samples per segment (a multiple of the model's length multiple).
        seed: the batch of step k depends only on (seed, k).
        clips: training audio clips (float32), or None for a mel-only source.
        mels: training log-mels [n_mels, F] (mel-only source), or None.
        valid: fixed validation audio segments [N, segment] (audio source) or mels (mel-only source).
        source: a one-line description for logs and fingerprints.
    """

    def __init__(self, mel_cfg, segment: int, seed: int = 0, clips: Optional[Sequence[np.ndarray]] = None,
                 mels: Optional[Sequence[np.ndarray]] = None, valid=None, source: str = ""):
        if not clips and not mels:
            raise CorpusError(f"distillation data {source}: no clips")
        self.mel_cfg, self.segment, self.seed, self.source = mel_cfg, int(segment), int(seed), source
        self.frames = self.segment // mel_cfg.hop_length
        self.logmel = LogMel(mel_cfg)
        self.sampler = SegmentSampler(clips, self.segment, seed) if clips else None
        self.mels = list(mels or [])
        self.valid_items = valid

    @property
    def has_audio(self) -> bool:
        return self.sampler is not None

    def _mel_of(self, audio: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.logmel(torch.from_numpy(audio))

    def _crop(self, mel: np.ndarray, rng: Optional[np.random.Generator]) -> np.ndarray:
        """A [n_mels, frames] window of a mel (random with rng, else centred), padded with silence."""
        out = np.full((mel.shape[0], self.frames), np.log(self.mel_cfg.log_clamp), dtype=np.float32)
        if mel.shape[1] <= self.frames:
            out[:, :mel.shape[1]] = mel
            return out
        span = mel.shape[1] - self.frames
        off = int(rng.integers(0, span + 1)) if rng is not None else span // 2
        return mel[:, off:off + self.frames].astype(np.float32)

    def batch(self, step: int, batch_size: int) -> Batch:
        """The batch of ``step``: (audio [B, T] float32 or None, mel [B, n_mels, T / hop])."""
        if self.sampler is not None:
            audio = self.sampler.batch(step, batch_size)
            return torch.from_numpy(audio), self._mel_of(audio)
        rng = np.random.default_rng([self.seed, step, 7])
        idx = rng.choice(len(self.mels), size=batch_size)
        return None, torch.from_numpy(np.stack([self._crop(self.mels[i], rng) for i in idx]))

    def valid_batches(self, batch_size: int) -> List[Batch]:
        """Fixed validation batches (the same on every call)."""
        out = []
        items = self.valid_items
        for i in range(0, len(items), batch_size):
            part = items[i:i + batch_size]
            if self.has_audio:
                audio = np.asarray(part, dtype=np.float32)
                out.append((torch.from_numpy(audio), self._mel_of(audio)))
            else:
                out.append((None, torch.from_numpy(np.stack([self._crop(m, None) for m in part]))))
        return out


def _wavs_of(paths: Sequence[Path], sr: int) -> List[np.ndarray]:
    return [load_wav(p, sr)[0] for p in paths]


def from_corpus(corpus: Path, mel_cfg, segment: int, seed: int, n_valid: int) -> DistillData:
    """Train split for training, centre segments of the valid split (else of train clips) for validation."""
    from edgeflow.train.data import split_wavs

    sr, corpus = mel_cfg.sample_rate, Path(corpus)
    clips = _wavs_of(split_wavs(corpus, "train"), sr)
    try:
        valid_clips = _wavs_of(split_wavs(corpus, "valid")[:n_valid], sr)
    except CorpusError:
        valid_clips = clips[:n_valid]
    return DistillData(mel_cfg, segment, seed, clips=clips, valid=center_segments(valid_clips, segment),
                       source=f"corpus {corpus} (train split; valid split for validation)")


def from_wav_folder(folder: Path, mel_cfg, segment: int, seed: int, n_valid: int) -> DistillData:
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    if not files:
        raise CorpusError(f"{folder}: no audio files for distillation")
    clips = _wavs_of(files, mel_cfg.sample_rate)
    return DistillData(mel_cfg, segment, seed, clips=clips, valid=center_segments(clips[:n_valid], segment),
                       source=f"wav folder {folder}")


def from_calibration(path: Path, mel_cfg, segment: int, seed: int, n_valid: int) -> DistillData:
    from edgeflow.data.calibration import load_calibration_set

    cal = load_calibration_set(path, mel_cfg)
    mels = list(cal.mels)
    n = min(n_valid, max(1, len(mels) // 4))
    return DistillData(mel_cfg, segment, seed, mels=mels, valid=mels[:n],
                       source=f"calibration set {path} ({len(mels)} train-split mels, no audio)")


def _kind(path: Path) -> str:
    if (path / "metadata.csv").is_file():
        return "corpus"
    mpath = path / "manifest.json"
    if mpath.is_file():
        try:
            if json.loads(mpath.read_text()).get("format") == "edgeflow.calibration":
                return "calibration"
        except (OSError, ValueError, AttributeError):
            pass
    return "wavs" if path.is_dir() else "missing"


def resolve_source(explicit: str = "", data_dir=None, train_data=None, calib_dir=None) -> Tuple[str, Path]:
    """Pick the distillation data: (kind, path).

    Order: ``explicit`` (corpus, calibration set or wav folder); the pipeline's data folder if it is
    a corpus (its train split; a plain folder of wavs there is held-out evaluation audio and is never
    trained on); the corpus the model was trained on (checkpoint meta); the calibration set.

    Raises:
        NoTrainingData: nothing usable (the message says what to pass); ConfigError: ``explicit`` missing.
    """
    if explicit:
        path = Path(explicit)
        kind = _kind(path)
        if kind == "missing":
            raise ConfigError(f"distillation data {explicit}: not found")
        return kind, path
    for cand in (data_dir, train_data):
        if cand and _kind(Path(cand)) == "corpus":
            return "corpus", Path(cand)
    if calib_dir and _kind(Path(calib_dir)) == "calibration":
        return "calibration", Path(calib_dir)
    raise NoTrainingData("distillation needs training data: set data=CORPUS in the pass options, or run optimize "
                      "with --data CORPUS (its train split is used) or --calib CALIBRATION_SET")


def load_source(kind: str, path: Path, mel_cfg, segment: int, seed: int, n_valid: int) -> DistillData:
    """Load the data :func:`resolve_source` picked."""
    loader = {"corpus": from_corpus, "calibration": from_calibration, "wavs": from_wav_folder}[kind]
    return loader(Path(path), mel_cfg, segment, seed, n_valid)

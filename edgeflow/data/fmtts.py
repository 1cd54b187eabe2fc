"""Training features of the flow-matching TTS family: phoneme ids, log-mel, log-f0, from an LJSpeech corpus.

Per utterance (all sentences joined, as for VITS training): the espeak-ng phoneme ids of the model's
``phoneme_id_map`` (Piper's convention: ``^ _ p1 _ p2 _ ... $``), the log-mel of the model's ``mel`` config
(numpy front-end, HiFi-GAN convention) and the frame-level f0 from ``librosa.pyin`` (60-500 Hz, frame 1024,
hop = the mel hop, pitch resolution 0.25 semitone: 15x faster than pyin's default 0.1 here at the same
phone-level means), given as a continuous log-f0 (unvoiced frames linearly interpolated between voiced
neighbours, held at the ends) plus a voiced flag.

Features are cached in one ``.npz`` per split (no pickles; concatenated arrays with offsets), written
atomically, keyed by the settings that produced them: a cache built with other settings is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import CorpusError
from edgeflow.core.io import atomic_path

F0_MIN, F0_MAX, F0_RESOLUTION = 60.0, 500.0, 0.25
CACHE_VERSION = 1


@dataclass
class Item:
    """One utterance: ids int64 [N], mel float32 [n_mels, F], lf0 float32 [F], voiced float32 [F]."""

    ids: np.ndarray
    mel: np.ndarray
    lf0: np.ndarray
    voiced: np.ndarray

    @property
    def frames(self) -> int:
        return self.mel.shape[1]


def continuous_log_f0(f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """log f0 [F] with unvoiced frames interpolated linearly (held at the ends); all-unvoiced: log(F0_MIN)."""
    f0 = np.asarray(f0, dtype=np.float64)
    ok = np.asarray(voiced, dtype=bool) & np.isfinite(f0) & (f0 > 0)
    if not ok.any():
        return np.full(len(f0), np.log(F0_MIN), dtype=np.float32)
    idx = np.arange(len(f0))
    return np.interp(idx, idx[ok], np.log(f0[ok])).astype(np.float32)


def track_f0(audio: np.ndarray, sample_rate: int, hop: int, frames: int) -> Tuple[np.ndarray, np.ndarray]:
    """(continuous log-f0 [frames], voiced flag [frames]) of a clip by pyin (see the module docstring)."""
    import librosa

    f0, voiced, _ = librosa.pyin(np.asarray(audio, dtype=np.float32), fmin=F0_MIN, fmax=F0_MAX, sr=sample_rate,
                                 frame_length=1024, hop_length=hop, resolution=F0_RESOLUTION)
    f0, voiced = f0[:frames], voiced[:frames].astype(np.float32)
    if len(f0) < frames:                                   # pyin gives 1 + len // hop frames: never fewer
        f0 = np.pad(f0, (0, frames - len(f0)), mode="edge")
        voiced = np.pad(voiced, (0, frames - len(voiced)))
    voiced = voiced * np.isfinite(f0)
    return continuous_log_f0(f0, voiced), voiced.astype(np.float32)


def text_ids(text: str, config, phonemize: Callable, to_ids: Callable) -> Optional[np.ndarray]:
    """The phoneme ids int64 [N] of ``text`` as training sees them (espeak-ng voice and id map of ``config``),
    or None if it has no phonemes."""
    phonemes = [p for sentence in phonemize(text, config.espeak_voice) for p in sentence]
    return np.asarray(to_ids(phonemes, config.phoneme_id_map), dtype=np.int64) if phonemes else None


def utterance_item(text: str, audio: np.ndarray, config, phonemize: Callable, to_ids: Callable) -> Optional[Item]:
    """The features of one utterance, or None if it has no phonemes or fewer frames than ids (MAS)."""
    from edgeflow.audio.mel import log_mel

    ids = text_ids(text, config, phonemize, to_ids)
    if ids is None:
        return None
    hop = config.mel.hop_length
    frames = len(audio) // hop
    if frames < len(ids):
        return None
    audio = np.ascontiguousarray(audio[:frames * hop], dtype=np.float32)
    mel = log_mel(audio, config.mel)
    lf0, voiced = track_f0(audio, config.mel.sample_rate, hop, frames)
    return Item(ids, mel.astype(np.float32), lf0, voiced)


def _cache_key(config, split: str, max_seconds: float, corpus: Path) -> str:
    data = {"v": CACHE_VERSION, "mel": config.mel.to_dict(), "map": config.phoneme_id_map,
            "voice": config.espeak_voice, "split": split, "max_seconds": max_seconds, "corpus": str(corpus.resolve()),
            "f0": [F0_MIN, F0_MAX, F0_RESOLUTION]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def save_items(path: Path, items: List[Item], key: str) -> None:
    """Write items as one npz (concatenated arrays + offsets), atomically."""
    n_ids = np.cumsum([0] + [len(i.ids) for i in items])
    n_fr = np.cumsum([0] + [i.frames for i in items])
    cat = (lambda xs, axis=0: np.concatenate(xs, axis) if xs else np.zeros(0))  # noqa: E731
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), id_off=n_ids, frame_off=n_fr, ids=cat([i.ids for i in items]),
                     mel=cat([i.mel for i in items], 1) if items else np.zeros((0, 0), np.float32),
                     lf0=cat([i.lf0 for i in items]), voiced=cat([i.voiced for i in items]))


def load_items(path: Path, key: str) -> Optional[List[Item]]:
    """Items from a cache written with the same key, else None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            return None
        arrays = {name: z[name] for name in ("id_off", "frame_off", "ids", "mel", "lf0", "voiced")}  # read once
    io, fo = arrays["id_off"], arrays["frame_off"]
    return [Item(arrays["ids"][io[k]:io[k + 1]].copy(), arrays["mel"][:, fo[k]:fo[k + 1]].copy(),
                 arrays["lf0"][fo[k]:fo[k + 1]].copy(), arrays["voiced"][fo[k]:fo[k + 1]].copy())
            for k in range(len(io) - 1)]


def corpus_features(corpus_dir: str | Path, split: str, config, cache_dir: str | Path, max_seconds: float = 12.0,
                    log: Optional[Callable[[str], None]] = None) -> Tuple[List[Item], int]:
    """(items, number left out) of a corpus split, from the cache in ``cache_dir`` (number left out: -1, not
    recorded) or computed (progress with an ETA every 25 utterances through ``log``).

    Raises:
        CorpusError: the model config has no phoneme_id_map.
    """
    from edgeflow.audio.io import load_wav
    from edgeflow.data.ljspeech import load_split
    from edgeflow.text import check_id_map, phonemes_to_ids, phonemize

    if config.phoneme_id_map is None:
        raise CorpusError("the fmtts model config has no phoneme_id_map (the recipe must ship one)")
    check_id_map(config.phoneme_id_map, "model config")
    corpus = Path(corpus_dir)
    key = _cache_key(config, split, max_seconds, corpus)
    path = Path(cache_dir) / f"features-{split}-{key}.npz"
    cached = load_items(path, key)
    if cached is not None:
        return cached, -1
    utts = load_split(corpus, split)
    items, skipped, t0 = [], 0, time.time()
    for k, utt in enumerate(utts):
        audio = load_wav(utt.wav, config.mel.sample_rate)[0]
        item = None if len(audio) > max_seconds * config.mel.sample_rate else \
            utterance_item(utt.text, audio, config, phonemize, phonemes_to_ids)
        if item is None:
            skipped += 1
        else:
            items.append(item)
        if log is not None and (k + 1) % 25 == 0:
            eta = (time.time() - t0) / (k + 1) * (len(utts) - k - 1)
            log(f"features {split}: {k + 1}/{len(utts)} utterances, about {eta / 60:.1f} min left")
    save_items(path, items, key)
    return items, skipped

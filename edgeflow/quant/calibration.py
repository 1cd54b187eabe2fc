"""Calibration sets: a few training utterances as log-mels plus noise seeds, for INT8 calibration.

Layout::

    calibration/NAME/
      mels.npz        mel_000 ... mel_{N-1}: float32 log-mels [n_mels, F] (the model's front-end),
                      seeds: int64 [N], the noise seed of each utterance (z = core.noise.noise(seed, ...))
      manifest.json   format, source corpus and split, utterance ids / speakers / seconds, count,
                      total seconds, mel config, selection parameters, sha256 of every file

Utterances come from the corpus's ``train`` split only (the held-out ``test`` split is never read),
chosen with a fixed seed to spread over speakers and lengths, each cropped to its most energetic
window of at most ``max_seconds`` (a multiple of the model's length multiple) so calibration is fast.
Reading a set (:func:`load_calibration_set`, in :mod:`edgeflow.data.calibration` so that compression reads
sets too) checks the manifest, every file's sha256, emptiness, and the mel front-end against the model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgeflow.core.errors import ConfigError
from edgeflow.core.io import atomic_dir, atomic_write_json, sha256_file
from edgeflow.data.calibration import (ALLOWED_SPLITS, FORMAT, FORMAT_VERSION, MANIFEST,  # noqa: F401
                                      MELS_FILE, CalibrationError, CalibrationSet, load_calibration_set)


def _duration(path: Path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise CalibrationError(f"cannot read audio file {path} ({type(exc).__name__})") from None
    return info.frames / max(info.samplerate, 1)


def select_utterances(utts: List[Any], durations: List[float], n: int, seed: int) -> List[int]:
    """Indices of ``n`` utterances spread over speakers and lengths, deterministic for ``seed``.

    Speakers are visited round-robin in a seeded random order; each speaker's utterances are sorted
    by duration and taken alternately from the long and the short end (after a seeded rotation), so
    the set mixes voices and lengths.
    """
    rng = np.random.default_rng(int(seed))
    by_spk: Dict[str, List[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u.speaker, []).append(i)
    queues = {}
    for spk, idx in by_spk.items():
        idx = sorted(idx, key=lambda i: (durations[i], utts[i].id))
        order, lo, hi, take_long = [], 0, len(idx) - 1, bool(rng.integers(2))
        while lo <= hi:
            order.append(idx[hi] if take_long else idx[lo])
            hi, lo = (hi - 1, lo) if take_long else (hi, lo + 1)
            take_long = not take_long
        queues[spk] = order
    speakers = [sorted(by_spk)[k] for k in rng.permutation(len(by_spk))]
    picked: List[int] = []
    while len(picked) < n and any(queues.values()):
        for spk in speakers:
            if queues[spk] and len(picked) < n:
                picked.append(queues[spk].pop(0))
    return picked


def _loudest_window(audio: np.ndarray, length: int, step: int) -> int:
    """Start (a multiple of ``step``) of the ``length``-sample window with the most energy."""
    if len(audio) <= length:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    starts = np.arange(0, len(audio) - length + 1, step)
    return int(starts[np.argmax(energy[starts + length] - energy[starts])])


def _excerpts(utts: List[Any], mel_cfg: Any, n: int, seed: int, max_seconds: float, multiple: int
              ) -> Tuple[List[np.ndarray], List[Dict[str, Any]]]:
    """Up to ``n`` loudest-window excerpts (log-mels [n_mels, frames] and manifest rows) of ``utts``, in
    :func:`select_utterances` order, each a multiple of ``multiple`` samples and at least four of them long."""
    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel

    sr, min_len = int(mel_cfg.sample_rate), 4 * multiple
    durations = [_duration(u.wav) for u in utts]
    usable = [i for i, d in enumerate(durations) if d * sr >= min_len]
    order = select_utterances([utts[i] for i in usable], [durations[i] for i in usable], len(usable), seed)
    noise_seeds = np.random.default_rng([int(seed), 1]).integers(0, 2 ** 31 - 1, size=n)
    mels, rows = [], []
    for k in order:
        if len(mels) == n:
            break
        u = utts[usable[k]]
        audio, _ = load_wav(u.wav, sr)
        length = min(len(audio), int(max_seconds * sr)) // multiple * multiple
        if length < min_len:
            continue
        start = _loudest_window(audio, length, multiple)
        mel = log_mel(audio[start:start + length], mel_cfg).astype(np.float32)
        rows.append({"id": u.id, "speaker": u.speaker, "source_seconds": round(len(audio) / sr, 3),
                     "offset_seconds": round(start / sr, 3), "seconds": round(length / sr, 3),
                     "frames": int(mel.shape[1]), "noise_seed": int(noise_seeds[len(mels)])})
        mels.append(mel)
    return mels, rows


def build_calibration_set(corpus: str | Path, out_dir: str | Path, mel_cfg: Any, n: int = 16, seed: int = 0,
                          max_seconds: float = 1.0, multiple: int = 256, split: str = "train",
                          model_info: Optional[Dict[str, Any]] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Pick ``n`` utterances of the corpus's ``split`` and write a calibration set (atomically).

    Args:
        corpus: an LJSpeech-layout corpus folder (its ``splits.json`` decides train/valid/test).
        out_dir: the set's directory (created complete or not at all).
        mel_cfg: the model's :class:`~edgeflow.audio.mel.MelConfig`.
        n: utterances to pick.
        seed: selection and noise seed.
        max_seconds: longest excerpt kept per utterance.
        multiple: excerpt lengths are multiples of it (the model's length multiple).
        split: ``train`` (default) or ``valid``; ``test`` is refused.
        model_info: facts about the model the set was made for (family, file hash), kept in the manifest.
        overwrite: replace an existing set.

    Returns:
        The manifest written.

    Raises:
        ConfigError: bad n / max_seconds / split, or ``out_dir`` exists without ``overwrite``.
        CorpusError: an unreadable corpus. CalibrationError: no usable utterance.
    """
    from edgeflow.data.ljspeech import load_split

    if split not in ALLOWED_SPLITS:
        raise ConfigError(f"calibration sets come from the train (or valid) split, never {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n must be a positive integer, got {n!r}")
    if not max_seconds > 0:
        raise ConfigError(f"max_seconds must be > 0, got {max_seconds!r}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass --overwrite to replace it)")
    utts = load_split(corpus, split)
    min_len = 4 * int(multiple)
    mels, rows = _excerpts(utts, mel_cfg, n, seed, max_seconds, int(multiple))
    if not mels:
        raise CalibrationError(f"{corpus}: no {split} utterance is long enough ({min_len} samples) to calibrate with")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "source": {"corpus": str(Path(corpus).resolve()), "split": split, "split_size": len(utts)},
        "selection": {"n": n, "seed": seed, "max_seconds": max_seconds, "multiple": int(multiple),
                      "strategy": "round-robin over speakers, alternating long/short utterances, loudest window"},
        "utterances": rows, "count": len(rows), "speakers": sorted({r["speaker"] for r in rows}),
        "seconds": round(sum(r["seconds"] for r in rows), 3), "mel": mel_cfg.to_dict(),
        "model": dict(model_info or {}),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        np.savez(tmp / MELS_FILE, seeds=np.array([r["noise_seed"] for r in rows], dtype=np.int64),
                 **{f"mel_{i:03d}": m for i, m in enumerate(mels)})
        manifest["files"] = {MELS_FILE: sha256_file(tmp / MELS_FILE)}
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest

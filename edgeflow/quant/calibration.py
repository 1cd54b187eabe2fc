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
Reading a set checks the manifest, every file's sha256, emptiness, and the mel front-end against
the model's. Only numpy (no torch) is needed to read one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from edgeflow.core.errors import ConfigError, EdgeflowError
from edgeflow.core.io import atomic_dir, atomic_write_json, sha256_file

FORMAT = "edgeflow.calibration"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MELS_FILE = "mels.npz"
#: Splits a calibration set may be drawn from (never "test").
ALLOWED_SPLITS = ("train", "valid")


class CalibrationError(EdgeflowError):
    """A calibration set that is missing, empty, tampered with, or made for another front-end."""


@dataclasses.dataclass
class CalibrationSet:
    """A loaded, verified calibration set.

    Attributes:
        path: the set's directory.
        manifest: the parsed manifest.json.
        mels: float32 log-mels [n_mels, F], one per utterance.
        seeds: the noise seed of each utterance.
        digest: sha256 of manifest.json (which lists every file's hash): the set's identity.
    """

    path: Path
    manifest: Dict[str, Any]
    mels: List[np.ndarray]
    seeds: List[int]
    digest: str

    @property
    def ids(self) -> List[str]:
        return [u["id"] for u in self.manifest["utterances"]]

    def __len__(self) -> int:
        return len(self.mels)

    def feeds(self, hop_length: int, sigma: float, frame_multiple: int = 1,
              names=("mel", "z", "sigma")) -> Iterator[Dict[str, np.ndarray]]:
        """Graph inputs {mel [1, n_mels, F], z [1, F * hop], sigma [1]} per utterance (F padded to the multiple)."""
        from edgeflow.core.noise import noise

        for mel, seed in zip(self.mels, self.seeds):
            pad = (-mel.shape[1]) % frame_multiple
            if pad:
                mel = np.concatenate([mel, np.repeat(mel[:, -1:], pad, axis=1)], axis=1)
            z = noise(seed, 0, mel.shape[1], hop_length)
            yield dict(zip(names, (mel[None].astype(np.float32), z, np.array([sigma], np.float32))))


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
    from edgeflow.audio.io import load_wav
    from edgeflow.audio.mel import log_mel
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
    sr, min_len = int(mel_cfg.sample_rate), 4 * int(multiple)
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
        start = _loudest_window(audio, length, int(multiple))
        mel = log_mel(audio[start:start + length], mel_cfg).astype(np.float32)
        rows.append({"id": u.id, "speaker": u.speaker, "source_seconds": round(len(audio) / sr, 3),
                     "offset_seconds": round(start / sr, 3), "seconds": round(length / sr, 3),
                     "frames": int(mel.shape[1]), "noise_seed": int(noise_seeds[len(mels)])})
        mels.append(mel)
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


def _fail(path: Path, msg: str) -> CalibrationError:
    return CalibrationError(f"calibration set {path}: {msg}")


def load_calibration_set(path: str | Path, mel_cfg: Any = None) -> CalibrationSet:
    """Read and verify a calibration set.

    Args:
        path: the set's directory.
        mel_cfg: the model's MelConfig (or its dict); the set's front-end must equal it.

    Raises:
        CalibrationError: missing or unparsable manifest, foreign format/version, a file missing or
            not matching its sha256, an empty set, malformed mels, or a mel front-end (mel bins,
            sample rate, hop, ...) different from the model's.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _fail(path, f"not found (no {MANIFEST}); build one with `edgeflow calibrate`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"unreadable {MANIFEST} ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(path, f"not an edgeflow calibration set (format {manifest.get('format')!r})"
                    if isinstance(manifest, dict) else "manifest is not a mapping")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"unknown format_version {manifest.get('format_version')!r} (this edgeflow reads "
                    f"{FORMAT_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict) or MELS_FILE not in files:
        raise _fail(path, f"manifest does not list {MELS_FILE}")
    for name, digest in files.items():
        f = path / str(name)
        if "/" in str(name) or not f.is_file():
            raise _fail(path, f"file {name} is missing")
        if sha256_file(f) != digest:
            raise _fail(path, f"{name} does not match its sha256 in the manifest (modified or corrupt)")
    utts = manifest.get("utterances") or []
    if not utts or not manifest.get("count"):
        raise _fail(path, "it is empty (no utterances)")
    if mel_cfg is not None:
        want = mel_cfg if isinstance(mel_cfg, dict) else mel_cfg.to_dict()
        have = manifest.get("mel") or {}
        diff = [f"{k} {have.get(k)!r} vs the model's {want[k]!r}" for k in ("n_mels", "sample_rate", "hop_length",
                "n_fft", "win_length", "fmin", "fmax", "log_clamp") if k in want and have.get(k) != want[k]]
        if diff:
            raise _fail(path, "made for another front-end: " + "; ".join(diff))
    try:
        with np.load(path / MELS_FILE, allow_pickle=False) as z:
            mels = [z[f"mel_{i:03d}"] for i in range(len(utts))]
            seeds = [int(s) for s in z["seeds"]]
    except Exception as exc:  # noqa: BLE001 - a hash-valid but malformed npz
        raise _fail(path, f"malformed {MELS_FILE} ({type(exc).__name__})") from None
    n_mels = int((manifest.get("mel") or {}).get("n_mels", mels[0].shape[0]))
    for i, m in enumerate(mels):
        if m.ndim != 2 or m.shape[0] != n_mels or m.shape[1] == 0 or not np.all(np.isfinite(m)):
            raise _fail(path, f"mel {i} is malformed (shape {m.shape}, expected [{n_mels}, frames], finite)")
    if len(seeds) != len(mels):
        raise _fail(path, f"{len(seeds)} noise seeds for {len(mels)} mels")
    digest = hashlib.sha256(mpath.read_bytes()).hexdigest()
    return CalibrationSet(path, manifest, [m.astype(np.float32) for m in mels], seeds, digest)

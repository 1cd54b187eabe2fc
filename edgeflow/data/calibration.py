"""Reading calibration sets (a few training utterances as log-mels plus noise seeds; built by
:func:`edgeflow.quant.calibration.build_calibration_set`, which documents the layout).

Reading a set checks the manifest, every file's sha256, emptiness, and the mel front-end against the
model's. Only numpy (no torch). Here, below compression and quantization, because both read sets
(INT8 calibration; distillation data when no corpus is given).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np

from edgeflow.core.errors import EdgeflowError
from edgeflow.core.io import sha256_file

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

"""The deployable bundle: a directory with ``model.onnx`` and ``manifest.json``. No torch.

Layout::

    BUNDLE/
      model.onnx       the synthesis graph: (mel [B, n_mels, T], z [B, T*hop], sigma [1]) -> audio [B, T*hop]
      manifest.json    what the runtime needs to use it, and where it came from

Manifest keys (``format_version`` 1):

* ``format`` ("edgeflow.bundle"), ``format_version`` (1): a reader refuses anything else.
* ``family``, ``config`` (the model config dict), ``sample_rate``, ``mel`` (MelConfig dict),
  ``precision`` ("float32"), ``opset``.
* ``io``: ``inputs`` / ``outputs``, each ``{"name", "shape", "dtype"}`` with symbolic dims
  ("B", "T", "T*256"); ``sigma_default``; ``frame_multiple`` (mel frame counts the graph takes are
  multiples of it; the runtime pads).
* ``streaming``: receptive field (frames) and the default ``context_frames`` {left, right}.
* ``history`` (passes applied before export, passed through), ``validation`` (export parity),
  ``export`` (exporter versions, graph size), ``files`` ({name: sha256}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from edgeflow.core.errors import BundleError
from edgeflow.core.io import atomic_write_json, sha256_file

FORMAT = "edgeflow.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"

#: Keys every manifest of this format version has.
REQUIRED_KEYS = ("format", "format_version", "family", "config", "sample_rate", "mel", "precision", "opset",
                 "io", "streaming", "history", "validation", "files")


def _check_name(name: Any) -> str:
    """A file name listed in the manifest: a plain name inside the bundle (no directories, no '..')."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BundleError(f"manifest lists a bad file name {name!r}")
    return name


def write_manifest(bundle_dir: str | Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Hash the bundle's files into ``manifest["files"]`` and write manifest.json (atomically).

    Args:
        bundle_dir: the (temporary) bundle directory holding the files to list.
        manifest: the manifest without ``files``; every other file in the directory is listed.

    Returns:
        The manifest as written.
    """
    bundle_dir = Path(bundle_dir)
    files = {p.name: sha256_file(p) for p in sorted(bundle_dir.iterdir())
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
    out = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=files)
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        raise ValueError(f"manifest lacks {', '.join(missing)}")
    atomic_write_json(bundle_dir / MANIFEST, out)
    return out


def read_manifest(bundle_dir: str | Path, verify: bool = True) -> Dict[str, Any]:
    """Read and check a bundle's manifest.

    Args:
        bundle_dir: the bundle directory.
        verify: check that every listed file exists and matches its sha256.

    Returns:
        The manifest dict.

    Raises:
        BundleError: not a directory, no or unparsable manifest, foreign format, unknown format
            version, missing keys, a listed file missing, or a file whose sha256 does not match.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle not found (not a directory): {bundle_dir}")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: not an edgeflow bundle manifest (format {got!r}, expected {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: unknown bundle format_version {manifest.get('format_version')!r} "
                          f"(this edgeflow reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: manifest lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(f"{path}: manifest does not list {MODEL_FILE}")
    if verify:
        for name, digest in files.items():
            f = bundle_dir / _check_name(name)
            if not f.is_file():
                raise BundleError(f"{bundle_dir}: bundle file {name} is missing")
            if sha256_file(f) != digest:
                raise BundleError(f"{bundle_dir}: bundle file {name} does not match its sha256 in the "
                                  f"manifest (modified or corrupt)")
    return manifest

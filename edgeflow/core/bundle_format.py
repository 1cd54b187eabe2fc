"""The bundle *format*: names, format version, required manifest keys, and the manifest writer.

Shared by the writers (``edgeflow.export``, ``edgeflow.quant``) and the reader
(:func:`edgeflow.runtime.bundle.read_manifest`, which documents the manifest keys), so neither
layer imports the other. No torch, no onnx.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

from edgeflow.core.errors import BundleError
from edgeflow.core.io import atomic_write_json, atomic_write_text, sha256_file

FORMAT = "edgeflow.bundle"
#: 2: manifest.json is covered by the ``manifest.sha256`` sidecar. 1: no sidecar (still read, with a warning).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
#: The sidecar: ``<sha256 of the manifest's canonical JSON>  manifest.json``, one line (see manifest_digest).
SIDECAR = "manifest.sha256"
MODEL_FILE = "model.onnx"

#: Keys every manifest of this format version has.
REQUIRED_KEYS = ("format", "format_version", "family", "config", "sample_rate", "mel", "precision", "opset",
                 "io", "streaming", "history", "validation", "files")


def check_name(name: Any) -> str:
    """A file name listed in the manifest: a plain name inside the bundle (no directories, no '..')."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise BundleError(f"manifest lists a bad file name {name!r}")
    return name


def manifest_digest(manifest: Dict[str, Any]) -> str:
    """Hex sha256 of the manifest's canonical JSON (sorted keys, no whitespace, ASCII): the same for any
    re-indentation of manifest.json, different for any changed value."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Hash the bundle's files into ``manifest["files"]``; write manifest.json and its sidecar (atomically).

    Args:
        bundle_dir: the (temporary) bundle directory holding the files to list.
        manifest: the manifest without ``files``; every other file in the directory is listed.

    Returns:
        The manifest as written.
    """
    bundle_dir = Path(bundle_dir)
    files = {p.name: sha256_file(p) for p in sorted(bundle_dir.iterdir())
             if p.is_file() and p.name not in (MANIFEST, SIDECAR) and not p.name.startswith(".")}
    out = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=files)
    missing = [k for k in REQUIRED_KEYS if k not in out]
    if missing:
        raise ValueError(f"manifest lacks {', '.join(missing)}")
    atomic_write_json(bundle_dir / MANIFEST, out)
    atomic_write_text(bundle_dir / SIDECAR, f"{manifest_digest(json.loads((bundle_dir / MANIFEST).read_text()))}"
                                            f"  {MANIFEST}\n")
    return out


def copy_bundle(src: str | Path, out: str | Path, graphs: Dict[str, Path] | None = None,
                updates: Dict[str, Any] | None = None, overwrite: bool = False) -> Dict[str, Any]:
    """Copy bundle ``src`` to ``out`` with some graphs replaced and manifest fields set; the hashes rewritten and
    the directory in place only when complete. Returns the new manifest.

    Args:
        graphs: {role: path} of graph files replacing the bundle's own for those roles (same file names).
        updates: top-level manifest fields to set (replacing the old values).
        overwrite: replace an existing ``out``.
    """
    import shutil

    from edgeflow.core.io import atomic_dir

    src = Path(src)
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    for key in ("files", "format", "format_version"):
        manifest.pop(key, None)
    manifest.update(updates or {})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for role, name in manifest["graphs"].items():
            shutil.copyfile((graphs or {}).get(role, src / name), tmp / name)
        return write_manifest(tmp, manifest)

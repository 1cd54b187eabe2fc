"""The deployable bundle: a directory with ``model.onnx`` and ``manifest.json``. No torch.

Layout::

    BUNDLE/
      model.onnx       the synthesis graph: (mel [B, n_mels, T], z [B, T*hop], sigma [1]) -> audio [B, T*hop];
                       a vocoder that draws no noise (HiFi-GAN) takes (mel) only
      manifest.json    what the runtime needs to use it, and where it came from
      manifest.sha256  ``<sha256 of manifest.json's canonical JSON>  manifest.json`` (format_version 2)

``files`` hashes every other file; the sidecar hashes the manifest itself (its canonical JSON: sorted keys,
no whitespace, so re-indenting does not matter), so an edited ``io.sigma_default`` or ``sample_rate`` is
refused instead of silently changing the audio. Loading also checks every field the runtime uses for type
and range (:func:`validate_manifest`). Bundles of format_version 1 (written before the sidecar) still
load, with a :class:`BundleWarning`; a format_version 2 bundle without its sidecar is refused.

Manifest keys (``format_version`` 2):

* ``format`` ("edgeflow.bundle"), ``format_version`` (2; 1 is read): a reader refuses anything else.
* ``family``, ``config`` (the model config dict), ``sample_rate``, ``mel`` (MelConfig dict),
  ``precision`` ("float32"), ``opset``.
* ``io``: ``inputs`` / ``outputs``, each ``{"name", "shape", "dtype"}`` with symbolic dims
  ("B", "T", "T*256"); ``sigma_default`` (graphs with z and sigma inputs only); ``frame_multiple``
  (mel frame counts the graph takes are multiples of it; the runtime pads).
* ``streaming``: receptive field (frames) and the default ``context_frames`` {left, right}.
* ``history`` (passes applied before export, passed through), ``validation`` (export parity),
  ``export`` (exporter versions, graph size), ``files`` ({name: sha256}).
* ``task``: "vocoder" (the default, above) or "tts": a text-to-speech (VITS) bundle, whose fields
  (``graphs`` {encoder, decoder}, ``hop_length``, ``inter_channels``, ``phoneme_id_map``, ...) are checked
  instead of the vocoder's ``mel`` / ``io`` (layout: :mod:`edgeflow.export.vits`). Callers say which task
  they run (``read_manifest(..., task=)``); a bundle of the other task is refused in one line.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

from edgeflow.core.errors import BundleError, short_reason
from edgeflow.core.bundle_format import (FORMAT, FORMAT_VERSION, MANIFEST, MODEL_FILE,  # noqa: F401
                                         READABLE_VERSIONS, REQUIRED_KEYS, SIDECAR, manifest_digest,
                                         write_manifest)
from edgeflow.core.bundle_format import check_name as _check_name
from edgeflow.core.io import sha256_file


def read_manifest(bundle_dir: str | Path, verify: bool = True, task: Optional[str] = "vocoder") -> Dict[str, Any]:
    """Read and check a bundle's manifest.

    Args:
        bundle_dir: the bundle directory.
        verify: check that every listed file exists and matches its sha256.
        task: the task the caller runs ("vocoder", "tts"); a bundle of another task is refused. None: either
            (its fields are checked for its own task, see :func:`validate_manifest`).

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
        raise BundleError(f"{path}: unreadable manifest ({short_reason(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: not an edgeflow bundle manifest (format {got!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise BundleError(f"{path}: unknown bundle format_version {version!r} "
                          f"(this edgeflow reads {', '.join(map(str, READABLE_VERSIONS))})")
    check_sidecar(bundle_dir, manifest)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: manifest lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(f"{path}: manifest does not list {MODEL_FILE}")
    validate_manifest(manifest, path, task=task)
    if verify:
        for name, digest in files.items():
            f = bundle_dir / _check_name(name)
            if not f.is_file():
                raise BundleError(f"{bundle_dir}: bundle file {name} is missing")
            if sha256_file(f) != digest:
                raise BundleError(f"{bundle_dir}: bundle file {name} does not match its sha256 in the "
                                  f"manifest (modified or corrupt)")
    return manifest


#: Largest ``io.sigma_default`` accepted (as ``edgeflow synth --sigma``, edgeflow.cli.args.MAX_SIGMA).
MAX_SIGMA = 10.0
#: Values a manifest's ``precision`` may take.
PRECISIONS = ("float32", "float16", "int8")


class BundleWarning(UserWarning):
    """A bundle that loads but is less protected than current ones (format_version 1: no sidecar)."""


def check_sidecar(bundle_dir: Path, manifest: Dict[str, Any]) -> None:
    """Check ``manifest.sha256`` against the manifest's canonical JSON.

    A format_version 2 bundle without the sidecar is refused; a format_version 1 bundle (written
    before the sidecar existed) loads with a :class:`BundleWarning`, its fields still validated.

    Raises:
        BundleError: the sidecar is missing (format_version >= 2), malformed, or does not match.
    """
    side = Path(bundle_dir) / SIDECAR
    if not side.is_file():
        if manifest.get("format_version", 0) >= 2:
            raise BundleError(f"{bundle_dir}: {SIDECAR} is missing (every format_version 2 bundle has one; "
                              "the bundle is incomplete or was edited: export it again)")
        warnings.warn(f"{bundle_dir}: format_version 1 bundle without {SIDECAR}; its manifest is not protected "
                      "against edits (export it again for format_version 2)", BundleWarning, stacklevel=3)
        return
    try:
        words = side.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{side}: unreadable ({short_reason(exc)})") from None
    if not words or not re.fullmatch(r"[0-9a-f]{64}", words[0]):
        raise BundleError(f"{side}: not a sha256 line (expected '<64 hex digits>  {MANIFEST}')")
    if words[0] != manifest_digest(manifest):
        raise BundleError(f"{bundle_dir}: {MANIFEST} does not match its sha256 in {SIDECAR} "
                          "(edited or corrupt; export the bundle again)")


def _get(manifest: Dict[str, Any], field: str, where: Any) -> Any:
    value: Any = manifest
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            raise BundleError(f"{where}: manifest lacks field {field}")
        value = value[key]
    return value


def _bad(where: Any, field: str, expected: str, value: Any) -> BundleError:
    text = repr(value)
    return BundleError(f"{where}: manifest field {field} must be {expected}, got "
                       f"{text if len(text) <= 60 else text[:57] + '...'}")


def _int(m: Dict[str, Any], field: str, where: Any, lo: int, hi: int) -> int:
    value = _get(m, field, where)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(where, field, f"an integer in [{lo}, {hi}]", value)
    return value


def _num(m: Dict[str, Any], field: str, where: Any, lo: float, hi: float) -> float:
    value = _get(m, field, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _bad(where, field, f"a finite number in [{lo:g}, {hi:g}]", value)
    return float(value)


def _typed(m: Dict[str, Any], field: str, where: Any, kind: type, name: str) -> Any:
    value = _get(m, field, where)
    if not isinstance(value, kind) or (kind is str and not value):
        raise _bad(where, field, name, value)
    return value


def _check_tensors(m: Dict[str, Any], field: str, where: Any, count: Any, hop: int) -> list:
    """``io.inputs`` / ``io.outputs``: [{name, shape, dtype}], names unique, ``T*k`` dims with k = hop."""
    specs = _typed(m, field, where, list, "a list of {name, shape, dtype}")
    if (count is not None and len(specs) != count) or not specs:
        raise _bad(where, field, f"a list of {count or 'at least 1'} tensor specs", specs)
    for i, spec in enumerate(specs):
        f = f"{field}[{i}]"
        if not isinstance(spec, dict):
            raise _bad(where, f, "a {name, shape, dtype} object", spec)
        for key, kind, what in (("name", str, "a non-empty string"), ("dtype", str, "a non-empty string"),
                                ("shape", list, "a list of sizes")):
            if not isinstance(spec.get(key), kind) or not spec[key] and kind is str:
                raise _bad(where, f"{f}.{key}", what, spec.get(key))
        shape = spec["shape"]
        for d in shape:
            if isinstance(d, bool) or not (isinstance(d, int) and d >= 0 or isinstance(d, str) and d):
                raise _bad(where, f"{f}.shape", "sizes (integers >= 0 or symbols like 'T')", shape)
            k = re.fullmatch(r"T\*(\d+)", d) if isinstance(d, str) else None
            if k and int(k.group(1)) != hop:
                raise _bad(where, f"{f}.shape", f"'T*{hop}' (mel.hop_length is {hop})", shape)
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise _bad(where, field, "tensor specs with distinct names", names)
    return specs


#: What each task's bundles run with (for the error naming a bundle of the wrong task).
TASK_TOOLS = {"vocoder": "vocoder bundles run with edgeflow synth", "tts": "text-to-speech bundles run with "
              "edgeflow say"}


def validate_manifest(m: Dict[str, Any], where: Any = "bundle", task: Optional[str] = "vocoder") -> None:
    """Check every field the runtime uses for type and range (one-line BundleError naming the field).

    The manifest's ``task`` (default "vocoder") picks the checks: "tts" (a VITS bundle: encoder and decoder
    graphs, hop, channels, phoneme map; :func:`_validate_tts`) or the vocoder's (mel, a 3-input io, sigma).

    Args:
        m: the manifest.
        where: what error messages name (the manifest path).
        task: the task the caller runs; a manifest of another task is refused. None: either.
    """
    family = _typed(m, "family", where, str, "a non-empty string")
    kind = m.get("task", "vocoder")
    if kind not in TASK_TOOLS:
        raise _bad(where, "task", " or ".join(repr(t) for t in TASK_TOOLS), kind)
    if task is not None and kind != task:
        what = "text-to-speech voice" if task == "tts" else f"{task} bundle"
        raise BundleError(f"{where}: a {kind!r} bundle (family {family}) is not a {what} ({TASK_TOOLS[kind]})")
    (_validate_tts if kind == "tts" else _validate_vocoder)(m, where)


def _validate_vocoder(m: Dict[str, Any], where: Any) -> None:
    """The fields a vocoder bundle's runtime uses (:class:`edgeflow.runtime.Synthesizer`): sample rate, the mel
    front-end, precision, opset, the (mel, z, sigma) or (mel) graph io with its ``T*hop`` dims, sigma, frame
    multiple, streaming context, files."""
    for field in ("config", "mel", "io", "streaming", "validation"):
        _typed(m, field, where, dict, "an object")
    _typed(m, "history", where, list, "a list")
    sr = _int(m, "sample_rate", where, 1000, 384000)
    if _int(m, "mel.sample_rate", where, 1000, 384000) != sr:
        raise _bad(where, "mel.sample_rate", f"the bundle's sample_rate {sr}", m["mel"]["sample_rate"])
    n_fft = _int(m, "mel.n_fft", where, 8, 1 << 16)
    hop = _int(m, "mel.hop_length", where, 1, n_fft)
    _int(m, "mel.win_length", where, 1, n_fft)
    n_mels = _int(m, "mel.n_mels", where, 1, 1024)
    fmin = _num(m, "mel.fmin", where, 0.0, sr / 2)
    _num(m, "mel.fmax", where, fmin, sr / 2)
    if "log_clamp" in m["mel"]:
        _num(m, "mel.log_clamp", where, 1e-30, 1.0)
    from edgeflow.audio.mel import MelConfig
    from edgeflow.core.errors import ConfigError

    try:
        MelConfig.from_dict(m["mel"])
    except ConfigError as exc:
        raise BundleError(f"{where}: manifest field mel is inconsistent ({exc})") from None
    if m["precision"] not in PRECISIONS:
        raise _bad(where, "precision", " or ".join(PRECISIONS), m["precision"])
    _int(m, "opset", where, 1, 1000)
    inputs = _check_tensors(m, "io.inputs", where, None, hop)
    if len(inputs) not in (1, 3):
        raise _bad(where, "io.inputs", "(mel, z, sigma) or (mel) tensor specs", [i["name"] for i in inputs])
    _check_tensors(m, "io.outputs", where, None, hop)
    mel_shape = inputs[0]["shape"]
    if len(mel_shape) == 3 and isinstance(mel_shape[1], int) and mel_shape[1] != n_mels:
        raise _bad(where, "io.inputs[0].shape", f"[B, {n_mels}, T] (mel.n_mels is {n_mels})", mel_shape)
    if len(inputs) == 3:                  # noise inputs; a mel-only graph (HiFi-GAN) has no sigma
        _num(m, "io.sigma_default", where, 0.0, MAX_SIGMA)
    if "frame_multiple" in m["io"]:
        _int(m, "io.frame_multiple", where, 1, 1 << 16)
    for side in ("left", "right"):
        _int(m, f"streaming.context_frames.{side}", where, 0, 1 << 20)
    _check_files(m, where)
    if "export" in m and isinstance(m["export"], dict) and isinstance(m["export"].get("graph"), dict) \
            and "nodes" in m["export"]["graph"]:
        _int(m, "export.graph.nodes", where, 0, 1 << 40)


def _check_files(m: Dict[str, Any], where: Any) -> Dict[str, str]:
    files = _typed(m, "files", where, dict, "an object")
    for name, digest in files.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _bad(where, f"files.{name}", "a sha256 (64 hex digits)", digest)
    return files


def _validate_tts(m: Dict[str, Any], where: Any) -> None:
    """The fields a text-to-speech (VITS) bundle's runtime uses (:class:`edgeflow.runtime.Voice`): the
    encoder and decoder graphs among the listed files, sample rate, hop, prior channels, streaming context,
    phoneme map (an object; its symbols and ids are checked by ``VoiceConfig``), precision, opset."""
    for field in ("config", "streaming", "graphs", "phoneme_id_map"):
        _typed(m, field, where, dict, "an object")
    _typed(m, "history", where, list, "a list")
    _int(m, "sample_rate", where, 1000, 384000)
    _int(m, "hop_length", where, 1, 1 << 16)
    _int(m, "inter_channels", where, 1, 1 << 16)
    for field in ("sample_rate", "hop_length", "inter_channels"):    # the graphs were built with config's
        if field in m["config"] and m["config"][field] != m[field]:
            raise _bad(where, field, f"config.{field} ({m['config'][field]!r})", m[field])
    for side in ("left", "right"):
        _int(m, f"streaming.context_frames.{side}", where, 0, 1 << 20)
    if m["precision"] not in PRECISIONS:
        raise _bad(where, "precision", " or ".join(PRECISIONS), m["precision"])
    _int(m, "opset", where, 1, 1000)
    files = _check_files(m, where)
    for role in ("encoder", "decoder"):
        name = _typed(m, f"graphs.{role}", where, str, "a non-empty string")
        if name not in files:
            raise _bad(where, f"graphs.{role}", "a file listed in files", name)

"""Bundle manifests: protected by the manifest.sha256 sidecar, every field checked for type and range on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeflow.cli.main import main
from edgeflow.core.errors import BundleError
from export_helpers import N_MELS, save_tiny, test_mel


def _cli(argv, capsys):
    """(exit code, stderr) of ``edgeflow ARGV``."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny waveflow model.pt, its bundle (exported by the CLI) and a mel, shared by the module."""
    root = tmp_path_factory.mktemp("manifest")
    pt = save_tiny(root / "wf.pt", "waveflow")
    assert main(["export", str(pt), "-o", str(root / "bundle")]) == 0
    np.save(root / "mel.npy", test_mel(9))
    return pt, root / "bundle", root / "mel.npy"


def _edited(bundle: Path, tmp_path: Path, edit, resign: bool) -> Path:
    from edgeflow.core.bundle_format import SIDECAR, manifest_digest

    out = tmp_path / "edited"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m, indent=1))
    if resign:
        (out / SIDECAR).write_text(f"{manifest_digest(m)}  manifest.json\n")
    return out


def _set(field, value):
    def edit(m):
        *path, last = field.split(".")
        d = m
        for k in path:
            d = d[k]
        d[last] = value
    return edit


@pytest.mark.parametrize("field,value", [("io.sigma_default", 0.5), ("sample_rate", 16000),
                                         ("mel.hop_length", 32), ("io.frame_multiple", 3)])
def test_edited_manifest_refused(tiny, tmp_path, capsys, field, value):
    from edgeflow.runtime import Synthesizer

    edited = _edited(tiny[1], tmp_path, _set(field, value), resign=False)
    with pytest.raises(BundleError, match="does not match its sha256 in manifest.sha256"):
        Synthesizer.load(edited)
    code, err = _cli(["synth", edited, "--mel", tiny[2], "-o", tmp_path / "o.wav"], capsys)
    assert code == 2 and err.count("\n") == 1 and "manifest.sha256" in err, err
    assert not (tmp_path / "o.wav").exists()


def test_sidecar_canonical_missing_and_version_1(tiny, tmp_path):
    from edgeflow.runtime import Synthesizer
    from edgeflow.runtime.bundle import BundleWarning, read_manifest

    reindented = _edited(tiny[1], tmp_path, lambda m: None, resign=False)    # same values, other whitespace
    assert read_manifest(reindented)["format_version"] == 2
    (reindented / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="manifest.sha256 is missing"):
        read_manifest(reindented)
    (reindented / "manifest.sha256").write_text("not a hash\n")
    with pytest.raises(BundleError, match="not a sha256 line"):
        read_manifest(reindented)
    old = _edited(tiny[1], tmp_path, _set("format_version", 1), resign=False)
    (old / "manifest.sha256").unlink()
    with pytest.warns(BundleWarning, match="format_version 1 bundle without manifest.sha256"):
        Synthesizer.load(old)


BAD_FIELDS = [("sample_rate", "8000"), ("sample_rate", 0), ("mel.hop_length", -64), ("mel.hop_length", 32),
              ("mel.n_mels", 0), ("mel.sample_rate", 16000), ("mel.fmax", 1e9), ("io.sigma_default", float("nan")),
              ("io.sigma_default", 1e30), ("io.sigma_default", "0.8"), ("io.frame_multiple", 0),
              ("io.frame_multiple", 2.5), ("io.inputs", []), ("streaming.context_frames.left", -1),
              ("precision", "int4"), ("opset", True), ("family", ""), ("history", {}), ("files.model.onnx", "abc")]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_manifest_field_named(tiny, tmp_path, field, value):
    from edgeflow.runtime.bundle import read_manifest

    if field == "files.model.onnx":
        edit = lambda m: m["files"].update({"model.onnx": value})   # noqa: E731 - the key has a dot
    else:
        edit = _set(field, value)
    edited = _edited(tiny[1], tmp_path, edit, resign=True)
    with pytest.raises(BundleError) as info:
        read_manifest(edited)
    msg = str(info.value)
    assert "\n" not in msg and "manifest field" in msg and field in msg, msg


def test_io_names_and_shapes_validated(tiny, tmp_path):
    from edgeflow.runtime.bundle import read_manifest

    def no_name(m):
        m["io"]["inputs"][1]["name"] = 5

    def dup(m):
        m["io"]["inputs"][1]["name"] = m["io"]["inputs"][0]["name"]

    def channels(m):
        m["io"]["inputs"][0]["shape"][1] = N_MELS + 1

    for edit, match in ((no_name, r"io.inputs\[1\].name"), (dup, "distinct names"), (channels, "mel.n_mels")):
        with pytest.raises(BundleError, match=match):
            read_manifest(_edited(tiny[1], tmp_path, edit, resign=True))

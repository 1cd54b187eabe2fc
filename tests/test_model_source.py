"""``pkg:NAME[/FILE]`` model arguments: a model file shipped in an installed package, found without importing it."""

from __future__ import annotations

import argparse
import sys

import pytest

from edgeflow.cli.args import model_source


@pytest.fixture
def fake_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "voice_pkg_x"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('importing the package must not happen')\n")
    (pkg / "data" / "v.onnx").write_bytes(b"onnx")
    (pkg / "data" / "v.onnx.json").write_text("{}")
    (pkg / "data" / "lonely.onnx").write_bytes(b"no json beside it: not a voice")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkg


def test_a_package_with_one_model_resolves_without_importing_it(fake_pkg):
    assert model_source("pkg:voice-pkg-x") == str(fake_pkg / "data" / "v.onnx")
    assert model_source("pkg:voice_pkg_x/v.onnx") == str(fake_pkg / "data" / "v.onnx")
    assert "voice_pkg_x" not in sys.modules
    assert model_source("plain/path.pt") == "plain/path.pt"


def test_ambiguous_missing_or_unknown_is_one_clear_error(fake_pkg):
    (fake_pkg / "data" / "g.pth.tar").write_bytes(b"x")
    with pytest.raises(argparse.ArgumentTypeError, match="more than one model file.*g.pth.tar, data/v.onnx"):
        model_source("pkg:voice-pkg-x")
    with pytest.raises(argparse.ArgumentTypeError, match="no model file"):
        model_source("pkg:voice-pkg-x/other.onnx")
    with pytest.raises(argparse.ArgumentTypeError, match="no installed package"):
        model_source("pkg:surely-not-installed-zz")


def test_cli_reports_a_bad_package_in_one_line(capsys):
    from edgeflow.cli.main import main

    assert main(["say", "pkg:surely-not-installed-zz", "--text", "hi", "-o", "x.wav"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no installed package" in err[0]

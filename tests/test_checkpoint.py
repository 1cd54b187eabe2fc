"""model.pt: exact round trip, and every kind of bad checkpoint refused with a one-line CheckpointError
(library) or exit code 2 and one stderr line (CLI), never by running code from the file."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.core.errors import CheckpointError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.base import build_model
from edgeflow.models.checkpoint import checkpoint_dict, load_model, read_checkpoint, save_model

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

TINY = {
    "waveflow": {"n_flows": 2, "n_layers": 2, "height": 4, "channels": 4},
    "waveglow": {"n_flows": 3, "n_early_every": 2, "n_early_size": 2, "wn_layers": 2, "wn_channels": 4},
}



def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(family, TINY[family])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


class RunsCode:
    """Unpickling this calls os.system: a checkpoint holding it must be refused, not loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    """An arbitrary class instance (unpickling it imports this module)."""

    def __init__(self):
        self.weights = torch.zeros(3)


# -- round trip -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
def test_save_load_round_trip(tmp_path, family):
    model = tiny(family)
    path = tmp_path / "model.pt"
    save_model(path, model, history=[{"step": 3, "loss": 0.5}], meta={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]          # atomic: no temp file left
    loaded, info = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert "state_dict" not in info and info["family"] == family
    assert info["config"] == model.config.to_dict() and loaded.config == model.config
    assert info["history"] == [{"step": 3, "loss": 0.5}] and info["meta"] == {"note": "test"}
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    mel = torch.randn(1, 80, 2)
    audio = 0.1 * torch.randn(1, 2 * 256)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(audio, mel)[0], loaded(audio, mel)[0])
    assert load_model(path, family=family)[1]["family"] == family


def test_round_trip_without_weight_norm(tmp_path):
    model = tiny("waveflow").eval()
    remove_weight_norm(model)
    save_model(tmp_path / "m.pt", model)
    assert read_checkpoint(tmp_path / "m.pt")["weight_norm"] is False
    loaded, _ = load_model(tmp_path / "m.pt")
    mel, z = torch.randn(1, 80, 2), torch.randn(1, 512)
    with torch.no_grad():
        assert torch.equal(model.inverse(z, mel)[0], loaded.inverse(z, mel)[0])


# -- bad checkpoints ------------------------------------------------------------------------------------------------

def _valid_dict(family="waveflow"):
    return checkpoint_dict(tiny(family))


def _write_bad(kind: str, path: Path, marker: Path) -> None:
    """Write a bad checkpoint of one kind to ``path``."""
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "text-file":
        path.write_text("this is not a model\n" * 10)
    elif kind == "truncated-zip":
        save_model(path, tiny("waveflow"))
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "foreign-dict":
        torch.save({"weights": torch.zeros(4, 4), "epoch": 3}, path)
    elif kind == "state-dict":
        torch.save(tiny("waveflow").state_dict(), path)
    elif kind == "runs-code-zip":
        ckpt = _valid_dict()
        ckpt["meta"] = {"payload": RunsCode(marker)}
        torch.save(ckpt, path)
    elif kind == "runs-code-pickle":
        with open(path, "wb") as f:
            pickle.dump({"format": "edgeflow.model", "payload": RunsCode(marker)}, f, protocol=4)
    elif kind == "class-instance":
        torch.save(Plain(), path)
    elif kind == "weights-mismatch":
        ckpt = _valid_dict()
        ckpt["config"]["channels"] = 8                     # config says 8 channels, weights have 4
        torch.save(ckpt, path)
    elif kind == "missing-weights":
        ckpt = _valid_dict()
        del ckpt["state_dict"]["flows.blocks.0.inner.net.end.weight"]
        torch.save(ckpt, path)
    elif kind == "no-state-dict":
        ckpt = _valid_dict()
        del ckpt["state_dict"]
        torch.save(ckpt, path)
    elif kind == "unknown-family":
        ckpt = _valid_dict()
        ckpt["family"] = "wavenet"
        torch.save(ckpt, path)
    elif kind == "future-version":
        ckpt = _valid_dict()
        ckpt["format_version"] = 99
        torch.save(ckpt, path)
    elif kind == "bad-config":
        ckpt = _valid_dict()
        ckpt["config"]["n_flowz"] = 3
        torch.save(ckpt, path)
    else:
        raise AssertionError(kind)


BAD = {
    "random-bytes": "corrupt",
    "empty-file": "corrupt",
    "text-file": "corrupt",
    "truncated-zip": "corrupt",
    "foreign-dict": "not an edgeflow model checkpoint",
    "state-dict": "not an edgeflow model checkpoint",
    "runs-code-zip": "refused.*would run code",
    "runs-code-pickle": "refused.*would run code",
    "class-instance": "refused.*would run code",
    "weights-mismatch": "weights do not match the waveflow config",
    "missing-weights": "weights do not match the waveflow config",
    "no-state-dict": "no state_dict",
    "unknown-family": "unknown model family 'wavenet'",
    "future-version": "format_version 99",
    "bad-config": "bad config.*n_flowz",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_checkpoint_refused(tmp_path, kind):
    path, marker = tmp_path / "bad.pt", tmp_path / "PWNED"
    _write_bad(kind, path, marker)
    with pytest.raises(CheckpointError, match=BAD[kind]) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400 and "bad.pt" in msg, msg
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_runs_code_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """Sanity of the test above: the payload does create the marker when loaded the unsafe way."""
    path, marker = tmp_path / "bad.pt", tmp_path / "PWNED"
    _write_bad("runs-code-pickle", path, marker)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_other_family_refused(tmp_path):
    save_model(tmp_path / "wf.pt", tiny("waveflow"))
    with pytest.raises(CheckpointError, match="is a waveflow model, expected waveglow") as info:
        load_model(tmp_path / "wf.pt", family="waveglow")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_model(tmp_path)


# -- CLI: `edgeflow synth MODEL.pt --mel X.npy -o out.wav` ----------------------------------------------------------

def _cli_help() -> str:
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "--help"], capture_output=True, text=True, cwd=REPO,
                          env=ENV, timeout=120)
    return proc.stdout


HAS_SYNTH = "synth" in _cli_help()
needs_synth = pytest.mark.skipif(not HAS_SYNTH, reason="`edgeflow synth` does not exist yet")


CLI_BAD = ["random-bytes", "foreign-dict", "runs-code-zip", "weights-mismatch"]


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory):
    """Run ``edgeflow synth`` on a good model and on each bad one, all at once (each run is mostly torch import).

    Returns kind -> (CompletedProcess-like result, output wav path, marker path).
    """
    root = tmp_path_factory.mktemp("synth")
    mel = root / "mel.npy"
    np.save(mel, np.random.default_rng(0).standard_normal((80, 4)).astype(np.float32) - 5)
    jobs = {}
    for kind in ["good"] + CLI_BAD:
        d = root / kind
        d.mkdir()
        path, marker, out = d / ("good.pt" if kind == "good" else "bad.pt"), d / "PWNED", d / "out.wav"
        if kind == "good":
            save_model(path, tiny("waveflow"))
        else:
            _write_bad(kind, path, marker)
        proc = subprocess.Popen([sys.executable, "-m", "edgeflow", "synth", str(path), "--mel", str(mel), "-o",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d,
                                env=ENV)
        jobs[kind] = (proc, out, marker)
    results = {}
    for kind, (proc, out, marker) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[kind] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out, marker)
    return results


@needs_synth
def test_cli_synth_good_model(synth_runs):
    """The control for the CLI error tests: the same command with a good model works."""
    proc, out, _ = synth_runs["good"]
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@needs_synth
@pytest.mark.parametrize("kind", CLI_BAD)
def test_cli_synth_bad_checkpoint(synth_runs, kind):
    proc, out, marker = synth_runs[kind]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(BAD[kind], lines[0]) and "bad.pt" in lines[0], lines[0]
    assert not out.exists()
    assert not marker.exists(), "the CLI ran code from the checkpoint"

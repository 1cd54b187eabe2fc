"""The native text encoder (``ef_enc.c``) and the tts_text_encoder pass, on a tiny random voice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeflow.core.errors import BundleError, InputError
from edgeflow.passes.kernels import compare
from tests.test_native_vits import TEXT, tiny  # noqa: F401  (fixture)


def _ids(model, n=37, seed=0):
    return np.random.default_rng(seed).integers(0, model.enc_p.emb.num_embeddings, n).astype(np.int64)


def _encoder(root, threads=1, **kw):
    from edgeflow.runtime.native.text_encoder import NativeTextEncoder, pack_text_encoder

    cfg = __import__("json").loads((root / "b" / "manifest.json").read_text())["config"]
    arrays = pack_text_encoder(root / "b" / "model.onnx", cfg["n_layers"], cfg["n_heads"])
    arrays.update(kw)
    return NativeTextEncoder(arrays, threads=threads), arrays


def test_kernel_matches_pytorch(tiny):  # noqa: F811
    """The INT8 kernel stays close to the PyTorch transformer (per-tile u8 activations, s8 weights); every float
    part counts: without the relative keys / values or with the last LayerNorm's beta moved it drifts far."""
    model, root, _ = tiny
    enc, arrays = _encoder(root)
    ids = _ids(model)
    with torch.no_grad():
        want = model.enc_p(torch.from_numpy(ids)[None], torch.tensor([ids.size]))[0].numpy()
    got = enc.run(ids)
    assert got.shape == want.shape == (1, model.enc_p.hidden, ids.size)
    assert 25 <= compare(got, want)["snr_db"] < 200                         # INT8: close, not equal
    for part in ("emb_rel_k", "emb_rel_v"):
        bad, _ = _encoder(root, **{f"attn_layers.0.{part}": np.zeros_like(arrays[f"attn_layers.0.{part}"])})
        assert compare(bad.run(ids), want)["snr_db"] < compare(got, want)["snr_db"] - 6
    ln = arrays["ln.1"].copy()
    ln[3] += 0.5                                                              # the last LayerNorm's beta
    bad, _ = _encoder(root, **{"ln.1": ln})
    assert compare(bad.run(ids), want)["snr_db"] < 20


def test_threads_and_lengths(tiny):  # noqa: F811
    """Output rows split between threads and heads on their own thread: the same numbers; any length from 1 to past
    one tile of tokens; deterministic; ids out of range refused."""
    model, root, _ = tiny
    one, _ = _encoder(root, threads=1)
    two, _ = _encoder(root, threads=2)
    for n in (1, 5, 64, 129, 300):
        ids = _ids(model, n, seed=n)
        a = one.run(ids)
        assert a.shape == (1, model.enc_p.hidden, n) and np.isfinite(a).all()
        assert np.array_equal(a, two.run(ids)) and np.array_equal(a, one.run(ids))
        with torch.no_grad():
            want = model.enc_p(torch.from_numpy(ids)[None], torch.tensor([n]))[0].numpy()
        assert compare(a, want)["snr_db"] >= 25
    for bad in ([], [-1, 2], [0, model.enc_p.emb.num_embeddings]):
        with pytest.raises(InputError, match="phoneme ids"):
            one.run(bad)


def test_cut_tail_is_the_rest_of_the_graph(tiny, tmp_path):  # noqa: F811
    """model_tail.onnx fed the transformer's output gives model.onnx's outputs exactly."""
    import onnx
    import onnxruntime as ort

    from edgeflow.runtime.native.text_encoder import ENCODER_OUTPUT, TAIL_INPUT, cut_encoder_tail

    model, root, _ = tiny
    full = onnx.load(str(root / "b" / "model.onnx"))
    cut_encoder_tail(full, tmp_path / "tail.onnx")
    full.graph.output.append(onnx.helper.make_tensor_value_info(ENCODER_OUTPUT, onnx.TensorProto.FLOAT, None))
    s_full = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    s_tail = ort.InferenceSession(str(tmp_path / "tail.onnx"), providers=["CPUExecutionProvider"])
    ids = _ids(model, 23)
    feeds = {"input": ids[None], "input_lengths": np.array([ids.size]), "scales": np.array([0.5, 1.1, 0.7], np.float32),
             "noise_w_z": np.random.default_rng(2).standard_normal((1, 2, ids.size)).astype(np.float32)}
    *outs, x = s_full.run(None, feeds)
    tail = s_tail.run(None, dict(feeds, **{TAIL_INPUT: x}))
    assert len(tail) == len(outs) and all(np.array_equal(a, b) for a, b in zip(outs, tail))
    layers = ("/enc_p/encoder/attn_layers", "/enc_p/encoder/ffn_layers", "/enc_p/encoder/norm_layers")
    assert not any(n.name.startswith(layers) for n in onnx.load(str(tmp_path / "tail.onnx")).graph.node)
    with pytest.raises(Exception, match="Mul_2_output_0"):
        cut_encoder_tail(root / "b" / "decoder.onnx", tmp_path / "bad.onnx")


def test_pass_voice_and_manifest(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes.tts_text_encoder import TtsTextEncoderConfig, add_tts_text_encoder
    from edgeflow.runtime import Voice

    _, root, _ = tiny
    m = add_tts_text_encoder(root / "k", tmp_path / "t", TtsTextEncoderConfig(threads=1, time_seconds=0.3))
    te = m["native"]["text_encoder"]
    assert te["file"] == "model_tail.onnx" and te["file"] in m["files"] and te["input"] == "enc_x"
    assert te["source_encoder_sha256"] == m["files"]["model.onnx"] and 25 <= te["calibration"]["snr_db"] < 200
    assert m["native"]["timing"]["native_rtf"] > 0
    nat = Voice.load(tmp_path / "t", engine="native")
    assert nat.text_encoder is not None and nat.encoder.get_inputs()[0].name == "enc_x"
    a = nat.speak(TEXT, seed=3)[0]
    assert np.isfinite(a).all() and np.array_equal(a, Voice.load(tmp_path / "t", engine="native").speak(
        TEXT, seed=3)[0])                                                   # deterministic
    ort_t, ort_k = (Voice.load(p, engine="onnxruntime") for p in (tmp_path / "t", root / "k"))
    assert ort_t.text_encoder is None and np.array_equal(ort_t.speak(TEXT, seed=3)[0], ort_k.speak(TEXT, seed=3)[0])
    flt = Voice.load(root / "k", engine="native").speak(TEXT, seed=3)[0]
    assert abs(a.size - flt.size) <= 0.1 * flt.size                          # durations follow the encoder


def test_say_names_the_native_text_encoder(tiny, tmp_path, capsys):  # noqa: F811
    from edgeflow.cli.main import main
    from edgeflow.passes.tts_text_encoder import TtsTextEncoderConfig, add_tts_text_encoder

    _, root, _ = tiny
    add_tts_text_encoder(root / "k", tmp_path / "t", TtsTextEncoderConfig(threads=1, time_seconds=0))
    assert main(["say", str(tmp_path / "t"), "--text", TEXT, "--engine", "native", "-o", str(tmp_path / "a.wav")]) == 0
    assert "native prior flow and text encoder" in capsys.readouterr().out
    assert main(["say", str(root / "k"), "--text", TEXT, "--engine", "native", "-o", str(tmp_path / "b.wav")]) == 0
    out = capsys.readouterr().out
    assert "native prior flow" in out and "text encoder" not in out


def test_manifest_part_is_checked_and_dropped_when_stale(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes.tts_text_encoder import TtsTextEncoderConfig, add_tts_text_encoder
    from edgeflow.runtime.voice_config import vits_native_section

    _, root, _ = tiny
    m = add_tts_text_encoder(root / "k", tmp_path / "t", TtsTextEncoderConfig(threads=1, time_seconds=0))
    assert vits_native_section(m, "x")["text_encoder"]["file"] == "model_tail.onnx"
    te = m["native"]["text_encoder"]
    for bad in ({"file": "../x.onnx"}, {"engine": "vits-text-encoder-int4"}, {"input": None}):
        with pytest.raises(BundleError, match="native.text_encoder"):
            vits_native_section(dict(m, native=dict(m["native"], text_encoder=dict(te, **bad))), "x")
    stale = dict(m, native=dict(m["native"], text_encoder=dict(te, source_encoder_sha256="0" * 64)))
    left = vits_native_section(stale, "x")
    assert left is not None and "text_encoder" not in left and left["decoder"] == m["native"]["decoder"]


def test_pass_leaves_other_bundles_and_refuses_a_misread_graph(tiny, tmp_path, monkeypatch):  # noqa: F811
    import edgeflow.passes.tts_text_encoder as tt
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    _, root, _ = tiny
    art = Artifact(bundle_dir=root / "b")
    rec = apply_pass(art, make_config("tts_text_encoder", {}), PassContext(tmp_path / "c1", progress=False))
    assert rec["details"]["native"] is False and "tts_kernels" in rec["details"]["reason"]
    tt.add_tts_text_encoder(root / "k", tmp_path / "t", tt.TtsTextEncoderConfig(threads=1, time_seconds=0))
    rec = apply_pass(Artifact(bundle_dir=tmp_path / "t"), make_config("tts_text_encoder", {}),
                     PassContext(tmp_path / "c2", progress=False))
    assert rec["details"]["native"] is False and "already native" in rec["details"]["reason"]
    monkeypatch.setattr(tt, "MIN_SNR_DB", 200.0)
    with pytest.raises(BundleError, match="not read as it computes"):
        tt.add_tts_text_encoder(root / "k", tmp_path / "q", tt.TtsTextEncoderConfig(threads=1, time_seconds=0))
    assert not (tmp_path / "q").exists()
    with pytest.raises(ValueError, match="sentences"):
        tt.TtsTextEncoderConfig(sentences=0)

"""The tts_flow_int8 pass: the native prior flow's WaveNet convs in INT8, on a tiny random voice."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import BundleError
from edgeflow.passes.kernels import compare
from tests.test_native_vits import TEXT, tiny  # noqa: F401  (fixture)


def test_pass_voice_and_manifest(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes.tts_flow_int8 import TtsFlowInt8Config, add_tts_flow_int8
    from edgeflow.runtime import Voice
    from edgeflow.runtime.native.vits_graph import pack_vits_flow
    from edgeflow.runtime.native.wn import NativeFlow, quantize_weights

    _, root, _ = tiny
    m = add_tts_flow_int8(root / "k", tmp_path / "q", TtsFlowInt8Config(threads=1, time_seconds=0.3, res_skip=True))
    sec = m["native"]
    assert sec["engine"] == "vits-flow-int8" and sec["int8_flow"]["layers"] == 8      # 4 couplings x 2 layers
    assert sec["int8_convs"] == ["in", "rs"] and sec["int8_flow"]["res_skip_layers"] == 8
    cal = sec["int8_flow"]["calibration"]
    assert 15 <= cal["flow_snr_db"] < 200 and cal["audio_snr_db"] < 200         # INT8: close, not equal
    assert sec["timing"]["native_rtf"] > 0 and set(m["files"]) == set(
        Voice.load(root / "k").manifest["files"])                              # no new file: quantized at load
    nat, flt = Voice.load(tmp_path / "q", engine="native"), Voice.load(root / "k", engine="native")
    assert nat.flow.int8_layers == 8 and nat.flow.int8_res_skip == 8 and flt.flow.int8_layers == 0
    x = np.random.default_rng(1).standard_normal((1, nat.channels, 40)).astype(np.float32)
    want = NativeFlow(arrays=quantize_weights(pack_vits_flow(root / "k" / "decoder.onnx"), res_skip=True),
                      threads=1).run(x)
    assert np.array_equal(nat.flow.run(x), want)                                # the weights the runtime derives
    assert 15 <= compare(nat.flow.run(x), flt.flow.run(x))["snr_db"] < 200
    a = nat.speak(TEXT, seed=3)[0]
    assert np.isfinite(a).all() and np.array_equal(a, Voice.load(tmp_path / "q", engine="native").speak(
        TEXT, seed=3)[0])                                                       # deterministic
    ort_q, ort_k = (Voice.load(p, engine="onnxruntime").speak(TEXT, seed=3)[0] for p in (tmp_path / "q", root / "k"))
    assert np.array_equal(ort_q, ort_k)                                         # onnxruntime's graph stays float


def test_res_skip_off_and_bundles_without_the_field(tiny, tmp_path):  # noqa: F811
    """``res_skip`` off (the default): the dilated convs only (``int8_convs`` ["in"]); a section without
    ``int8_convs`` (bundles of 2026-12-05 before 17:00 UTC) reads the same; the two INT8 flows differ and both stay
    close to the float one."""
    import json

    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.passes.tts_flow_int8 import TtsFlowInt8Config, add_tts_flow_int8
    from edgeflow.runtime import Voice

    _, root, _ = tiny
    m = add_tts_flow_int8(root / "k", tmp_path / "in", TtsFlowInt8Config(threads=1, time_seconds=0))
    assert m["native"]["int8_convs"] == ["in"] and m["native"]["int8_flow"]["res_skip_layers"] == 0
    old = json.loads((tmp_path / "in" / "manifest.json").read_text())
    old["native"].pop("int8_convs")
    write_manifest(tmp_path / "in", {k: v for k, v in old.items() if k not in ("files", "format", "format_version")})
    add_tts_flow_int8(root / "k", tmp_path / "rs", TtsFlowInt8Config(threads=1, time_seconds=0, res_skip=True))
    (a, b), flt = (Voice.load(tmp_path / p, engine="native") for p in ("in", "rs")), Voice.load(root / "k",
                                                                                                 engine="native")
    assert (a.flow.int8_layers, a.flow.int8_res_skip, b.flow.int8_res_skip) == (8, 0, 8)
    x = np.random.default_rng(5).standard_normal((1, a.channels, 70)).astype(np.float32)
    ya, yb, yf = a.flow.run(x), b.flow.run(x), flt.flow.run(x)
    assert not np.array_equal(ya, yb) and min(compare(y, yf)["snr_db"] for y in (ya, yb)) >= 15


def test_after_the_wave_stage(tiny, tmp_path):  # noqa: F811
    """The recipes' order: tts_wave, then tts_flow_int8; the voice runs both native parts."""
    from edgeflow.passes.tts_flow_int8 import TtsFlowInt8Config, add_tts_flow_int8
    from edgeflow.passes.tts_wave import TtsWaveConfig, add_tts_wave
    from edgeflow.runtime import Voice

    _, root, _ = tiny
    add_tts_wave(root / "k", tmp_path / "w", TtsWaveConfig(threads=1, time_seconds=0))
    m = add_tts_flow_int8(tmp_path / "w", tmp_path / "q", TtsFlowInt8Config(threads=1, time_seconds=0))
    assert m["native"]["wave_stage"]["file"] in m["files"] and m["native"]["timing"] is None
    voice = Voice.load(tmp_path / "q", engine="native")
    assert voice.wave is not None and voice.flow.int8_layers == 8
    streamed = np.concatenate(list(voice.speak_stream(TEXT, seed=3, chunk_frames=16, first_chunk_frames=8)))
    assert compare(streamed, voice.speak(TEXT, seed=3)[0])["snr_db"] >= 15


def test_pass_leaves_other_bundles(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.passes.tts_flow_int8 import TtsFlowInt8Config, add_tts_flow_int8

    _, root, _ = tiny
    art = Artifact(bundle_dir=root / "b")
    rec = apply_pass(art, make_config("tts_flow_int8", {}), PassContext(tmp_path, progress=False))
    assert rec["details"]["native"] is False and "tts_kernels" in rec["details"]["reason"]
    assert art.bundle_dir == root / "b"
    add_tts_flow_int8(root / "k", tmp_path / "q", TtsFlowInt8Config(threads=1, time_seconds=0))
    art = Artifact(bundle_dir=tmp_path / "q")
    rec = apply_pass(art, make_config("tts_flow_int8", {}), PassContext(tmp_path / "ctx", progress=False))
    assert rec["details"]["native"] is False and "already INT8" in rec["details"]["reason"]
    with pytest.raises(ValueError, match="sentences"):
        TtsFlowInt8Config(sentences=0)


def test_manifest_engine_is_checked(tiny):  # noqa: F811
    from edgeflow.runtime.voice_config import vits_native_section

    _, _, manifest = tiny
    with pytest.raises(BundleError, match="native"):
        vits_native_section(dict(manifest, native=dict(manifest["native"], engine="vits-flow-int4")), "x")
    int8 = dict(manifest["native"], engine="vits-flow-int8")
    for convs, engine in ((["rs"], "vits-flow-int8"), (["in", "gate"], "vits-flow-int8"), ("in", "vits-flow-int8"),
                          (["in", "rs"], "vits-flow-float32")):
        with pytest.raises(BundleError, match="int8_convs"):
            vits_native_section(dict(manifest, native=dict(int8, int8_convs=convs, engine=engine)), "x")


def test_pass_refuses_a_flow_far_from_the_float_one(tiny, tmp_path, monkeypatch):  # noqa: F811
    """A calibration SNR under the floor (here: one no INT8 flow reaches) is a BundleError, nothing left behind."""
    import edgeflow.passes.tts_flow_int8 as tf

    _, root, _ = tiny
    monkeypatch.setattr(tf, "MIN_SNR_DB", 200.0)
    with pytest.raises(BundleError, match="not read as it computes"):
        tf.add_tts_flow_int8(root / "k", tmp_path / "q", tf.TtsFlowInt8Config(threads=1, time_seconds=0))
    assert not any(tmp_path.iterdir())

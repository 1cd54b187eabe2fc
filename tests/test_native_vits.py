"""The native engine's WaveNet-coupling flow (edgeflow/runtime/native/ef_wn.c): the kernel against a numpy
reference (every instruction set, thread count, conditioning, affine and mean-only), the VITS prior flow packed
from a decoder graph against onnxruntime and PyTorch, the ``tts_kernels`` pass, ``Voice`` with the native flow
against onnxruntime (whole and streamed, INT8-style decoder), thread safety and engine choice. Tiny random VITS
models only."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile as sf
import torch

import edgeflow.models.vits as vits
from edgeflow.core.errors import BundleError, DependencyError, InputError
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.passes.kernels import compare
from edgeflow.passes.tts_kernels import CUT_DECODER, TtsKernelsConfig, add_tts_kernels
from edgeflow.runtime import Voice, native
from edgeflow.runtime.native import wn
from edgeflow.runtime.native.vits_graph import extract, flow_output, pack_vits_flow
from edgeflow.runtime.voice_config import choose_voice_engine, vits_native_section
from tests.test_vits_model import randomized, tiny_config
from voice_helpers import snr_db, tiny_id_map

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))
TEXT = "The sky was clear. Could you speak slowly?"


@pytest.fixture
def isa():
    """Restores the best instruction set after a test that forces one."""
    yield
    native.set_isa(native.supported_isas()[-1])


def random_flow(c=6, h=5, k=3, dil=(1, 2, 4), n_cond=3, mean_only=1, flip=1, n_flows=2, seed=0):
    """Random native flow arrays (odd hidden size: padded GEMM tiles)."""
    rng = np.random.default_rng(seed)
    cfg = np.array([n_flows, len(dil), c, h, k, n_cond, mean_only, flip], np.int32)
    arrays = {"format": np.array([wn.FORMAT], np.int32), "config": cfg, "dilations": np.array(dil, np.int32)}
    for name, shape in wn.expected_shapes(cfg).items():
        arrays[name] = (rng.standard_normal(shape) * 0.3).astype(np.float32)
    return arrays


def reference_inverse(a, x, cond=None, quantize=None, quantize_gate=None):
    """numpy float64 inverse of the flow arrays ``a`` on x [C, T] (cond [M, T]): the format's definition.
    ``quantize(layer prefix)``: a function applied to that layer's input and conditioning, or None;
    ``quantize_gate(layer prefix)``: one applied to its gate output, or None (INT8 simulation,
    tests/test_native_wn_int8.py)."""
    n_flows, n_layers, c, h, k, _, mean_only, flip = (int(v) for v in a["config"])
    half, x = c // 2, x.astype(np.float64).copy()
    for f in reversed(range(n_flows)):
        if flip:
            x = x[::-1].copy()
        hid = a[f"flow.{f}.pre.weight"] @ x[:half] + a[f"flow.{f}.pre.bias"][:, None]
        stats = 0.0
        for lay in range(n_layers):
            p, d = f"flow.{f}.layer.{lay}.", int(a["dilations"][lay])
            pad, q = d * (k - 1) // 2, (quantize and quantize(p[:-1])) or (lambda v: v)
            hp = np.pad(q(hid), ((0, 0), (pad, pad)))
            acts = a[p + "in.bias"][:, None] + sum(a[p + "in.weight"][:, :, j] @ hp[:, j * d:j * d + x.shape[1]]
                                                   for j in range(k))
            if cond is not None:
                acts = acts + a[p + "cond.weight"] @ q(cond)
            g = np.tanh(acts[:h]) / (1 + np.exp(-acts[h:]))
            g = ((quantize_gate and quantize_gate(p[:-1])) or (lambda v: v))(g)
            rs = a[p + "rs.weight"] @ g + a[p + "rs.bias"][:, None]
            nres = h if lay < n_layers - 1 else 0
            hid = hid + rs[:nres] if nres else hid
            stats = stats + rs[nres:]
        m = stats[:half]
        x[half:] = x[half:] - m if mean_only else (x[half:] - m) * np.exp(-stats[half:])
    return x


@pytest.mark.parametrize("mean_only,flip,n_cond,k,dil", [(1, 1, 0, 3, (1, 2, 4)), (0, 0, 3, 3, (1, 2, 4)),
                                                          (1, 0, 2, 5, (1, 1, 2)), (1, 1, 0, 5, (1, 1, 2))])
def test_kernel_matches_numpy_every_isa_and_thread_count(mean_only, flip, n_cond, k, dil, isa):
    """Kernel 5, dilation 1 without conditioning: Winograd F(4,5) layers (the last case: two of three)."""
    arrays = random_flow(n_cond=n_cond, mean_only=mean_only, flip=flip, k=k, dil=dil)
    rng = np.random.default_rng(1)
    for name in native.supported_isas():
        native.set_isa(name)
        for threads in (1, 2):
            flow = wn.NativeFlow(arrays=arrays, threads=threads)
            assert flow.winograd_layers == (4 if (k, n_cond) == (5, 0) else 0)
            for t in (1, 5, 64, 70, 130):
                x = rng.standard_normal((2, 6, t)).astype(np.float32)
                cond = rng.standard_normal((2, n_cond, t)).astype(np.float32) if n_cond else None
                out = flow.run(x, cond)
                for b in range(2):
                    ref = reference_inverse(arrays, x[b], None if cond is None else cond[b])
                    got = compare(out[b], ref)
                    assert got["max_rel_err"] < 1e-5, (name, threads, t, got)
                assert not np.allclose(out, x, atol=1e-3)               # the flow did something


def test_winograd_transform_and_direct_path_agree():
    at, g, bt = wn.winograd_f45()
    d, w = np.random.default_rng(0).standard_normal(8), np.random.default_rng(1).standard_normal(5)
    assert np.allclose(at @ ((g @ w) * (bt @ d)), [w @ d[i:i + 5] for i in range(4)], atol=1e-12)
    arrays = random_flow(c=8, h=24, k=5, dil=(1, 1), n_cond=0, n_flows=3)
    x = np.random.default_rng(2).standard_normal((1, 8, 300)).astype(np.float32)
    fast, direct = wn.NativeFlow(arrays=arrays, threads=2), wn.NativeFlow(arrays=arrays, winograd=False)
    assert fast.winograd_layers == 6 and direct.winograd_layers == 0
    ref = reference_inverse(arrays, x[0])
    assert compare(fast.run(x)[0], ref)["max_rel_err"] < 1e-5 and compare(direct.run(x)[0], ref)["max_rel_err"] < 1e-5


def test_flow_file_checks(tmp_path):
    arrays = random_flow()
    wn.save(tmp_path / "f.npz", arrays)
    assert set(wn.load(tmp_path / "f.npz")) == set(arrays)
    bad = dict(arrays, **{"flow.0.pre.bias": np.zeros(4, np.float32)})
    with pytest.raises(BundleError, match="flow.0.pre.bias"):
        wn.check(bad)
    with pytest.raises(BundleError, match="format"):
        wn.check(dict(arrays, format=np.array([9], np.int32)))
    flow = wn.NativeFlow(arrays=arrays)
    with pytest.raises(InputError, match="cond"):
        flow.run(np.zeros((1, 6, 4), np.float32))
    with pytest.raises(InputError, match="does not fit"):
        flow.run(np.zeros((1, 5, 4), np.float32), np.zeros((1, 3, 4), np.float32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random VITS (2 WN layers, dilation 2: two different dilations), its bundle and the bundle with the
    native flow."""
    from edgeflow.export.vits import export_vits_bundle

    ids = tiny_id_map()
    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config(phoneme_id_map=ids, num_symbols=72, flow_dilation=2)), std=0.05)
    root = tmp_path_factory.mktemp("nvits")
    export_vits_bundle(model, root / "b")
    manifest = add_tts_kernels(root / "b", root / "k", TtsKernelsConfig(threads=1, time_seconds=0.5))
    return model, root, manifest


def test_packed_flow_matches_onnxruntime_and_pytorch(tiny):
    import onnx
    import onnxruntime as ort

    model, root, _ = tiny
    dec = onnx.load(str(root / "b" / "decoder.onnx"))
    arrays = pack_vits_flow(dec)
    assert arrays["dilations"].tolist() == [1, 2] and int(arrays["config"][0]) == 4
    z_p = next(n.output[0] for n in dec.graph.node if n.op_type == "Add" and "m_p" in n.input)
    sess = ort.InferenceSession(extract(dec, [z_p, "m_p"], [flow_output(dec)], 16).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    flow = wn.NativeFlow(arrays=arrays, threads=2)
    for t in (3, 64, 150):
        x = np.random.default_rng(t).standard_normal((1, 16, t)).astype(np.float32)
        got = flow.run(x)
        assert compare(got, sess.run(None, {z_p: x, "m_p": x})[0])["max_rel_err"] < 1e-5
        with torch.no_grad():
            ref = model.flow.inverse(torch.from_numpy(x), vits.flows.FlowCond(torch.ones(1, 1, t), None))[0]
        assert compare(got, ref.numpy())["max_rel_err"] < 1e-5


def test_pass_writes_hashed_files_and_a_native_section(tiny):
    _, root, manifest = tiny
    native_sec = manifest["native"]
    assert CUT_DECODER in manifest["files"] and wn.FLOW_FILE not in manifest["files"]
    assert native_sec["file"] == "decoder.onnx" and len(native_sec["flow_sha256"]) == 64   # packed at load
    assert native_sec["parity"]["passed"] and all(r["audio"]["snr_db"] >= 80 for r in native_sec["parity"]["lengths"])
    assert native_sec["timing"]["faster"] in ("native", "onnxruntime") and native_sec["timing"]["flow_native_s"] > 0
    assert vits_native_section(manifest, "x") is not None
    stale = dict(manifest, native=dict(native_sec, source_decoder_sha256="0" * 64))
    assert vits_native_section(stale, "x") is None                      # decoder.onnx replaced after the pass
    dropped = dict(manifest, files={k: v for k, v in manifest["files"].items() if k != CUT_DECODER})
    assert vits_native_section(dropped, "x") is None                    # a copy without the native files
    with pytest.raises(BundleError, match="native"):
        vits_native_section(dict(manifest, native=dict(native_sec, file="../x.npz")), "x")


def test_flow_packed_at_load_is_checked_and_old_flow_files_load(tiny, tmp_path):
    """The native flow is packed from decoder.onnx at load and checked against the pass's digest; a bundle of
    the earlier layout (the packed flow in vits_flow.npz) loads the same flow."""
    import json
    import shutil

    from edgeflow.core.bundle_format import write_manifest

    _, root, manifest = tiny
    ref = Voice.load(root / "k", engine="native").speak(TEXT, seed=2)[0]
    shutil.copytree(root / "k", tmp_path / "bad")
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    m["native"]["flow_sha256"] = "0" * 64
    write_manifest(tmp_path / "bad", {k: v for k, v in m.items() if k not in ("files", "format", "format_version")})
    with pytest.raises(BundleError, match="not the one the tts_kernels pass checked"):
        Voice.load(tmp_path / "bad", engine="native")
    shutil.copytree(root / "k", tmp_path / "old")
    wn.save(tmp_path / "old" / wn.FLOW_FILE, pack_vits_flow(root / "k" / "decoder.onnx"))
    m["native"].update(file=wn.FLOW_FILE)
    m["native"].pop("flow_sha256")
    write_manifest(tmp_path / "old", {k: v for k, v in m.items() if k not in ("files", "format", "format_version")})
    old = Voice.load(tmp_path / "old", engine="native")
    assert np.array_equal(old.speak(TEXT, seed=2)[0], ref)


def _spinning(session) -> bool:
    """Whether an onnxruntime session's idle pool threads spin (its option, default on)."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:                                    # not set: onnxruntime's default
        return True


def test_voice_native_matches_onnxruntime_whole_and_streamed(tiny):
    _, root, _ = tiny
    nat, ref = Voice.load(root / "k", engine="native", threads=2), Voice.load(root / "k", engine="onnxruntime")
    assert nat.engine == "native" and ref.engine == "onnxruntime" and nat.flow is not None
    assert _spinning(nat.decoder) is False and _spinning(ref.decoder)   # no spinning pool beside the native flow
    a, b = nat.speak(TEXT, seed=4)[0], ref.speak(TEXT, seed=4)[0]
    got = compare(a, b)
    assert a.shape == b.shape and got["max_rel_err"] < 1e-4 and got["snr_db"] > 80, got
    for chunk, first in ((16, 8), (40, 12)):
        sa = np.concatenate(list(nat.speak_stream(TEXT, seed=4, chunk_frames=chunk, first_chunk_frames=first)))
        sb = np.concatenate(list(ref.speak_stream(TEXT, seed=4, chunk_frames=chunk, first_chunk_frames=first)))
        assert compare(sa, sb)["max_rel_err"] < 1e-4 and snr_db(a, sa) >= 40


def test_voice_native_is_thread_safe(tiny):
    _, root, _ = tiny
    voice = Voice.load(root / "k", engine="native", threads=2)
    ids = [[1, 20 + i, 30, 40 - i, 2] for i in range(4)]
    serial = [voice.speak_ids(x, seed=i) for i, x in enumerate(ids)]
    results, errors, barrier = [None] * 4, [], threading.Barrier(4)

    def work(i):
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = voice.speak_ids(ids[i], seed=i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors and all(np.array_equal(s, r) for s, r in zip(serial, results))


def test_engine_errors_and_choice(tiny, monkeypatch):
    _, root, manifest = tiny
    with pytest.raises(InputError, match="engine must be one of") as err:
        Voice.load(root / "k", engine="fast")
    assert "\n" not in str(err.value)
    with pytest.raises(BundleError, match="no native flow kernels"):
        Voice.load(root / "b", engine="native")
    assert Voice.load(root / "b").engine == "onnxruntime"
    timing = dict(manifest["native"]["timing"])
    assert timing["conv_layout"] in ("1d", "2d")                     # the layout the pass timed onnxruntime in
    for faster, providers, layout, want in (("native", None, "1d", "native"), ("onnxruntime", None, "1d", "onnxruntime"),
                                            ("native", "auto", "1d", "onnxruntime"),
                                            ("native", None, "2d", "onnxruntime")):   # timed in another layout
        m = dict(manifest, native=dict(manifest["native"], timing=dict(timing, faster=faster, conv_layout="1d")))
        assert choose_voice_engine(m, "auto", providers, "x", layout) == want
    old = {k: v for k, v in timing.items() if k != "conv_layout"}    # bundles from before: timed in 1-D
    m = dict(manifest, native=dict(manifest["native"], timing=dict(old, faster="native")))
    assert choose_voice_engine(m, "auto", None, "x", "1d") == "native"
    assert choose_voice_engine(m, "auto", None, "x", "2d") == "onnxruntime"
    assert choose_voice_engine(manifest, "onnxruntime", None, "x") == "onnxruntime"
    m = dict(manifest, native=dict(manifest["native"], timing=dict(timing, faster="native")))
    assert choose_voice_engine(m, "auto", None, "x", timing["conv_layout"]) == "native"
    for first, other in (("native", "onnxruntime"), ("onnxruntime", "native")):   # a timing per layout
        m = dict(manifest, native=dict(manifest["native"], timing=dict(timing, faster=first, conv_layout="1d"),
                                       timings_other=[dict(timing, threads=1, faster=other, conv_layout="2d")]))
        assert [choose_voice_engine(m, "auto", None, "x", lay) for lay in ("1d", "2d")] == [first, other]
    monkeypatch.setattr(wn, "library", lambda: (_ for _ in ()).throw(DependencyError("no library")))
    assert choose_voice_engine(m, "auto", None, "x", "2d") == "onnxruntime"   # no library
    with pytest.raises(DependencyError):
        choose_voice_engine(m, "native", None, "x")


def test_pass_times_a_single_thread_too(tiny, tmp_path):
    from edgeflow.runtime.conv_layout import choose_layout

    _, root, _ = tiny
    sec = add_tts_kernels(root / "b", tmp_path / "k2", TtsKernelsConfig(threads=2, time_seconds=0.2))["native"]
    assert sec["timing"]["threads"] == 2 and sec["timing"]["conv_layout"] == choose_layout("auto", 2)
    if choose_layout("auto", 1) == sec["timing"]["conv_layout"]:
        assert "timings_other" not in sec                           # one layout: the target's timing says it
    else:
        (one,) = sec["timings_other"]
        assert one["threads"] == 1 and one["conv_layout"] == choose_layout("auto", 1)
        assert one["faster"] in ("native", "onnxruntime") and one["native_rtf"] > 0
        assert Voice.load(tmp_path / "k2", threads=1).engine == one["faster"]
    assert Voice.load(tmp_path / "k2", threads=2).engine == sec["timing"]["faster"]


def test_native_voice_is_torch_free(tiny):
    from export_helpers import run_torch_free

    run_torch_free("""
from edgeflow.runtime import Voice
v = Voice.load(sys.argv[1], threads=1, engine="native")
assert v.engine == "native" and v.speak_ids([1, 20, 30, 2], seed=1).size > 0
""", str(tiny[1] / "k"))


def test_quantized_style_decoder_keeps_its_qdq_pair(tiny, tmp_path):
    """A decoder whose flow output goes through QuantizeLinear / DequantizeLinear (as the INT8 recipes write it):
    the cut keeps the pair, parity is on the flow output (exact) and audio SNR."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.runtime.voice_config import read_vits_manifest
    import shutil

    _, root, _ = tiny
    shutil.copytree(root / "b", tmp_path / "q")
    dec = onnx.load(str(tmp_path / "q" / "decoder.onnx"))
    conv = next(n for n in dec.graph.node if n.name.startswith("/dec/conv_pre"))
    x = conv.input[0]
    dec.graph.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "q_scale"),
                                  numpy_helper.from_array(np.array(128, np.uint8), "q_zp")])
    at = list(dec.graph.node).index(conv)
    dec.graph.node.insert(at, helper.make_node("DequantizeLinear", ["xq", "q_scale", "q_zp"], ["xdq"], name="dq"))
    dec.graph.node.insert(at, helper.make_node("QuantizeLinear", [x, "q_scale", "q_zp"], ["xq"], name="q"))
    conv.input[0] = "xdq"
    onnx.save(dec, str(tmp_path / "q" / "decoder.onnx"))
    manifest = read_vits_manifest(root / "b")
    write_manifest(tmp_path / "q", {k: v for k, v in manifest.items() if k != "files"} | {"precision": "int8"})
    out = add_tts_kernels(tmp_path / "q", tmp_path / "qk", TtsKernelsConfig(threads=1, time_seconds=0))
    assert out["native"]["decoder_input"] == x and out["native"]["timing"] is None
    assert all(r["flow"]["max_rel_err"] < 1e-5 for r in out["native"]["parity"]["lengths"])
    cut = onnx.load(str(tmp_path / "qk" / CUT_DECODER))
    assert [i.name for i in cut.graph.input] == [x] and any(n.op_type == "QuantizeLinear" for n in cut.graph.node)
    a = Voice.load(tmp_path / "qk", engine="native").speak(TEXT, seed=1)[0]
    b = Voice.load(tmp_path / "qk").speak(TEXT, seed=1)[0]
    assert Voice.load(tmp_path / "qk").engine == "onnxruntime" and snr_db(b, a) >= 30


def test_pass_registered_and_leaves_other_bundles(tiny, tmp_path):
    _, root, _ = tiny
    art = Artifact(bundle_dir=root / "k")
    rec = apply_pass(art, make_config("tts_kernels", {"time_seconds": 0}), PassContext(tmp_path, progress=False))
    assert rec["details"]["native"] and art.bundle_dir != root / "k"
    assert Voice.load(art.bundle_dir, engine="native").engine == "native"


def test_say_engine_option(tiny, tmp_path, capsys):
    """``edgeflow say --engine native`` speaks through the native flow (the same audio as onnxruntime to 1e-4);
    ``--engine native`` on a bundle without native kernels and ``--engine`` with a model.pt exit 2, one line."""
    from edgeflow.cli.main import main

    _, root, _ = tiny
    for engine in ("native", "onnxruntime"):
        assert main(["say", str(root / "k"), "--text", TEXT, "--engine", engine, "-o", str(tmp_path / f"{engine}.wav")]) == 0
    assert "native prior flow" in capsys.readouterr().out
    a, _ = sf.read(tmp_path / "native.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "onnxruntime.wav", dtype="float32")
    assert a.shape == b.shape and np.max(np.abs(a - b)) <= 2 / 32768
    assert main(["say", str(root / "b"), "--text", TEXT, "--engine", "native", "-o", str(tmp_path / "x.wav")]) == 2
    assert not (tmp_path / "x.wav").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "native" in err[0]


def test_decoder_sessions_run_without_the_nhwc_transformer(tiny, monkeypatch):
    """A bundle voice opens its decoder graph (whole or cut after the native flow) with onnxruntime's NHWC transformer
    off and its encoder graph with it on; the audio is the same either way."""
    import onnxruntime as ort

    from edgeflow.runtime import Voice
    from edgeflow.runtime.voice_io import open_session

    _, root, _ = tiny
    seen = []
    real = ort.InferenceSession

    def spy(source, *args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    for engine in ("native", "onnxruntime"):
        seen.clear()
        voice = Voice.load(root / "k", engine=engine)
        assert seen == [None, ["NhwcTransformer"]], engine                      # encoder, decoder
    monkeypatch.setattr(ort, "InferenceSession", real)
    a = voice.speak(TEXT, seed=3)[0]
    voice.decoder = open_session(root / "k" / voice.manifest["graphs"]["decoder"], None, None, "decoder graph")
    assert np.array_equal(a, voice.speak(TEXT, seed=3)[0])

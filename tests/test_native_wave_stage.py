"""The native INT8 waveform-rate stage (edgeflow/runtime/native/ef_hq8.c): the kernel against a numpy simulation
of its chunks, tiles and block-scaled quantization (every instruction set, 1 and 2 threads, resblock types "1" and
"2", one and two activation planes, lengths across chunks), its errors, the stage read from a decoder graph, and
the ``tts_wave`` pass on a tiny random VITS bundle (hashed files, the native engine, the gate's engine)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import BundleError, ConfigError, InputError
from edgeflow.passes.kernels import compare
from edgeflow.runtime import native
from edgeflow.runtime.native.wave_stage import WaveStage, chunk_len, pack_stage, tile_samples
from tests.test_native_vits import TEXT, isa, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))
NB = 64


def random_stage(C=6, kind="2", kernels=(3, 5), dil=((1, 3), (2, 5)), planes=1, inner=5, seed=0):
    """(arrays, float convs): a random stage of resblock type ``kind`` (type 1: inner widths ``inner``)."""
    rng = np.random.default_rng(seed)
    convs = []
    for b, (k, ds) in enumerate(zip(kernels, dil)):
        for d in ds:
            shapes = [(C, C, 0)] if kind == "2" else [(inner, C, 1), (C, inner, 2)]
            for cout, cin, mode in shapes:
                convs.append({"block": b, "weight": rng.standard_normal((cout, cin, k)).astype(np.float32) * 0.3,
                              "bias": rng.standard_normal(cout).astype(np.float32) * 0.05, "dilation": d,
                              "mode": mode, "planes": planes})
    post = rng.standard_normal((1, C, 7)).astype(np.float32) * 0.2
    return pack_stage(convs, post, 0.01, 0.1, 0.01), convs


def float_weights(a, convs):
    """``a`` with each conv's float weights in place of its int8 ones (scale 1): the float stage."""
    out = dict(a)
    for i, c in enumerate(convs):
        out[f"conv.{i}.q"], out[f"conv.{i}.scale"] = c["weight"], np.ones(c["weight"].shape[0], np.float32)
    return out


def _qparams(lo, hi):
    lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    s = np.float32((hi - lo) / np.float32(255.0))
    s = s if s > 0 else np.float32(1.0)
    return s, int(np.clip(int(-lo / s + np.float32(0.5)), 0, 255))


def _quant(v, s, zp):
    t = np.clip(v.astype(np.float32) * (np.float32(1.0) / s) + np.float32(zp), 0, 255)
    return np.floor(t + np.float32(0.5))


def _conv(a, i, src, L, va, vb, slope, tile, dequant=True):
    """One conv of the stage on a chunk's local columns, as the kernel computes it (float64 sums of the
    dequantized values; ``dequant`` False: float inputs)."""
    spec = a["spec"][i]
    cin, cout, k, d, planes = int(spec[1]), int(spec[2]), int(spec[3]), int(spec[4]), int(spec[6])
    w = a[f"conv.{i}.q"].astype(np.float64) * a[f"conv.{i}.scale"].astype(np.float64)[:, None, None]
    R, out = (k - 1) // 2 * d, np.zeros((cout, L + NB))
    mm = {}
    for b in range(va // NB, (vb - 1) // NB + 1):
        part = src[:, max(b * NB, va):min(b * NB + NB, vb)]
        mm[b] = (min(float(part.min()), 0.0), max(float(part.max()), 0.0))
    for t0 in range(0, L, tile):
        tw = (min(L - t0, tile) + NB - 1) // NB * NB
        a0, W = t0 - R, tw + 2 * R
        lo_c, hi_c = max(a0, va), min(a0 + W, vb)
        win = np.zeros((cin, W), np.float32)
        if hi_c > lo_c:
            v = src[:, lo_c:hi_c].astype(np.float32)
            win[:, lo_c - a0:hi_c - a0] = np.where(v < 0, v * np.float32(slope), v)
        if dequant:
            blocks = [mm[b] for b in range(lo_c // NB, (hi_c - 1) // NB + 1)] if hi_c > lo_c else [(0.0, 0.0)]
            s, zp = _qparams(np.float32(min(p[0] for p in blocks)) * np.float32(slope), max(p[1] for p in blocks))
            q = _quant(win, s, zp)
            deq = (q - zp) * np.float64(s)
            if planes == 2:
                s2 = np.float32(s / np.float32(254.0))
                e = win - (q.astype(np.float32) - np.float32(zp)) * s
                deq = deq + (_quant(e, s2, 128) - 128) * np.float64(s2)
        else:
            deq = win.astype(np.float64)
        for j in range(k):
            out[:, t0:t0 + tw] += w[:, :, j] @ deq[:, j * d:j * d + tw]
        out[:, t0:t0 + tw] += a[f"conv.{i}.bias"][:, None]
    return out[:, :L]


def simulate(a, x, tile, dequant=True):
    """The stage's audio [T] (without conv_post: the resblocks' mean [C, T]) as the kernel computes it, chunk by
    chunk (``dequant`` False: float activations)."""
    spec, (slope, post_slope) = a["spec"], a["slopes"].astype(np.float64)
    C, T = x.shape
    blocks = sorted(set(int(b) for b in spec[:, 0]))
    H = max(sum((int(r[3]) - 1) // 2 * int(r[4]) for r in spec if r[0] == b) for b in blocks)
    pw = a["post.weight"].astype(np.float64)
    kp = pw.shape[1]
    H += (kp - 1) // 2 if kp else 0
    chunk = chunk_len(T, H)
    audio = np.zeros(T) if kp else np.zeros((C, T))
    for c0 in range(0, T, chunk):
        c1 = min(c0 + chunk, T)
        g0, L = c0 - H, c1 - c0 + 2 * H
        va, vb = max(0, -g0), min(L, T - g0)
        xin = np.zeros((C, L))
        xin[:, va:vb] = x[:, g0 + va:g0 + vb]
        acc = None
        for b in blocks:
            cur, tb = xin, None
            for i in np.nonzero(spec[:, 0] == b)[0]:
                mode = int(spec[i, 5])
                y = _conv(a, i, tb if mode == 2 else cur, L, va, vb, np.float32(slope), tile, dequant)
                if mode == 1:
                    tb = y
                else:
                    cur = cur + y
            acc = cur if acc is None else acc + cur
        v = acc / len(blocks)
        if not kp:                                    # no conv_post: the mean itself
            audio[:, c0:c1] = v[:, H:H + c1 - c0]
            continue
        v = np.where(v < 0, v * post_slope, v)
        v[:, :va], v[:, vb:] = 0, 0
        P = (kp - 1) // 2
        y = sum(pw[:, j] @ v[:, H - P + j:H - P + j + c1 - c0] for j in range(kp)) + float(a["post.bias"][0])
        audio[c0:c1] = np.tanh(y)
    return audio


@pytest.mark.parametrize("kind,planes,T,threads", [("2", 1, 50, 1), ("2", 2, 2500, 2), ("1", 1, 1500, 2),
                                                   ("1", 2, 700, 1), ("2", 1, 4100, 2)])
def test_kernel_matches_its_simulation(kind, planes, T, threads, isa):  # noqa: F811
    a, convs = random_stage(kind=kind, planes=planes, seed=T)
    x = (np.random.default_rng(T).standard_normal((6, T)) * np.linspace(0.05, 2.0, T)).astype(np.float32)
    sim, flt = simulate(a, x, tile_samples()), simulate(float_weights(a, convs), x, tile_samples(), dequant=False)
    for name in native.supported_isas():
        native.set_isa(name)
        got = WaveStage(a, threads=threads).run(x)
        assert got.shape == (T,) and np.all(np.abs(got) <= 1)
        s = compare(got, sim)["snr_db"]
        assert s >= 60, (name, s)
        f = compare(got, flt)["snr_db"]
        assert 25 <= f < 60, (name, f)                                   # INT8 really ran, and is close


def test_two_planes_are_closer_to_float():
    """Against the same INT8 weights with float activations: the second plane takes most of the rounding error."""
    a1, _ = random_stage(planes=1)
    a2, _ = random_stage(planes=2)
    x = np.random.default_rng(1).standard_normal((6, 3000)).astype(np.float32)
    flt = simulate(a1, x, tile_samples(), dequant=False)
    one, two = compare(WaveStage(a1).run(x), flt)["snr_db"], compare(WaveStage(a2).run(x), flt)["snr_db"]
    assert two > one + 6, (one, two)


def test_block_scales_follow_the_level():
    """A quiet stretch after a loud one keeps its own SNR (a per-tensor scale would bury it in the loud part's
    steps)."""
    a, _ = random_stage(planes=1)
    x = np.random.default_rng(2).standard_normal((6, 4000)).astype(np.float32)
    x[:, 2000:] *= 1e-3
    got, flt = WaveStage(a).run(x), simulate(a, x, tile_samples(), dequant=False)
    assert compare(got[2300:], flt[2300:])["snr_db"] >= 25


def test_errors():
    a, _ = random_stage()
    with pytest.raises(InputError, match="expected"):
        WaveStage(a).run(np.zeros((5, 10), np.float32))
    with pytest.raises(BundleError, match="missing"):
        WaveStage({k: v for k, v in a.items() if k != "conv.1.q"})
    bad = dict(a, spec=a["spec"].copy())
    bad["spec"][0, 3] = 4                                                   # an even kernel
    with pytest.raises(BundleError, match="spec"):
        WaveStage(bad)
    bad = dict(a, spec=a["spec"].copy())
    bad["spec"][0, 6] = 3                                                   # three planes
    with pytest.raises(BundleError, match="spec"):
        WaveStage(bad)
    with pytest.raises(BundleError, match="do not match"):
        WaveStage(dict(a, **{"conv.0.q": a["conv.0.q"][:, :, :1]}))


def test_graph_stage_matches_the_decoder(tiny, tmp_path):  # noqa: F811
    """The stage read from a decoder graph, run in float by the simulation, is the cut graph's audio; the head
    graph ends at the last upsampler's output."""
    import onnxruntime as ort

    from edgeflow.passes.tts_kernels import CUT_DECODER
    from edgeflow.runtime.native.vits_stage import cut_before_stage, pack_graph_stage, stage_convs, stage_input

    _, root, _ = tiny
    cut = root / "k" / CUT_DECODER
    a = pack_graph_stage(cut, [0, 2])
    assert a["spec"][:, 6].tolist().count(2) == 2 and set(a["spec"][:, 5].tolist()) == {0}
    name = cut_before_stage(cut, tmp_path / "head.onnx", int(a["spec"][0, 1]))
    assert name == stage_input(cut)
    full = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    z = np.random.default_rng(0).standard_normal((1, 16, 30)).astype(np.float32)
    feed = {full.get_inputs()[0].name: z}
    x = head.run(None, feed)[0][0]
    ref = full.run(None, feed)[0].reshape(-1)
    flt = float_weights(a, stage_convs(cut)[0])
    assert compare(simulate(flt, x, tile_samples(), dequant=False), ref)["max_rel_err"] < 1e-4
    assert compare(WaveStage(a).run(x), ref)["snr_db"] >= 15


def test_pass_voice_and_manifest(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes.tts_kernels import CUT_DECODER
    from edgeflow.passes.tts_wave import HEAD_DECODER, WAVE_FILE, TtsWaveConfig, add_tts_wave
    from edgeflow.runtime import Voice
    from edgeflow.runtime.voice_config import vits_native_section

    _, root, _ = tiny
    m = add_tts_wave(root / "k", tmp_path / "w", TtsWaveConfig(threads=1, time_seconds=0.3))
    sec = m["native"]
    assert {HEAD_DECODER, WAVE_FILE} <= set(m["files"]) and CUT_DECODER not in m["files"]
    assert sec["decoder"] == HEAD_DECODER and sec["wave_stage"]["two_planes"] == list(range(6))
    assert sec["timing"]["native_rtf"] > 0 and sec["wave_stage"]["tile_samples"] == tile_samples()
    nat, ref = Voice.load(tmp_path / "w", engine="native"), Voice.load(tmp_path / "w", engine="onnxruntime")
    assert nat.wave is not None and ref.wave is None
    a, b = nat.speak(TEXT, seed=3)[0], ref.speak(TEXT, seed=3)[0]
    assert a.shape == b.shape and 15 <= compare(a, b)["snr_db"] < 80         # INT8 (a random 4-channel stage)
    streamed = np.concatenate(list(nat.speak_stream(TEXT, seed=3, chunk_frames=16, first_chunk_frames=8)))
    assert compare(streamed, a)["snr_db"] >= 15
    dropped = dict(m, files={k: v for k, v in m["files"].items() if k != WAVE_FILE})
    assert vits_native_section(dropped, "x") is None                       # a copy without the stage weights
    with pytest.raises(BundleError, match="wave_stage"):
        vits_native_section(dict(m, native=dict(sec, wave_stage=dict(sec["wave_stage"], file="../w.npz"))), "x")
    searched = add_tts_wave(root / "k", tmp_path / "s", TtsWaveConfig(threads=1, time_seconds=0,
                                                                       two_planes="search", min_snr_db=0))
    assert searched["native"]["wave_stage"]["two_planes"] == [] and searched["native"]["timing"] is None


def test_pass_leaves_bundles_without_a_native_flow(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config

    _, root, _ = tiny
    art = Artifact(bundle_dir=root / "b")
    rec = apply_pass(art, make_config("tts_wave", {}), PassContext(tmp_path, progress=False))
    assert rec["details"]["native"] is False and "tts_kernels" in rec["details"]["reason"]
    assert art.bundle_dir == root / "b"
    with pytest.raises(ConfigError, match="two_planes"):
        make_config("tts_wave", {"two_planes": "some"})


def test_voice_with_the_stage_is_thread_safe(tiny, tmp_path):  # noqa: F811
    """Two threads speaking through one voice (its stage allocates per run) get what one thread gets."""
    from edgeflow.passes.tts_wave import TtsWaveConfig, add_tts_wave
    from edgeflow.runtime import Voice

    _, root, _ = tiny
    add_tts_wave(root / "k", tmp_path / "w", TtsWaveConfig(threads=1, time_seconds=0, two_planes=[1]))
    assert_thread_safe(Voice.load(tmp_path / "w", engine="native", threads=2))


def assert_thread_safe(voice):
    """Two threads speaking through ``voice``, three times each, get what one thread gets."""
    import threading

    want = {s: voice.speak(TEXT, seed=s)[0] for s in (1, 2)}
    got, errors = {}, []

    def run(s):
        try:
            for _ in range(3):
                got[s] = voice.speak(TEXT, seed=s)[0]
        except Exception as exc:                                        # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and all(np.array_equal(got[s], want[s]) for s in want)


def test_graph_stage_refuses_what_it_cannot_run(tiny, tmp_path):  # noqa: F811
    """A graph without HiFi-GAN resblocks, a quantized stage conv and a conv number beyond the stage: ConfigError
    naming it (the pass then records why and leaves the bundle)."""
    import onnx
    from onnx import helper, numpy_helper

    from edgeflow.core.errors import ConfigError
    from edgeflow.passes.tts_kernels import CUT_DECODER
    from edgeflow.runtime.native.vits_stage import pack_graph_stage, stage_convs

    _, root, _ = tiny
    with pytest.raises(ConfigError, match="resblocks"):
        stage_convs(root / "k" / "model.onnx")
    with pytest.raises(ConfigError, match="not in the stage"):
        pack_graph_stage(root / "k" / CUT_DECODER, [6])
    model = onnx.load(str(root / "k" / CUT_DECODER))
    conv = next(n for n in model.graph.node if n.name.endswith("/convs.0/Conv") and "resblocks.8" in n.name)
    w = next(t for t in model.graph.initializer if t.name == conv.input[1])
    q = numpy_helper.to_array(w)
    model.graph.initializer.extend([numpy_helper.from_array(np.zeros(q.shape, np.int8), "wq"),
                                    numpy_helper.from_array(np.array(0.01, np.float32), "ws")])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws"], ["wdq"], name="dq_w"))
    conv.input[1] = "wdq"
    onnx.save(model, str(tmp_path / "q.onnx"))
    with pytest.raises(ConfigError, match="not a float initializer"):
        stage_convs(tmp_path / "q.onnx")


def test_pass_refuses_a_stage_far_from_the_float_one(tiny, tmp_path, monkeypatch):  # noqa: F811
    """A calibration SNR under the floor (here: a floor no INT8 stage reaches) is a BundleError and leaves no
    output directory behind."""
    import edgeflow.passes.tts_wave as tw

    _, root, _ = tiny
    monkeypatch.setattr(tw, "MIN_SNR_DB", 200.0)
    with pytest.raises(BundleError, match="not read as it computes"):
        tw.add_tts_wave(root / "k", tmp_path / "w", tw.TtsWaveConfig(threads=1, time_seconds=0))
    assert not (tmp_path / "w").exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("cin,C,K,u", [(12, 8, 8, 4), (6, 4, 16, 8), (5, 6, 4, 2)])
def test_merged_upsampler_is_the_conv_transpose(cin, C, K, u):
    """The merged phase form (a centred conv of u C rows, phases interleaved) equals ConvTranspose1d."""
    import torch

    from edgeflow.runtime.native.wave_stage import merge_upsampler

    rng = np.random.default_rng(K)
    w, x = rng.standard_normal((cin, C, K)).astype(np.float32), rng.standard_normal((1, cin, 40)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), stride=u,
                                               padding=(K - u) // 2).numpy()
    m = merge_upsampler(w, u, (K - u) // 2)
    y = torch.nn.functional.conv1d(torch.from_numpy(x), torch.from_numpy(m), padding=(m.shape[2] - 1) // 2).numpy()
    y = y.reshape(1, u, C, -1).transpose(0, 2, 3, 1).reshape(1, C, -1)
    assert y.shape == ref.shape and np.abs(y - ref).max() < 1e-4
    with pytest.raises(ValueError, match="input length"):
        merge_upsampler(w, u, (K - u) // 2 + 1)


@pytest.mark.parametrize("T", [7, 300, 1500])
def test_kernel_with_the_upsampler(T):
    """The stage with the upsampler ahead of it against the INT8 stage on the float upsampler's output: close (the
    upsampler's INT8), equal at 1 and 2 threads, across chunks; broken arrays are refused."""
    import torch

    from edgeflow.runtime.native.wave_stage import _pack_up

    a = random_stage(C=8)[0]
    rng = np.random.default_rng(T)
    w, b = (rng.standard_normal((12, 8, 8)) * 0.3).astype(np.float32), (rng.standard_normal(8) * 0.1).astype(np.float32)
    x = (rng.standard_normal((12, T)) * np.linspace(0.05, 2, T)).astype(np.float32)
    up = torch.nn.functional.conv_transpose1d(torch.from_numpy(np.where(x < 0, 0.1 * x, x)[None]), torch.from_numpy(w),
                                              torch.from_numpy(b), stride=4, padding=2).numpy()[0]
    ref = WaveStage(a, threads=1).run(up)
    arrays = dict(a, **_pack_up({"weight": w, "bias": b, "stride": 4, "padding": 2, "slope": 0.1, "planes": 2}, 8))
    one, two = WaveStage(arrays, threads=1), WaveStage(arrays, threads=2)
    assert one.stride == 4 and one.input_channels == 12
    got = one.run(x)
    assert got.shape == (4 * T,) and np.array_equal(got, two.run(x)) and 25 <= compare(got, ref)["snr_db"] < 200
    with pytest.raises(InputError, match="expected \\[12, T\\]"):
        one.run(up)
    with pytest.raises(BundleError, match="upsampler"):
        WaveStage(dict(arrays, **{"up.q": arrays["up.q"][:, :, :1]}))


def test_pass_with_the_upsampler(tiny, tmp_path):  # noqa: F811
    """tts_wave with ``upsampler``: the head ends at the last upsampler's LeakyRelu input, the voice speaks close to
    onnxruntime's, and the upsampler read from the phase form equals the one read from the ConvTranspose."""
    import onnx

    from edgeflow.passes.tts_kernels import CUT_DECODER
    from edgeflow.passes.tts_wave import HEAD_DECODER, TtsWaveConfig, add_tts_wave
    from edgeflow.runtime import Voice
    from edgeflow.runtime.native.vits_stage import upsampler

    _, root, _ = tiny
    m = add_tts_wave(root / "k", tmp_path / "w", TtsWaveConfig(threads=1, time_seconds=0, upsampler=True))
    wave = m["native"]["wave_stage"]
    assert wave["upsampler"]["conv"] == wave["convs"] - 1 and wave["two_planes"] == list(range(wave["convs"]))
    head, cut = (onnx.load(str(p)) for p in (tmp_path / "w" / HEAD_DECODER, root / "k" / CUT_DECODER))
    last = max(int(n.name.split("/")[2].split(".")[1]) for n in cut.graph.node if n.name.startswith("/dec/ups."))
    assert head.graph.output[0].name == wave["input"]
    assert not any(n.name.startswith(f"/dec/ups.{last}/") for n in head.graph.node)
    nat, ref = Voice.load(tmp_path / "w", engine="native"), Voice.load(tmp_path / "w", engine="onnxruntime")
    assert nat.wave.stride == wave["upsampler"]["stride"]
    a, b = nat.speak(TEXT, seed=3)[0], ref.speak(TEXT, seed=3)[0]
    assert a.shape == b.shape and 15 <= compare(a, b)["snr_db"] < 80
    up = upsampler(root / "k" / CUT_DECODER, 4)
    assert up["weight"].shape[2] - 2 * up["padding"] == up["stride"]


def test_upsampler_read_from_either_form():
    """The last upsampler read from a ConvTranspose node and from edgeflow's phase form of it: the same weights."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from edgeflow.models.polyphase import PolyphaseConvTranspose1d
    from edgeflow.runtime.native.vits_stage import upsampler

    torch.manual_seed(0)
    ct = torch.nn.ConvTranspose1d(6, 4, 8, stride=4, padding=2)
    pp = PolyphaseConvTranspose1d(ct)

    def graph(op, name, w, b, **attrs):
        nodes = [helper.make_node("LeakyRelu", ["x"], ["r"], name="/dec/LeakyRelu", alpha=0.1),
                 helper.make_node(op, ["r", "w", "b"], ["y"], name=name, **attrs)]
        inits = [numpy_helper.from_array(w.detach().numpy(), "w"), numpy_helper.from_array(b.detach().numpy(), "b")]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, "T"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))

    a = upsampler(graph("ConvTranspose", "/dec/ups.0/ConvTranspose", ct.weight, ct.bias, strides=[4], pads=[2, 2]), 4)
    b = upsampler(graph("Conv", "/dec/ups.0/conv/Conv", pp.conv.weight, pp.conv.bias, pads=[1, 1]), 4)
    assert (a["stride"], a["padding"], a["slope"], a["input"]) == (b["stride"], b["padding"], b["slope"], b["input"])
    assert np.allclose(a["weight"], b["weight"]) and np.allclose(a["bias"], b["bias"])
    assert np.allclose(a["weight"], ct.weight.detach().numpy())


def test_pass_leaves_a_bundle_whose_upsampler_it_cannot_run(tiny, tmp_path):  # noqa: F811
    """``upsampler: true`` on a cut decoder whose last upsampler does not read its LeakyRelu: the pass records why
    and leaves the bundle (no ConfigError out of the build); without the option the stage still applies."""
    import json
    import shutil

    import onnx
    from onnx import helper

    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.passes import Artifact, PassContext, apply_pass
    from edgeflow.passes.base import make_config
    from edgeflow.passes.tts_wave import not_applicable
    from edgeflow.runtime.native.vits_stage import _upsampler_node

    _, root, _ = tiny
    shutil.copytree(root / "k", tmp_path / "b")
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    cut = tmp_path / "b" / m["native"]["decoder"]
    model = onnx.load(str(cut))
    last = _upsampler_node(model.graph)
    model.graph.node.append(helper.make_node("Identity", [last.input[0]], ["up_in_copy"], name="copy"))
    last.input[0] = "up_in_copy"
    onnx.save(model, str(cut))
    write_manifest(tmp_path / "b", {k: v for k, v in m.items() if k not in ("files", "format", "format_version")})
    art = Artifact(bundle_dir=tmp_path / "b")
    rec = apply_pass(art, make_config("tts_wave", {"upsampler": True}), PassContext(tmp_path / "w", progress=False))
    assert rec["details"]["native"] is False and "LeakyRelu" in rec["details"]["reason"]
    assert art.bundle_dir == tmp_path / "b"
    assert not_applicable(art) is None

"""A VITS decoder's earlier upsampling stages in the native engine (the ``tts_head`` pass): the stage kernel without
conv_post against its numpy simulation, the chunking rule, stages chained, the stages read from a float and from an
INT8 (QDQ) decoder graph, and the pass on a tiny random VITS bundle."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import BundleError, ConfigError
from edgeflow.passes.kernels import compare
from edgeflow.runtime import native
from edgeflow.runtime.native.wave_chain import WaveChain, join_arrays, load_wave, split_arrays
from edgeflow.runtime.native.wave_stage import WaveStage, chunk_len, pack_stage, tile_samples
from tests.test_native_vits import TEXT, isa, tiny  # noqa: F401  (fixtures)
from tests.test_native_wave_stage import assert_thread_safe, random_stage, simulate

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))


def headless(C=6, kind="2", seed=0):
    """A random stage without conv_post (and its float convs)."""
    a, convs = random_stage(C=C, kind=kind, seed=seed)
    return pack_stage(convs, None, 0.0, 0.1, 0.0), convs


@pytest.mark.parametrize("kind,T,threads", [("2", 40, 1), ("2", 3100, 2), ("1", 900, 2), ("1", 1700, 1)])
def test_stage_without_post_matches_its_simulation(kind, T, threads, isa):  # noqa: F811
    """Without conv_post the kernel gives the resblocks' mean [C, T] as its simulation computes it, on every
    instruction set, equal at 1 and 2 threads."""
    a, _ = headless(kind=kind, seed=T)
    assert a["post.weight"].shape == (6, 0)
    x = (np.random.default_rng(T).standard_normal((6, T)) * np.linspace(0.05, 2.0, T)).astype(np.float32)
    sim = simulate(a, x, tile_samples())
    assert sim.shape == (6, T)
    for name in native.supported_isas():
        native.set_isa(name)
        one = WaveStage(a, threads=1)
        assert not one.has_post
        got = one.run(x)
        assert got.shape == (6, T) and compare(got, sim)["snr_db"] >= 60, name
        assert np.array_equal(got, WaveStage(a, threads=threads).run(x))


def test_chunks_are_even_and_bounded():
    """Chunks: equal, at most the kernel's window less the halo, even in number from 512 columns on."""
    for T, H in [(100, 10), (511, 10), (512, 10), (1400, 45), (1500, 45), (14720, 45), (5000, 600)]:
        c = chunk_len(T, H)
        n = -(-T // c)
        assert c <= max(1536, 4 * H) - 2 * H and (n == 1 if T < 512 else n % 2 == 0), (T, H, c)


def _up(rng, cin, C, u=4):
    return {"weight": (rng.standard_normal((cin, C, 2 * u)) * 0.3).astype(np.float32), "bias": None, "stride": u,
            "padding": u // 2, "slope": 0.1}


def test_chain_runs_its_stages_in_order():
    """A chain of a stage without conv_post and one with it equals the two run one after the other; a stage with
    conv_post or of other channels cannot feed the next; split / join of the arrays are inverses."""
    rng = np.random.default_rng(1)
    first = pack_stage(random_stage(C=6, seed=1)[1], None, 0.0, 0.1, 0.0, up=_up(rng, 5, 6))
    last = random_stage(C=6, seed=2)[0]
    a, b = WaveStage(first, threads=2), WaveStage(last, threads=2)
    chain = WaveChain([a, b])
    x = rng.standard_normal((5, 300)).astype(np.float32)
    assert chain.stride == 4 and chain.input_channels == 5 and chain.has_post
    assert np.array_equal(chain.run(x), b.run(a.run(x)))
    with pytest.raises(BundleError, match="cannot feed"):
        WaveChain([b, b])
    with pytest.raises(BundleError, match="cannot feed"):
        WaveChain([WaveStage(pack_stage(random_stage(C=5)[1], None, 0.0, 0.1, 0.0)), b])
    joined = join_arrays([first], last)
    head, rest = split_arrays(joined)
    assert sorted(rest) == sorted(last) and all(np.array_equal(head[0][k], first[k]) for k in first)
    assert np.array_equal(load_wave(joined, threads=1).run(x), chain.run(x))
    assert isinstance(load_wave(last), WaveStage)
    with pytest.raises(BundleError, match="no conv_post"):
        load_wave(first)
    with pytest.raises(BundleError, match="numbered"):
        split_arrays({f"head.1.{k}": v for k, v in first.items()})


def _head_after_wave(tiny, tmp_path):  # noqa: F811
    from edgeflow.passes.tts_wave import TtsWaveConfig, add_tts_wave

    _, root, _ = tiny
    add_tts_wave(root / "k", tmp_path / "w", TtsWaveConfig(threads=1, time_seconds=0, upsampler=True))
    return tmp_path / "w"


def test_stages_read_from_an_int8_graph(tiny, tmp_path):  # noqa: F811
    """An earlier stage read from the QDQ form of the head graph (onnxruntime's quantize_static, per-channel int8
    weights) has the float graph's weights to within half a quantization step, the same slopes and shapes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeflow.passes.tts_wave import HEAD_DECODER
    from edgeflow.runtime.native.vits_stage import n_upsamplers, stage_convs

    head = _head_after_wave(tiny, tmp_path) / HEAD_DECODER
    inp = onnx.load(str(head)).graph.input[0]
    ch = inp.type.tensor_type.shape.dim[1].dim_value

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{inp.name: np.random.default_rng(i).standard_normal((1, ch, 40)).astype(np.float32)}
                               for i in range(4)])

        def get_next(self):
            return next(self.items, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(head), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    assert n_upsamplers(q) == n_upsamplers(head) == 2
    for k in range(2):
        (fc, fe), (qc, qe) = stage_convs(head, stage=k), stage_convs(q, stage=k)
        assert fe["post_w"] is None and qe["post_w"] is None and qe["slope"] == fe["slope"]
        for a, b in zip(fc + [fe["up"]], qc + [qe["up"]]):
            step = np.abs(a["weight"]).reshape(a["weight"].shape[0], -1).max(1) / 127
            if a is fe["up"]:
                step = np.abs(a["weight"]).max() / 127
            assert b["weight"].shape == a["weight"].shape
            assert np.all(np.abs(b["weight"] - a["weight"]) <= 0.51 * np.reshape(step, (-1,) + (1,) * 2) + 1e-7)
    with pytest.raises(ConfigError, match="no upsampling stage 2"):
        stage_convs(head, stage=2)


def test_voice_with_the_chain_is_thread_safe(tiny, tmp_path):  # noqa: F811
    """Two threads speaking through one voice with the chained stages get what one thread gets."""
    from edgeflow.passes.tts_head import TtsHeadConfig, add_tts_head
    from edgeflow.runtime import Voice

    add_tts_head(_head_after_wave(tiny, tmp_path), tmp_path / "h", TtsHeadConfig(threads=1, time_seconds=0))
    assert_thread_safe(Voice.load(tmp_path / "h", engine="native", threads=2))


def test_pass_voice_and_manifest(tiny, tmp_path, capsys):  # noqa: F811
    """tts_head: onnxruntime keeps conv_pre only, the stages are in the wave file, the voice runs the chain and
    speaks close to onnxruntime's engine, ``edgeflow say`` names the stages, and the pass refuses a bundle it
    already ran on or one without tts_wave's upsampler."""
    import onnx

    from edgeflow.cli.main import main
    from edgeflow.passes.tts_head import TtsHeadConfig, add_tts_head
    from edgeflow.passes.tts_wave import HEAD_DECODER
    from edgeflow.runtime import Voice

    wave_bundle = _head_after_wave(tiny, tmp_path)
    m = add_tts_head(wave_bundle, tmp_path / "h", TtsHeadConfig(threads=1, time_seconds=0))
    head = m["native"]["wave_stage"]["head"]
    assert [s["upsampler"]["stride"] for s in head["stages"]] == [8, 8] and head["calibration"]["snr_db"] >= 30
    g = onnx.load(str(tmp_path / "h" / HEAD_DECODER)).graph
    assert not any(n.name.startswith("/dec/ups.") or "resblocks" in n.name for n in g.node)
    assert g.output[0].name == m["native"]["wave_stage"]["input"]
    nat, ref = Voice.load(tmp_path / "h", engine="native"), Voice.load(tmp_path / "h", engine="onnxruntime")
    assert isinstance(nat.wave, WaveChain) and nat.wave.stride == 256
    a, b = nat.speak(TEXT, seed=3)[0], ref.speak(TEXT, seed=3)[0]
    streamed = np.concatenate(list(nat.speak_stream(TEXT, seed=3, chunk_frames=16, first_chunk_frames=8)))
    assert a.shape == b.shape and 15 <= compare(a, b)["snr_db"] < 80         # INT8 (22.5 dB, 2026-12-05)
    assert compare(streamed, a)["snr_db"] >= 40                          # chunk windows: other block scales (61.5)
    assert main(["say", str(tmp_path / "h"), "--text", TEXT, "--engine", "native", "-o", str(tmp_path / "a.wav")]) == 0
    assert "native prior flow and INT8 decoder stages" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="native already"):
        add_tts_head(tmp_path / "h", tmp_path / "h2", TtsHeadConfig(threads=1, time_seconds=0))
    with pytest.raises(ConfigError, match="upsampler"):
        add_tts_head(tiny[1] / "k", tmp_path / "h3", TtsHeadConfig(threads=1, time_seconds=0))

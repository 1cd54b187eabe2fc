"""AMX tiles for the stage kernels' INT8 convs (``ef_amx.c``): bit-identical to the VNNI tiles on the waveform
stage, a stage without conv_post, the upsampler's merged phases and the text encoder, at 1 and 2 threads; convs
AMX cannot take (channels not a multiple of 32) fall back to the tiles. Skipped where the CPU or kernel has no AMX."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import InputError
from edgeflow.runtime import native
from edgeflow.runtime.native.wave_stage import WaveStage, pack_stage
from tests.test_native_wave_stage import random_stage

pytestmark = [pytest.mark.skipif(not native.available(), reason=str(native.load_error())),
              pytest.mark.skipif(native.available() and not native.amx_available(), reason="no AMX here")]


@pytest.fixture
def amx():
    """AVX-512 in use; AMX switched back on afterwards."""
    native.set_isa("avx512")
    yield
    native.set_amx(True)


def _both(run):
    """run() without AMX, then with it."""
    native.set_amx(False)
    assert not native.info()["amx"]
    off = run()
    native.set_amx(True)
    assert native.info()["amx"]
    return off, run()


def _signal(C, T, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((C, T)) * np.linspace(0.05, 2.0, T)).astype(np.float32)


@pytest.mark.parametrize("C,kind,planes,post,T,threads", [
    (32, "2", 1, True, 3000, 1), (32, "2", 2, True, 1700, 2), (64, "1", 1, False, 2100, 2),
    (128, "2", 1, False, 700, 1), (24, "2", 1, True, 900, 1)])
def test_stage_on_amx_is_bit_identical(amx, C, kind, planes, post, T, threads):
    """The stage (type-1 and type-2 resblocks, one and two activation planes, with and without conv_post) gives
    the same bits on AMX as on the VNNI tiles; 24 channels (the AMX row pair padded) too."""
    a, convs = random_stage(C=C, kind=kind, planes=planes, inner=32, seed=C + T)
    if not post:
        a = pack_stage(convs, None, 0.0, 0.1, 0.0)
    x = _signal(C, T, T)
    off, on = _both(lambda: WaveStage(a, threads=threads).run(x))
    assert np.isfinite(on).all() and np.abs(on).max() > 0
    assert np.array_equal(off, on)


def test_upsampler_phases_on_amx_are_bit_identical(amx):
    """The merged phase form of a stride-8 upsampler (taps that are zero in a whole phase skipped) ahead of a
    64-channel stage: the same bits on AMX."""
    from tests.test_native_wave_chain import _up

    a, convs = random_stage(C=64, seed=4)
    up = dict(_up(np.random.default_rng(3), 128, 64, u=8), bias=np.zeros(64, np.float32))
    a = pack_stage(convs, a["post.weight"], 0.01, 0.1, 0.01, up=up)
    assert a["up.q"].shape[0] == 512
    x = _signal(128, 400, 5)
    off, on = _both(lambda: WaveStage(a, threads=2).run(x))
    assert on.shape == (3200,) and np.array_equal(off, on)


def _random_encoder(H=64, F=128, heads=2, layers=2, k=3, window=4, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    arrays = {"emb": r(vocab, H) * 5, "config": np.asarray([H, F, heads, layers, k, window, vocab], np.int64)}
    for l in range(layers):
        a = f"attn_layers.{l}."
        arrays.update({a + "conv_qkv.weight": r(3 * H, H, 1), a + "conv_qkv.bias": r(3 * H),
                       a + "conv_o.weight": r(H, H, 1), a + "conv_o.bias": r(H),
                       a + "emb_rel_k": r(1, 2 * window + 1, H // heads),
                       a + "emb_rel_v": r(1, 2 * window + 1, H // heads),
                       f"ffn_layers.{l}.conv_1.weight": r(F, H, k), f"ffn_layers.{l}.conv_1.bias": r(F),
                       f"ffn_layers.{l}.conv_2.weight": r(H, F, k), f"ffn_layers.{l}.conv_2.bias": r(H),
                       f"ln.{l}": np.stack([1 + r(H), r(H), 1 + r(H), r(H)])})
    return arrays


@pytest.mark.parametrize("threads,T", [(1, 37), (2, 300)])
def test_text_encoder_on_amx_is_bit_identical(amx, threads, T):
    """The text encoder's convs (q, k, v stacked; o; the FFN's two), rows split between threads on whole AMX row
    pairs: the same bits on AMX."""
    from edgeflow.runtime.native.text_encoder import NativeTextEncoder

    ids = np.random.default_rng(T).integers(0, 20, T)
    off, on = _both(lambda: NativeTextEncoder(_random_encoder(), threads=threads).run(ids))
    assert on.shape == (1, 64, T) and np.abs(on).max() > 0
    assert np.array_equal(off, on)


def test_switch():
    """set_amx(False) and back; on by default where available."""
    assert native.info()["amx"] == (native.info()["isa"] == "avx512")
    native.set_amx(False)
    try:
        assert not native.info()["amx"]
    finally:
        native.set_amx(True)


def test_unavailable_amx_is_refused(monkeypatch):
    """Asking for AMX where the library has none is a one-line InputError."""

    class NoAmx:
        def ef_set_amx(self, on):
            return -1 if on else 0

    monkeypatch.setattr(native, "library", lambda: NoAmx())
    with pytest.raises(InputError, match="AMX is not available"):
        native.set_amx(True)
    native.set_amx(False)


@pytest.mark.parametrize("n_cond,threads", [(0, 1), (64, 2), (4, 1), (80, 2)])
def test_wavenet_flow_on_amx_is_bit_identical(amx, n_cond, threads):
    """The WaveNet couplings' INT8 dilated, conditioning and res / skip convs (a VITS prior flow's layout: hidden
    64, res / skip rows 96 and 32): the same bits on AMX; conditioning of 80 channels (20 quads: no AMX weights)
    runs the dilated conv on the tiles too."""
    from edgeflow.runtime.native import wn
    from tests.test_native_vits import random_flow

    arrays = wn.quantize_weights(random_flow(c=64, h=64, k=5, dil=(1, 2, 4), n_cond=n_cond, mean_only=1),
                                 res_skip=True)
    rng = np.random.default_rng(n_cond)
    x = rng.standard_normal((1, 64, 300)).astype(np.float32)
    cond = rng.standard_normal((1, n_cond, 300)).astype(np.float32) if n_cond else None

    def run():
        flow = wn.NativeFlow(arrays=arrays, threads=threads)
        assert flow.int8_layers == 6 and flow.int8_res_skip == 6
        return flow.run(x, cond)[0] if cond is not None else flow.run(x)[0]

    off, on = _both(run)
    assert np.isfinite(on).all() and np.array_equal(off, on)


def test_bench_system_without_amx_switches_it_off_while_it_speaks(amx):
    """bench_tts_optimize.py's BUNDLE@noamx: AMX off while the system's pieces are made, back on afterwards, also
    when the system fails mid-way."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_tts_optimize import WithoutAmx

    class Fake:
        size_bytes = 7

        def speak_stream(self, text, fail=False):
            yield native.info()["amx"]
            if fail:
                raise RuntimeError("boom")
            yield native.info()["amx"]

    wrapped = WithoutAmx(Fake())
    assert wrapped.size_bytes == 7 and list(wrapped.speak_stream("x")) == [False, False]
    assert native.info()["amx"]
    with pytest.raises(RuntimeError):
        list(wrapped.speak_stream("x", fail=True))
    assert native.info()["amx"]


def test_say_names_amx_where_int8_parts_run_on_it(amx):
    """``edgeflow say`` adds "INT8 on AMX tiles" for a native voice with INT8 parts while AMX is on, not for a float
    native flow alone, nor with AMX off."""
    from types import SimpleNamespace

    from edgeflow.cli.say import _amx_note

    float_flow = SimpleNamespace(flow=SimpleNamespace(int8_layers=0), wave=None, text_encoder=None)
    int8_flow = SimpleNamespace(flow=SimpleNamespace(int8_layers=8), wave=None, text_encoder=None)
    stage = SimpleNamespace(flow=SimpleNamespace(int8_layers=0), wave=object(), text_encoder=None)
    assert _amx_note(float_flow) == "" and _amx_note(int8_flow) == _amx_note(stage) == ", INT8 on AMX tiles"
    native.set_amx(False)
    assert _amx_note(stage) == ""


@pytest.mark.parametrize("overrides", [{"channels": 32}, {"channels": 24}, {"channels": 64, "kernel_size": 5,
                                                                          "height": 4, "dilations_h": [1, 2, 1],
                                                                          "n_layers": 3}])
def test_waveflow_int8_on_amx_is_bit_identical(amx, overrides, tmp_path):
    """WaveFlow's INT8 layers (the height-causal conv chunk by chunk, one activation scale per cached row; 48 rows
    in a padded AMX row pair; the conditioning conv, whose 20 mel quads have no AMX weights, on the tiles after it):
    the same bits on AMX."""
    from edgeflow.passes.kernels import pack_waveflow
    from edgeflow.runtime.native import format as fmt
    from export_helpers import HOP, test_mel, tiny_model
    from tests.test_native_int8 import requantized

    model = tiny_model("waveflow", **overrides)
    fmt.save(tmp_path / "k.npz", requantized(pack_waveflow(model)))
    f = 24
    feeds = {"mel": test_mel(f, batch=1, seed=f), "sigma": np.array([0.7], np.float32),
             "z": np.random.default_rng(f).standard_normal((1, f * HOP)).astype(np.float32)}

    def run():
        sess = native.NativeSession(tmp_path / "k.npz", ["mel", "z", "sigma"], HOP, threads=2)
        assert sess.precision == "int8"
        return sess.run(None, feeds)[0]

    off, on = _both(run)
    assert np.isfinite(on).all() and np.array_equal(off, on)


def test_environment_switches_amx_off():
    """EDGEFLOW_NATIVE_AMX=0: the library runs as on a CPU without AMX (how this machine checks the VNNI path of a
    whole test run)."""
    import json
    import os
    import subprocess
    import sys

    code = "import json; from edgeflow.runtime import native; print(json.dumps([native.amx_available(), native.info()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, EDGEFLOW_NATIVE_AMX="0"))
    assert out.returncode == 0, out.stderr[-500:]
    available, info = json.loads(out.stdout)
    assert available is False and info["amx"] is False and info["isa"] == "avx512"

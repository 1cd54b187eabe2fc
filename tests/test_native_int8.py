"""The native engine's INT8 path (edgeflow/runtime/native/ef_int8.c): the u8 x s8 GEMM of every instruction set
against exact integer math, INT8 layers against the same weights in float on every instruction set and thread
count, the weight file's INT8 fields, and the kernels pass on a quantized tiny WaveFlow bundle against onnxruntime's
INT8 graph (log-mel L1 budget), engine choice and thread safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeflow.core.errors import BundleError
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.passes.kernels import add_kernels, pack_waveflow
from edgeflow.runtime import Synthesizer, native
from edgeflow.runtime.native import format as fmt
from export_helpers import HOP, SR, assert_threads_match_serial, snr_db, test_mel, tiny_model

pytestmark = pytest.mark.skipif(not native.available(), reason=str(native.load_error()))

#: The shared tiny WaveFlow, and one with an odd channel count, a 5 x 5 kernel and a height dilation of 2.
CONFIGS = [{}, {"channels": 6, "n_layers": 3, "n_flows": 3, "height": 4, "kernel_size": 5, "dilations_h": [1, 2, 1]}]
#: INT8 layers vs the same (dequantized) weights in float, tiny models: measured 74-76 dB; a 10% scale error in
#: one conv of one layer gives 56 dB.
MIN_SNR_VS_FLOAT = 65.0
#: The budget of INT8 native vs onnxruntime INT8 (log-mel L1, the fast recipe's quantize budget).
MAX_MEL_L1 = 0.1


@pytest.fixture
def isa():
    """Restores the best instruction set after a test that forces one."""
    yield
    native.set_isa(native.supported_isas()[-1])


def requantized(arrays, parts=("conv", "cond")):
    """``arrays`` with the dilated / conditioning convs of every layer in INT8 (symmetric per output channel, as
    the quantize pass writes them) and their float weights replaced by the dequantized ones."""
    out = dict(arrays)
    for name, w in arrays.items():
        base = name[:-len(".weight")]
        if ".layer." in name and base.rsplit(".", 1)[-1] in parts and name.endswith(".weight"):
            shape = (-1,) + (1,) * (w.ndim - 1)
            scale = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / 127.0
            q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            out[base + ".qweight"], out[base + ".qscale"] = q, scale.astype(np.float32)
            out[name] = (q * scale.reshape(shape)).astype(np.float32)
    return out


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (48, 296, 130), (64, 368, 64), (7, 9, 200)])
def test_int8_gemm_exact_on_every_isa(m, k, n, isa):
    rng = np.random.default_rng(m * 1000 + k)
    w = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x = rng.integers(0, 256, (k, n)).astype(np.uint8)
    w[0, :] = -128 if k % 2 else 127                          # u8 255 x s8 +-127/128 pairs: saturate vpmaddubsw
    x[:, 0] = 255
    ref = w.astype(np.int64) @ x.astype(np.int64)
    kernels = []
    for name in native.supported_isas():
        native.set_isa(name)
        kernels.append(native.info()["int8_kernel"])
        got = native.int8_gemm(w, x)
        assert got.dtype == np.int32 and np.array_equal(got, ref), (name, np.abs(got - ref).max())
    assert "portable" in kernels


def _run(arrays, tmp_path: Path, threads: int, feeds, name="k.npz"):
    fmt.save(tmp_path / name, arrays)
    sess = native.NativeSession(tmp_path / name, ["mel", "z", "sigma"], HOP, threads=threads)
    return sess.precision, sess.run(None, feeds)[0]


@pytest.mark.parametrize("overrides", CONFIGS)
def test_int8_layers_match_float_every_isa_and_thread_count(overrides, tmp_path, isa):
    model = tiny_model("waveflow", **overrides)
    a8 = requantized(pack_waveflow(model))
    af = {k: v for k, v in a8.items() if not k.endswith((".qweight", ".qscale"))}
    f = 23 if model.config.height % 8 else 24
    mel = test_mel(f, batch=2, seed=f)
    feeds = {"mel": mel, "z": np.random.default_rng(f).standard_normal((2, f * HOP)).astype(np.float32),
             "sigma": np.array([0.7], np.float32)}
    prec, ref = _run(af, tmp_path, 1, feeds, "f.npz")
    assert prec == "float32"
    outs = []
    for name in native.supported_isas():
        native.set_isa(name)
        for threads in (1, 2):
            prec, out = _run(a8, tmp_path, threads, feeds)
            snr = snr_db(ref, out)
            assert prec == "int8" and MIN_SNR_VS_FLOAT <= snr < 110, (name, threads, snr)   # INT8 ran, and well
            outs.append(out)
    assert all(snr_db(outs[0], o) > 90 for o in outs[1:])     # same integer sums on every path
    bad = dict(a8)                                            # what the budget catches: one wrong scale
    bad["flow.0.layer.0.conv.qscale"] = bad["flow.0.layer.0.conv.qscale"] * 1.1
    assert snr_db(ref, _run(bad, tmp_path, 1, feeds, "b.npz")[1]) < MIN_SNR_VS_FLOAT


def test_int8_cond_only_and_weight_file_checks(tmp_path):
    model = tiny_model("waveflow")
    arrays = pack_waveflow(model)
    mixed = requantized(arrays, parts=("cond",))              # conditioning INT8, dilated float
    assert [p[2] for p in fmt.int8_parts(fmt.check(mixed))] == [1] * 4
    mel = test_mel(16, seed=1)[None]
    feeds = {"mel": mel, "z": np.ones((1, 16 * HOP), np.float32), "sigma": np.array([0.5], np.float32)}
    f_out = _run({k: v for k, v in mixed.items() if not k.endswith(("qweight", "qscale"))}, tmp_path, 1, feeds)[1]
    assert MIN_SNR_VS_FLOAT <= snr_db(f_out, _run(mixed, tmp_path, 2, feeds, "m.npz")[1]) < 110
    old = dict(arrays, format=np.array([1], np.int32))        # a format-1 (float) file still loads
    assert fmt.precision(fmt.check(old)) == "float32"
    with pytest.raises(BundleError, match="format 1 cannot hold INT8"):
        fmt.check(dict(mixed, format=np.array([1], np.int32)))
    with pytest.raises(BundleError, match="format 3"):
        fmt.check(dict(arrays, format=np.array([3], np.int32)))
    bad = dict(mixed)
    bad["flow.0.layer.0.cond.qweight"] = bad["flow.0.layer.0.cond.qweight"].astype(np.int16)
    with pytest.raises(BundleError, match="INT8 pair flow.0.layer.0.cond") as exc:
        fmt.save(tmp_path / "bad.npz", bad)
    assert "\n" not in str(exc.value)
    bad = dict(mixed)
    del bad["flow.1.layer.1.cond.qscale"]
    with pytest.raises(BundleError, match="incomplete or malformed"):
        fmt.check(bad)


def _calibration(root: Path) -> Path:
    from edgeflow.audio.io import save_wav
    from edgeflow.audio.mel import MelConfig
    from edgeflow.quant.calibration import build_calibration_set
    from export_helpers import MEL

    rng, lines = np.random.default_rng(0), []
    for i in range(10):
        n = int(SR * (0.3 + 0.05 * i))
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (0.5 + 0.5 * np.sin(6 * np.pi * t))
        save_wav(root / "corpus" / "wavs" / f"U{i:03d}.wav", (audio + 0.02 * rng.standard_normal(n)).astype(np.float32),
                 SR)
        lines.append(f"U{i:03d}|Sentence {i}.|sentence {i}|spk{i % 2}")
    (root / "corpus" / "metadata.csv").write_text("\n".join(lines) + "\n")
    build_calibration_set(root / "corpus", root / "calib", MelConfig.from_dict(MEL), n=4, seed=0, max_seconds=0.5,
                          multiple=64)
    return root / "calib"


@pytest.fixture(scope="module")
def int8_bundles(tmp_path_factory):
    """(model, the INT8 bundle (the fast recipe's quantize settings), the same with native INT8 kernels, work)."""
    from edgeflow.validate.export import export_bundle

    root = tmp_path_factory.mktemp("native8")
    model = tiny_model("waveflow")
    export_bundle(model, root / "plain")
    art = Artifact(model=model, bundle_dir=root / "plain")
    ctx = PassContext(work_dir=root / "work", calib_dir=_calibration(root), target={"threads": 1}, progress=False)
    apply_pass(art, make_config("quantize", {"method": "minmax", "activation_type": "uint8", "sensitivity": False,
                                             "exclude": ["upsample", "start", "res", "skip"]}), ctx)
    int8 = art.bundle_dir
    rec = apply_pass(art, make_config("kernels", {"time_seconds": 0.5, "threads": 1}), ctx)
    assert rec["details"]["native"] and art.bundle_dir != int8
    return model, int8, art.bundle_dir, root


def test_kernels_pass_on_int8_bundle(int8_bundles):
    _, int8, bundle, _ = int8_bundles
    manifest = json.loads((bundle / "manifest.json").read_text())
    nat = manifest["native"]
    assert manifest["precision"] == "int8" and nat["precision"] == "int8" and nat["engine"] == "waveflow-int8"
    import onnx

    graph = onnx.load(str(int8 / "model.onnx")).graph
    qconvs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(
        ("conv.weight_quantized", "cond_conv.weight_quantized"))}
    assert nat["int8"]["dilated_convs"] + nat["int8"]["cond_convs"] == len(qconvs) == 8   # mirrors the graph
    assert nat["parity"]["passed"] and all(r["mel_l1"] <= MAX_MEL_L1 for r in nat["parity"]["lengths"])
    assert nat["timing"]["faster"] in ("native", "onnxruntime") and nat["int8_kernel"] == native.info()["int8_kernel"]
    ort_s = Synthesizer.load(bundle, threads=1, engine="onnxruntime")
    nat_s = Synthesizer.load(bundle, threads=2, engine="native")
    assert nat_s.session.precision == "int8" and Synthesizer.load(bundle, threads=nat["timing"]["threads"]).engine == nat["timing"]["faster"]
    from edgeflow.audio.mel import MelConfig
    from edgeflow.audio.snr import log_mel_l1

    cfg = MelConfig.from_dict(manifest["mel"])
    for frames in (16, 48):
        mel = test_mel(frames, seed=frames) * 0.5 - 2.5        # nearer the calibration mels' range
        ref, got = ort_s.synthesize(mel, seed=3), nat_s.synthesize(mel, seed=3)
        assert log_mel_l1(ref, got, cfg) <= MAX_MEL_L1 and snr_db(ref, got) >= 20, frames


def test_int8_native_threads_match_serial(int8_bundles):
    synth = Synthesizer.load(int8_bundles[2], threads=2, engine="native")
    assert_threads_match_serial(synth, [test_mel(9 + 5 * i, seed=i) for i in range(8)])


def test_int8_kernels_refuse_a_foreign_model(int8_bundles):
    _, int8, _, root = int8_bundles
    with pytest.raises(BundleError, match="does not match the model"):
        add_kernels(tiny_model("waveflow", seed=3), int8, root / "wrong")
    assert not (root / "wrong").exists()
    fp16 = root / "fp16"                                       # another precision: the pass leaves it as it is
    shutil.copytree(int8, fp16)
    manifest = json.loads((fp16 / "manifest.json").read_text())
    manifest.pop("files")
    from edgeflow.core.bundle_format import write_manifest

    write_manifest(fp16, dict(manifest, precision="float16"))
    art = Artifact(model=int8_bundles[0], bundle_dir=fp16)
    rec = apply_pass(art, make_config("kernels", {}), PassContext(work_dir=root / "w2", progress=False))
    assert rec["details"]["native"] is False and "float16" in rec["details"]["reason"] and art.bundle_dir == fp16

"""Quantization: calibration sets, coupling-aware INT8 (Q/DQ placement, parity), FP16, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeflow.audio.io import save_wav
from edgeflow.audio.mel import MelConfig
from edgeflow.core.errors import ConfigError, EdgeflowError
from edgeflow.data.ljspeech import load_split
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.quant.calibration import CalibrationError, build_calibration_set, load_calibration_set
from edgeflow.quant.graph import COUPLING_OPS, FLOAT_ROLES, audio_path, classify, quantized_nodes, quantized_outputs
from edgeflow.quant.int8 import QuantizationError, run_graph

from export_helpers import MEL, SR, tiny_model

#: Minimum SNR (dB) of the tiny INT8 bundles against their float bundle on the calibration set.
INT8_MIN_SNR_DB = 35.0
MEL_CFG = MelConfig.from_dict(MEL)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """30 utterances, 4 speakers, 0.3-0.85 s, at the tiny models' 8 kHz."""
    root = tmp_path_factory.mktemp("qcorpus")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(30):
        n = int(SR * (0.3 + 0.05 * (i % 12)))
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (0.5 + 0.5 * np.sin(6 * np.pi * t))
        save_wav(root / "wavs" / f"U{i:03d}.wav", (audio + 0.02 * rng.standard_normal(n)).astype(np.float32), SR)
        lines.append(f"U{i:03d}|Sentence {i}.|sentence {i}|spk{i % 4}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def calib(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qcal") / "set"
    build_calibration_set(corpus, out, MEL_CFG, n=6, seed=0, max_seconds=0.5, multiple=64)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Float bundles of the tiny WaveFlow and WaveGlow (exported once)."""
    from edgeflow.validate.export import export_bundle

    root = tmp_path_factory.mktemp("qbundles")
    out = {}
    for fam in ("waveflow", "waveglow"):
        export_bundle(tiny_model(fam), root / fam)
        out[fam] = root / fam
    return out


def quantize(bundle: Path, calib_dir: Path | None, work: Path, **opts) -> Artifact:
    work.mkdir(parents=True, exist_ok=True)
    art = Artifact(bundle_dir=bundle)
    ctx = PassContext(work_dir=work, calib_dir=calib_dir, target={"threads": 1}, progress=False)
    apply_pass(art, make_config("quantize", opts), ctx)
    return art


def graph(bundle: Path):
    import onnx

    return onnx.load(str(bundle / "model.onnx"))


# -- calibration sets ------------------------------------------------------------------------------------


def test_calibration_uses_train_split_only(corpus, calib):
    cset = load_calibration_set(calib, MEL_CFG)
    train = {u.id for u in load_split(corpus, "train")}
    test = {u.id for u in load_split(corpus, "test")}
    assert len(cset) == 6 and set(cset.ids) <= train and not set(cset.ids) & test
    m = cset.manifest
    assert m["source"]["split"] == "train" and m["count"] == 6 and len(m["speakers"]) == 4
    assert all(mel.shape[0] == MEL["n_mels"] and mel.shape[1] % 1 == 0 for mel in cset.mels)
    assert len({u["seconds"] for u in m["utterances"]}) > 1               # a mix of lengths
    again = build_calibration_set(corpus, calib.parent / "again", MEL_CFG, n=6, seed=0, max_seconds=0.5, multiple=64)
    assert [u["id"] for u in again["utterances"]] == cset.ids and again["files"] == m["files"]
    with pytest.raises(ConfigError, match="never 'test'"):
        build_calibration_set(corpus, calib.parent / "t", MEL_CFG, split="test")


def test_calibration_bad_sets(calib, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(calib, bad)
    with pytest.raises(CalibrationError, match="n_mels 20 vs the model's 80"):
        load_calibration_set(bad, MelConfig())
    with pytest.raises(CalibrationError, match="sample_rate 8000 vs the model's 16000"):
        load_calibration_set(bad, dict(MEL, sample_rate=16000))
    data = bytearray((bad / "mels.npz").read_bytes())
    data[-40] ^= 1
    (bad / "mels.npz").write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="mels.npz does not match its sha256"):
        load_calibration_set(bad)
    empty = tmp_path / "empty"
    shutil.copytree(calib, empty)
    m = json.loads((empty / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps(dict(m, utterances=[], count=0)))
    with pytest.raises(CalibrationError, match="empty"):
        load_calibration_set(empty)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration_set(tmp_path / "nowhere")
    for exc in (CalibrationError, QuantizationError):
        assert issubclass(exc, EdgeflowError)


def test_calibrate_cli(corpus, tmp_path, capsys):
    from edgeflow.cli.main import main
    from edgeflow.models.checkpoint import save_model

    save_model(tmp_path / "m.pt", tiny_model("waveflow"))
    out = tmp_path / "cal"
    assert main(["calibrate", "--data", str(corpus), "--model", str(tmp_path / "m.pt"), "-o", str(out),
                 "--n", "3", "--max-seconds", "0.4"]) == 0
    assert load_calibration_set(out, MEL_CFG).manifest["count"] == 3
    assert main(["calibrate", "--data", str(corpus), "--model", str(tmp_path / "m.pt"), "-o", str(out)]) == 2
    assert main(["calibrate", "--data", str(tmp_path / "none"), "--model", str(tmp_path / "m.pt"),
                 "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("edgeflow: error:") for line in err)
    assert not (tmp_path / "x").exists()


# -- INT8 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
@pytest.mark.parametrize("outputs", [True, False])
def test_int8_qdq_placement_and_parity(bundles, calib, tmp_path, family, outputs):
    art = quantize(bundles[family], calib, tmp_path, sensitivity=False, quantize_outputs=outputs)
    float_g, q = graph(bundles[family]), graph(art.bundle_dir)
    roles = classify(float_g)
    qn, qo = quantized_nodes(q), quantized_outputs(q)
    kept = {r.name for r in roles if r.role in FLOAT_ROLES}
    assert kept and not kept & (qn | qo)                                    # end convs, 1x1 convs: float
    assert {"Conv"} <= {n.op_type for n in q.graph.node if n.name in qn}
    ops = {n.name: n.op_type for n in q.graph.node}
    never = {"Exp", "Neg", "Sub", "Tanh", "Sigmoid"}                         # neither read nor feed a Q/DQ
    touched = sorted(n for n in qn | qo if ops[n] in never)
    assert not touched, f"Q/DQ on coupling arithmetic: {touched[:5]}"
    if not outputs:      # Q/DQ only on conv inputs/weights: no elementwise op reads a dequantized value
        assert not [n for n in qn if ops[n] in COUPLING_OPS]
    # (a Mul/Concat output may still feed a QuantizeLinear: that is the next conv's *input* quantization)
    on_path = audio_path(float_g, roles) & set(ops)
    assert on_path and not on_path & qn                                     # affine update / log-det: float data
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zps and not any(z.any() for z in zps)                             # symmetric: zero points 0
    man = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert man["precision"] == "int8" and man["quantization"]["calibration"]["sha256"]
    assert q.ir_version <= 13
    from edgeflow.quant.calibration import load_calibration_set as load
    from edgeflow.runtime import Synthesizer

    cset = load(calib)
    ref, syn = Synthesizer.load(bundles[family]), Synthesizer.load(art.bundle_dir)
    for mel, seed in zip(cset.mels, cset.seeds):
        a, b = ref.synthesize(mel, seed=seed), syn.synthesize(mel, seed=seed)
        snr = 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a - b).astype(np.float64) ** 2))
        assert snr > INT8_MIN_SNR_DB, f"{family}: int8 SNR {snr:.1f} dB vs float"


def test_int8_sensitivity_and_budget(bundles, calib, tmp_path):
    art = quantize(bundles["waveflow"], calib, tmp_path / "ok", max_mel_l1=None, min_snr_db=20.0)
    det = json.loads((art.bundle_dir / "manifest.json").read_text())["quantization"]
    assert set(det["sensitivity"]) == set(det["groups"]) >= {"dilated", "res", "start"}
    assert "skip" not in det["groups"]      # frozen WaveFlow: skip convs folded with the end conv, kept float
    assert all(v["snr_db"] > 0 for v in det["sensitivity"].values())
    with pytest.raises(QuantizationError, match="tried: .*alone.*all but"):
        quantize(bundles["waveflow"], calib, tmp_path / "no", min_snr_db=150.0, max_float_layers=2)
    assert not list((tmp_path / "no").glob("bundle-*"))                    # nothing half-written


def test_int8_uint8_and_exclude(bundles, calib, tmp_path):
    art = quantize(bundles["waveglow"], calib, tmp_path, sensitivity=False, activation_type="uint8",
                   exclude=["start", "cond"])
    q = graph(art.bundle_dir)
    roles = {r.name: r.role for r in classify(graph(bundles["waveglow"]))}
    qn = quantized_nodes(q)
    assert not [n for n in qn if roles.get(n) in ("start", "cond")]
    assert [n for n in qn if roles.get(n) == "dilated"]


def test_quantize_needs_bundle_and_calibration(bundles, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="export pass first"):
        apply_pass(Artifact(), make_config("quantize", {}), PassContext(work_dir=tmp_path))
    monkeypatch.chdir(tmp_path)                     # no calibration/ here, and none beside an installed edgeflow
    with pytest.raises(ConfigError, match="edgeflow calibrate"):
        quantize(bundles["waveflow"], None, tmp_path / "w")
    with pytest.raises(ConfigError, match="method must be one of"):
        make_config("quantize", {"method": "magic"})


def test_default_calibration_is_found_beside_the_model(calib, tmp_path, monkeypatch):
    """models/NAME/model.pt finds its project's calibration/NAME from any working directory."""
    from edgeflow.passes.quantize import default_calibration

    project = tmp_path / "project"
    (project / "models" / "demo").mkdir(parents=True)
    shutil.copytree(calib, project / "calibration" / "demo")
    mel = json.loads((calib / "manifest.json").read_text())["mel"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = project / "models" / "demo" / "model.pt"
    assert default_calibration("waveflow", mel, "demo", model) == project / "calibration" / "demo"
    assert default_calibration("waveflow", mel, None, model) == project / "calibration" / "demo"   # the only fit
    with pytest.raises(ConfigError, match="edgeflow calibrate"):
        default_calibration("waveflow", mel, "demo")


@pytest.mark.slow
def test_edgeflow_writer_matches_quantize_static(bundles, calib, tmp_path):
    """Same flow-specific choices through onnxruntime's quantize_static: same quantized convs, both accurate."""
    a = quantize(bundles["waveflow"], calib, tmp_path / "a", sensitivity=False)
    b = quantize(bundles["waveflow"], calib, tmp_path / "b", sensitivity=False, engine="onnxruntime")
    ga, gb = graph(a.bundle_dir), graph(b.bundle_dir)
    conv_a = {n for n in quantized_nodes(ga) if n.endswith("Conv") or "/Conv" in n}
    conv_b = {n for n in quantized_nodes(gb) if n.endswith("Conv") or "/Conv" in n}
    assert conv_a == conv_b
    for bundle in (a.bundle_dir, b.bundle_dir):
        q = json.loads((bundle / "manifest.json").read_text())["quantization"]["quality_vs_float"]
        assert q["snr_db"] > INT8_MIN_SNR_DB - 10


# -- FP16 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
def test_fp16_bundle(bundles, calib, tmp_path, family):
    import onnx

    art = quantize(bundles[family], calib, tmp_path, precision="float16")
    man = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert man["precision"] == "float16" and man["quantization"]["finite"]
    cset = load_calibration_set(calib)
    outs = run_graph(art.bundle_dir / "model.onnx", list(cset.feeds(MEL["hop_length"], 0.6)))
    assert all(np.all(np.isfinite(o)) for o in outs)
    q = onnx.shape_inference.infer_shapes(graph(art.bundle_dir))
    types = {v.name: v.type.tensor_type.elem_type for v in list(q.graph.value_info) + list(q.graph.input)}
    exp_in = [types.get(n.input[0]) for n in q.graph.node if n.op_type == "Exp"]
    assert exp_in and all(t == onnx.TensorProto.FLOAT for t in exp_in)    # exp(log s) in float32
    assert any(t == onnx.TensorProto.FLOAT16 for t in types.values())       # the nets are float16


def test_fp16_refuses_nan(bundles, calib, tmp_path, monkeypatch):
    import edgeflow.quant.fp16 as fp16

    calls = []

    def fake(path, feeds, threads=None):                    # float reference first, then a broken fp16 graph
        calls.append(path)
        outs = run_graph(path, feeds, threads)
        return outs if len(calls) == 1 else [np.where(np.arange(o.size) == 3, np.inf, o) for o in outs]

    monkeypatch.setattr(fp16, "run_graph", fake)
    with pytest.raises(QuantizationError, match="NaN/Inf"):
        quantize(bundles["waveglow"], calib, tmp_path, precision="float16")
    assert not list(tmp_path.glob("bundle-*"))


def test_targets_have_quantize():
    from edgeflow.targets import load_target, recipe_passes

    for target in ("cpu", "jetson-orin-nano", "jetson-agx-orin", "gpu"):
        tgt = load_target(target)
        for recipe in ("balanced", "fast"):
            specs = recipe_passes(tgt, recipe)
            q = [s for s in specs if s["pass"] == "quantize"]
            assert len(q) == 1, (target, recipe)
            opts = {k: v for k, v in q[0].items() if k != "pass"}
            cfg = make_config("quantize", opts)
            assert cfg.precision in tgt["precisions"]
            if tgt["backend"] == "tensorrt" and cfg.precision == "int8":
                assert cfg.activation_type == "int8"                      # TensorRT: zero point 0



def test_bench_quant_speed_patches_are_result_identical(bundles, calib, tmp_path):
    """bench/bench_quant.py's two linear-time replacements inside quantize_static change no byte of its output."""
    import importlib.util
    import logging

    from onnxruntime.quantization import calibrate, quantize_static
    from onnxruntime.quantization.onnx_model import ONNXModel

    from edgeflow.quant.calibration import load_calibration_set
    from edgeflow.quant.int8 import CalibReader

    spec = importlib.util.spec_from_file_location("bench_quant", Path(__file__).resolve().parents[1] / "bench" /
                                                  "bench_quant.py")
    bq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bq)
    src = bundles["waveflow"] / "model.onnx"
    feeds = list(load_calibration_set(calib, MEL_CFG).feeds(MEL_CFG.hop_length, 0.7))[:2]
    saved = {(calibrate.MinMaxCalibrater, "augment_graph"): calibrate.MinMaxCalibrater.__dict__["augment_graph"]}
    for name in ("replace_input_of_all_nodes", "replace_node_input", "remove_node"):
        saved[(ONNXModel, name)] = ONNXModel.__dict__[name]
    level = logging.getLogger().level
    try:
        quantize_static(str(src), str(tmp_path / "plain.onnx"), CalibReader(feeds))
        calibrate.MinMaxCalibrater.augment_graph = bq._linear_augment_graph
        bq._patch_onnx_model()
        quantize_static(str(src), str(tmp_path / "patched.onnx"), CalibReader(feeds))
    finally:
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)
        logging.getLogger().setLevel(level)
    plain, patched = (tmp_path / "plain.onnx").read_bytes(), (tmp_path / "patched.onnx").read_bytes()
    assert len(plain) > 10_000 and plain == patched


@pytest.mark.parametrize("family", ["waveflow", "waveglow"])
def test_residual_option_never_touches_a_flow(bundles, calib, tmp_path, family):
    """``residual`` is for a HiFi-GAN's resblocks: on a flow graph it adds no Q/DQ (a coupling Add stays float)."""
    a = quantize(bundles[family], calib, tmp_path / "a", sensitivity=False, activation_type="uint8", residual=True)
    b = quantize(bundles[family], calib, tmp_path / "b", sensitivity=False, activation_type="uint8")
    count = [sum(n.op_type == "QuantizeLinear" for n in graph(x.bundle_dir).graph.node) for x in (a, b)]
    assert count[0] == count[1] > 0
    assert json.loads((a.bundle_dir / "manifest.json").read_text())["quantization"]["residual_tensors"] == 0
    with pytest.raises(ConfigError, match="residual needs"):
        make_config("quantize", {"residual": True, "engine": "onnxruntime"})

"""``edgeflow optimize`` on a text-to-speech voice: the polyphase ConvTranspose rewrite, coupling-aware node
selection for INT8, and the gated pipeline (quality and balanced recipes, resume, rollback, CLI errors) on a tiny
random VITS model.pt. pocketsphinx and DNSMOS are replaced by cheap deterministic stand-ins (the real scorers run
in the manual measurement on the stock voice, see the report of issue 15)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeflow.models.vits as vits
from edgeflow.cli.main import main
from edgeflow.export.vits_polyphase import PolyphaseConvTranspose1d, to_phase_form
from tests.test_vits_model import randomized, tiny_config
from voice_helpers import tiny_id_map


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    from edgeflow.models.checkpoint import save_model

    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config(phoneme_id_map=tiny_id_map(), num_symbols=80)))
    path = tmp_path_factory.mktemp("tts_opt") / "tiny.pt"
    save_model(path, model)
    return model, path


@pytest.fixture
def fake_scorers(monkeypatch):
    """transcribe: the first words of nothing (a fixed hypothesis); dnsmos: figures from the audio's RMS."""
    from edgeflow.validate import perceptual

    monkeypatch.setattr(perceptual, "transcribe", lambda audio, sr=22050: "the weather")

    def dnsmos(audio, sr=22050):
        r = float(np.sqrt(np.mean(np.square(audio))))
        return {"p808": 3 + r, "sig": 3 + r, "bak": 3 - r, "ovrl": 2.5 + r}

    monkeypatch.setattr(perceptual, "dnsmos", dnsmos)


@pytest.mark.parametrize("c_in,c_out,k,s,p,op", [(8, 4, 16, 8, 4, 0), (4, 3, 4, 2, 1, 0), (5, 2, 7, 3, 2, 1),
                                                 (3, 3, 3, 3, 0, 0)])
def test_polyphase_equals_conv_transpose(c_in, c_out, k, s, p, op):
    torch.manual_seed(1)
    ct = torch.nn.ConvTranspose1d(c_in, c_out, k, s, padding=p, output_padding=op)
    pp = PolyphaseConvTranspose1d(ct)
    for length in (1, 6, 23):
        x = torch.randn(2, c_in, length)
        ref, out = ct(x), pp(x)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    assert pp.conv.weight.shape == (s * c_out, c_in, -(-k // s))


def test_phase_form_of_the_decoder_keeps_its_audio(tiny_pt):
    import copy

    from edgeflow.flows.coupling import remove_weight_norm

    model, _ = tiny_pt
    dec = copy.deepcopy(model.dec).eval()
    remove_weight_norm(dec)
    x = torch.randn(1, 16, 12)
    with torch.no_grad():
        ref = dec(x)
        assert to_phase_form(dec) == len(model.config.decoder.upsample_rates)
        out = dec(x)
    assert not any(isinstance(m, torch.nn.ConvTranspose1d) for m in dec.modules())
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="weight norm"):
        to_phase_form(copy.deepcopy(model.dec))          # still weight-normed


def test_coupling_aware_selection(tmp_path, tiny_pt):
    import onnx

    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.quant.vits_int8 import select_nodes

    model, _ = tiny_pt
    export_vits_bundle(model, tmp_path / "b", phase_form=False)   # the plain form: ConvTranspose left float
    dec = select_nodes(onnx.load(str(tmp_path / "b" / "decoder.onnx")), "decoder")
    enc = select_nodes(onnx.load(str(tmp_path / "b" / "model.onnx")), "encoder")
    assert dec["quantize"] and all(n.startswith("/dec/") and "ConvTranspose" not in n and "conv_post" not in n
                                   for n in dec["quantize"])
    assert any(n.startswith("/enc/") for n in dec["float"])              # prior flow's WN convs stay float
    assert any("ConvTranspose" in n for n in dec["float"]) and any("conv_post" in n for n in dec["float"])
    assert enc["quantize"] and all(n.startswith("/enc_p/encoder/") for n in enc["quantize"])
    assert any("MatMul" in n for n in enc["quantize"])
    assert any(n.startswith(("/convs/", "/pre", "/proj")) for n in enc["float"])   # duration predictor
    assert "/enc_p/proj/Conv" in enc["float"]


def test_residual_adds_only_in_fully_quantized_resblocks(tmp_path, tiny_pt):
    """``residual``: Q/DQ on the Adds of the decoder resblocks whose convs are all int8; never a flow's Add."""
    import onnx
    import onnxruntime as ort

    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.quant.vits_int8 import DEFAULT_EXCLUDE, quantize_graph, residual_adds, select_nodes

    model, _ = tiny_pt
    export_vits_bundle(model, tmp_path / "b")
    src = tmp_path / "b" / "decoder.onnx"
    g = onnx.load(str(src))
    everything = residual_adds(g, select_nodes(g, "decoder")["quantize"])
    assert everything and all(n.startswith("/dec/resblocks.") for n in everything)
    last = select_nodes(g, "decoder", list(DEFAULT_EXCLUDE) + [r"^/dec/resblocks\.0/"])["quantize"]
    assert not [n for n in residual_adds(g, last) if n.startswith("/dec/resblocks.0/")]
    assert set(residual_adds(g, last)) < set(everything)
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or 16 for d in i.type.tensor_type.shape.dim] for i in g.graph.input}
    feeds = [{k: (np.array([0.667, 1.0, 0.8], np.float32) if k == "scales" else
                  rng.standard_normal(v).astype(np.float32)) for k, v in shapes.items()} for _ in range(3)]
    info = quantize_graph(src, tmp_path / "q.onnx", "decoder", feeds, residual=True)
    assert info["residual_adds"] == len(everything)
    q = onnx.load(str(tmp_path / "q.onnx"))
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    adds = [n for n in q.graph.node if n.name in set(everything)]
    assert adds and all(prod.get(i) == "DequantizeLinear" for n in adds for i in n.input)
    flow_adds = [n for n in q.graph.node if n.op_type == "Add" and not n.name.startswith("/dec/")]
    assert flow_adds and all(prod.get(i) != "DequantizeLinear" for n in flow_adds for i in n.input)
    a = ort.InferenceSession(str(src)).run(None, feeds[0])[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, feeds[0])[0]
    assert a.shape == b.shape and np.all(np.isfinite(b)) and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_stage_sums_only_over_fully_quantized_resblocks(tmp_path, tiny_pt):
    """``stage_sums``: Q/DQ on the Adds summing a stage's resblocks where all of that stage's resblocks are int8
    (every stage here: two sums per stage), none for a stage with a float resblock; the option needs ``residual``."""
    import onnx

    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.passes.tts_vits import TtsQuantizeConfig
    from edgeflow.quant.vits_int8 import DEFAULT_EXCLUDE, quantize_graph, residual_adds, select_nodes, stage_sum_adds

    model, _ = tiny_pt
    export_vits_bundle(model, tmp_path / "b")
    src = tmp_path / "b" / "decoder.onnx"
    g = onnx.load(str(src))
    sums = stage_sum_adds(g, residual_adds(g, select_nodes(g, "decoder")["quantize"]))
    assert sums == ["/dec/Add", "/dec/Add_1", "/dec/Add_2", "/dec/Add_3", "/dec/Add_4", "/dec/Add_5"], sums
    part = select_nodes(g, "decoder", list(DEFAULT_EXCLUDE) + [r"^/dec/resblocks\.4/"])["quantize"]
    assert stage_sum_adds(g, residual_adds(g, part)) == sums[:2] + sums[4:]     # stage 1 has a float resblock
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or 16 for d in i.type.tensor_type.shape.dim] for i in g.graph.input}
    feeds = [{k: (np.array([0.667, 1.0, 0.8], np.float32) if k == "scales" else
                  rng.standard_normal(v).astype(np.float32)) for k, v in shapes.items()} for _ in range(3)]
    info = quantize_graph(src, tmp_path / "q.onnx", "decoder", feeds, residual=True, stage_sums=True)
    assert info["stage_sum_adds"] == 6 and info["residual_adds"] == len(residual_adds(g, select_nodes(
        g, "decoder")["quantize"]))
    q = onnx.load(str(tmp_path / "q.onnx"))
    prod = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(prod.get(i) == "DequantizeLinear" for n in q.graph.node if n.name in sums for i in n.input)
    with pytest.raises(ValueError, match="stage_sums needs residual"):
        TtsQuantizeConfig(stage_sums=True)


def _history_names(bundle):
    return [h["name"] for h in json.loads((bundle / "manifest.json").read_text())["history"]]


def test_optimize_quality_and_resume(tmp_path, tiny_pt, fake_scorers, monkeypatch):
    from edgeflow.pipeline_tts import optimize_tts
    from edgeflow.runtime import Voice
    from edgeflow.validate import progress

    _, path = tiny_pt
    logs = []
    monkeypatch.setattr(progress, "AFTER", 0.0)
    monkeypatch.setattr(progress, "EVERY", 0.0)
    rep = optimize_tts(path, tmp_path / "q", recipe="quality", n_eval=2, log=logs.append)
    for label in ("scoring the teacher", "scoring the bundle"):                  # progress with an ETA
        assert any(line.strip().startswith(f"{label}: 1/2 sentences") and "ETA" in line for line in logs), logs
    out = tmp_path / "q"
    assert (out / "report.html").is_file() and json.loads((out / "report.json").read_text())["task"] == "tts"
    assert [p["name"] for p in rep["passes"]] == ["tts_export", "tts_validate"]
    assert all(p["status"] == "applied" for p in rep["passes"]) and rep["budget_held"]
    assert rep["final"]["mcd"] < 0.05 and rep["final"]["mcd_dtw_sentences"] == 0     # float export = teacher
    assert Voice.load(out / "bundle").manifest["precision"] == "float32"
    assert _history_names(out / "bundle") == ["tts_export", "tts_validate"]
    assert len(rep["samples"]) == 2 and all((out / f).is_file() for s in rep["samples"] for f in s["files"].values())
    assert set(rep["comparison"]["systems"]) == {"optimized bundle", "teacher (PyTorch)"}

    logs.clear()
    again = optimize_tts(path, out, recipe="quality", n_eval=2, log=logs.append)       # resume: nothing redone
    assert sum("reused" in line for line in logs) == 2 and again["final"]["mcd"] == rep["final"]["mcd"]


def test_optimize_balanced_times_both_upsampler_forms(tmp_path, tiny_pt, fake_scorers):
    """``polyphase: "auto"`` (the cpu balanced recipe with that one option changed) times both upsampler forms."""
    from edgeflow.pipeline_tts import optimize_tts
    from edgeflow.runtime import Voice
    from edgeflow.targets import load_target

    _, path = tiny_pt
    target = load_target("cpu")
    next(p for p in target["recipes_tts"]["balanced"] if p["pass"] == "tts_quantize")["polyphase"] = "auto"
    (tmp_path / "cpu_auto.json").write_text(json.dumps(target))
    rep = optimize_tts(path, tmp_path / "b", target=str(tmp_path / "cpu_auto.json"), recipe="balanced", n_eval=2,
                       budget="wer=0.03,dnsmos=0.1,mcd=30", log=lambda *_: None)
    q = rep["passes"][1]
    assert q["name"] == "tts_quantize" and q["status"] == "applied", q
    assert set(q["details"]["decoder_seconds"]) == {"float_convtranspose", "int8_convtranspose", "float_polyphase",
                                                    "int8_polyphase"}
    from edgeflow.runtime import native
    k, w = rep["passes"][2], rep["passes"][3]
    assert k["name"] == "tts_kernels" and k["details"]["native"] is native.available(), k
    assert w["name"] == "tts_wave" and w["details"]["native"] is native.available(), w
    h = rep["passes"][4]
    assert h["name"] == "tts_head" and h["details"]["native"] is native.available(), h
    if native.available():                          # the recipe's search: two planes until 41 dB, or on every conv
        stage, cal = w["details"]["wave_stage"], w["details"]["wave_stage"]["calibration"]
        assert cal["min_snr_db"] == 41 and cal["steps"][0]["two_planes"] == [], cal
        assert cal["snr_db"] >= 41 or stage["two_planes"] == list(range(stage["convs"])), stage
        assert stage["two_planes"] == cal["steps"][-1]["two_planes"] and stage["upsampler"] is not None
    voice = Voice.load(tmp_path / "b" / "bundle")
    assert voice.manifest["precision"] == "int8" and voice.manifest["quantization"]["upsampler"] in (
        "polyphase", "convtranspose")
    import onnx
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "bundle" / "decoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert np.isfinite(rep["final"]["mcd"]) and rep["final"]["mcd"] > 0


def test_unmeetable_budget_rolls_quantize_back(tmp_path, tiny_pt, fake_scorers):
    from edgeflow.pipeline_tts import optimize_tts
    from edgeflow.runtime import Voice

    from edgeflow.targets import load_target

    _, path = tiny_pt
    target = load_target("cpu")        # the shipped fast recipe's bundle passes, on 2 calibration sentences
    fast = [p for p in target["recipes_tts"]["fast"] if p["pass"] not in ("tts_reduce_flows", "tts_kernels",
                                                                               "tts_wave", "tts_head", "tts_flow_int8",
                                                                               "tts_text_encoder")]
    assert [p["pass"] for p in fast] == ["tts_export", "tts_quantize", "tts_validate"]
    fast[1]["calib_sentences"] = 2
    target["recipes_tts"]["fast"] = fast
    (tmp_path / "t.json").write_text(json.dumps(target))
    rep = optimize_tts(path, tmp_path / "r", target=str(tmp_path / "t.json"), recipe="fast", n_eval=1,
                       budget="mcd=0.05", log=lambda *_: None)
    status = {p["name"]: p["status"] for p in rep["passes"]}
    assert status == {"tts_export": "applied", "tts_quantize": "rolled_back", "tts_validate": "applied"}
    assert rep["passes"][1]["violations"]["mcd"]["current"] > 0.05
    assert Voice.load(tmp_path / "r" / "bundle").manifest["precision"] == "float32"
    assert rep["budget_held"]


def test_shipped_voice_recipes_and_budgets():
    """fast = tts_reduce_flows (4 -> 2 couplings, distilled) + the bundle passes, gated on its own, looser budget
    (issue 15's fast goal: WER +0.05, DNSMOS -0.30); balanced and quality change no weights; the cpu target's
    balanced and fast end with the native flow (tts_kernels), the native INT8 waveform stage (tts_wave) and the
    native flow in INT8 (tts_flow_int8), both with the earlier decoder stages native too (tts_head; fast since
    2026-12-05, 23:30 UTC) and fast with the native text encoder (tts_text_encoder), before tts_validate; the cpu
    balanced quantizes the text encoder too."""
    from edgeflow.targets import list_targets, load_target, recipe_budget
    from edgeflow.validate.budget import parse_budget

    for name in list_targets():
        t = load_target(name)
        fast = t["recipes_tts"]["fast"]
        kernels = ["tts_kernels", "tts_wave", "tts_head", "tts_flow_int8"] if name == "cpu" else []
        text = ["tts_text_encoder"] if name == "cpu" else []             # fast only: balanced's gate rolled it back
        assert fast[0]["pass"] == "tts_reduce_flows" and fast[0]["n_flows"] == 2, name
        assert [p["pass"] for p in fast[1:]] == ["tts_export", "tts_quantize", *kernels, *text, "tts_validate"], name
        assert [p["pass"] for p in t["recipes_tts"]["balanced"]] == ["tts_export", "tts_quantize", *kernels,
                                                                     "tts_validate"], name
        assert [p["pass"] for p in t["recipes_tts"]["quality"]] == ["tts_export", "tts_validate"], name
        assert parse_budget(recipe_budget(t, "fast", tts=True)) == {"wer": 0.05, "dnsmos": 0.3, "mcd": 3.5}
        assert parse_budget(recipe_budget(t, "balanced", tts=True))["dnsmos"] == 0.1
        quant = next(p for p in t["recipes_tts"]["balanced"] if p["pass"] == "tts_quantize")
        assert quant.get("precision") != "int8" or quant["quantize_encoder"] is (name == "cpu"), name
        if name == "cpu":                          # balanced's stage search keeps more of the float stage than fast's
            wave = {r: next(p for p in t["recipes_tts"][r] if p["pass"] == "tts_wave") for r in ("balanced", "fast")}
            assert wave["balanced"]["min_snr_db"] > wave["fast"]["min_snr_db"], wave
            flow8 = {r: next(p for p in t["recipes_tts"][r] if p["pass"] == "tts_flow_int8") for r in ("balanced",
                                                                                                     "fast")}
            assert flow8["fast"]["res_skip"] is True and not flow8["balanced"].get("res_skip"), flow8
            for r in ("balanced", "fast"):               # the native voice's head wants INT8 upsamplers: no timing
                assert next(p for p in t["recipes_tts"][r] if p["pass"] == "tts_quantize")["polyphase"] is True, r


def test_cli_voice_errors(tmp_path, tiny_pt, capsys):
    _, path = tiny_pt
    for argv, needle in ((["--calib", str(tmp_path)], "do not apply to a voice"),
                         (["--max-drop", "pesq=0.1"], "do not apply to a voice"),
                         (["--recipe", "nope"], "unknown recipe"),
                         (["--n-eval", "21"], "--n-eval")):
        out = tmp_path / "o"
        code = main(["optimize", str(path), "-o", str(out)] + argv)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.slow
def test_stock_piper_voice_quality_recipe(tmp_path, capsys):
    """The real thing, smallest: the stock voice imported, exported, scored with the real pocketsphinx and DNSMOS,
    and measured side by side with itself in bare onnxruntime (about 2 minutes on 2 cores)."""
    from voice_helpers import piper_voice_path

    voice = piper_voice_path()
    out = tmp_path / "joe"
    assert main(["optimize", str(voice), "--recipe", "quality", "--n-eval", "1", "-o", str(out)]) == 0
    assert "budget held" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["kind"] == "piper" and rep["history"][0]["source"]["format"] == "piper-onnx"
    assert _history_names(out / "bundle")[0] == "import"
    stock = rep["comparison"]["systems"]["stock Piper (bare onnxruntime)"]
    assert stock["wer"] <= 0.5 and abs(stock["dnsmos"] - rep["final"]["dnsmos"]) < 0.5
    assert rep["final"]["mcd"] < 0.01                     # float bundle = the imported teacher, same noise


def test_interleaved_rtf_times_each_voice():
    import time

    from edgeflow.validate.tts_optimize import interleaved_rtf

    class Fake:
        sample_rate = 1000

        def __init__(self, delay):
            self.delay = delay

        def speak_stream(self, text, seed=0):
            time.sleep(self.delay)
            yield np.zeros(len(text) * 100, np.float32)          # len(text) / 10 seconds

    rtf = interleaved_rtf({"slow": Fake(0.04), "fast": Fake(0.01)}, ["abcd", "abcdefgh"], 0, {})
    assert rtf["slow"] == pytest.approx(0.08 / 1.2, rel=0.5) and rtf["fast"] < rtf["slow"]


def test_gpu_balanced_is_an_fp16_decoder(tmp_path, tiny_pt, fake_scorers):
    import onnx

    from edgeflow.pipeline_tts import optimize_tts
    from edgeflow.runtime import Voice

    _, path = tiny_pt
    rep = optimize_tts(path, tmp_path / "g", target="gpu", recipe="balanced", n_eval=1, log=lambda *_: None)
    assert [p["status"] for p in rep["passes"]] == ["applied"] * 3
    bundle = tmp_path / "g" / "bundle"
    assert Voice.load(bundle).manifest["precision"] == "float16"
    dec = onnx.load(str(bundle / "decoder.onnx")).graph
    half = {i.name for i in dec.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert half and all(n.startswith(("/dec/", "dec.")) or "dec" in n for n in half)   # HiFi-GAN weights only
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in dec.input)   # float32 I/O
    assert 0 < rep["final"]["mcd"] < 0.5
    # the device build: one engine per graph, profiles over ids and frames; a roofline estimate in the report
    plan = json.loads((bundle / "tensorrt.json").read_text())
    assert set(plan["trtexec"]) == {"encoder", "decoder"} and all(c["ok"] for c in plan["graph_check"].values())
    assert "--onnx=decoder.onnx" in plan["trtexec"]["decoder"] and "m_p:1x" in plan["trtexec"]["decoder"]
    assert (bundle / "build_engine.sh").stat().st_mode & 0o100
    est = rep["cost"]["target_estimate"]
    assert rep["cost"]["precision"] == "float16" and 0 < est["rtf_estimate"] < 1
    assert main(["build-engine", str(bundle), "--print-command"]) == 0


def test_build_engine_without_tensorrt_is_one_line(tmp_path, tiny_pt, capsys):
    """Here TensorRT is not installed: building a voice's engines fails with one line and exit 2."""
    from edgeflow.export.vits import export_vits_bundle

    model, _ = tiny_pt
    export_vits_bundle(model, tmp_path / "b")
    code = main(["build-engine", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "TensorRT is not installed" in err and len(err.strip().splitlines()) == 1


def test_library_optimize_takes_a_voice_and_refuses_vocoder_inputs(tmp_path, tiny_pt):
    """``edgeflow.pipeline.optimize`` is the one entry point: a voice goes to the text-to-speech pipeline, which
    takes none of the vocoder's data options (refused before anything is written)."""
    from edgeflow.core.errors import ConfigError
    from edgeflow.pipeline import optimize

    _, path = tiny_pt
    for kw in ({"data": str(tmp_path)}, {"calib": str(tmp_path)}, {"allow_skip": True}):
        with pytest.raises(ConfigError, match="do not apply to a voice"):
            optimize(path, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()

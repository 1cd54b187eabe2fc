"""Honest reports (issue 13 section 6): skipped passes said as such, a sanity section, bundle size, progress with
an ETA, report cosmetics, --clean-work, .gitignore; and the metric table / roofline precision of section 1."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.core.errors import ConfigError
from edgeflow.models import build_model
from edgeflow.models.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
DEMO = ROOT / "models" / "waveflow-demo"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random WaveFlow (its output is noise) and two voiced (sine) clips."""
    d = tmp_path_factory.mktemp("honest")
    torch.manual_seed(0)
    model = build_model("waveflow", {"n_flows": 2, "n_layers": 2, "height": 8, "channels": 8})
    save_model(d / "model.pt", model)
    clips = d / "clips"
    clips.mkdir()
    t = np.arange(int(0.6 * SR)) / SR
    for i, f0 in enumerate((140.0, 220.0)):
        save_wav(clips / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), SR)
    return d


def _target(d: Path, passes, budget) -> Path:
    base = json.loads((ROOT / "edgeflow" / "targets" / "cpu.json").read_text())
    base.update(name="cpu", recipes={"test": passes}, default_recipe="test", default_budget=budget)
    path = d / "target.json"
    path.write_text(json.dumps(base))
    return path


def _no_calibration(monkeypatch):
    """No calibration set anywhere (the repo's demo set would otherwise serve a model with its front-end)."""
    import edgeflow.passes.quantize as Q

    def none(*a, **k):
        raise ConfigError("quantize: no calibration set")

    monkeypatch.setattr(Q, "default_calibration", none)


RECIPE = [{"pass": "distill", "steps": 2}, {"pass": "freeze"}, {"pass": "export"}, {"pass": "validate"}]


def test_missing_training_data_refused_before_first_pass(tiny, tmp_path, monkeypatch, capsys):
    from edgeflow.cli.main import main

    _no_calibration(monkeypatch)
    out = tmp_path / "o"
    code = main(["optimize", str(tiny / "model.pt"), "--target", str(_target(tmp_path, RECIPE, {"mel_l1": 1.0})),
                 "--data", str(tiny / "clips"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "distill" in err and "--allow-skip" in err and "--calib" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """One full optimize run with --allow-skip and --clean-work, progress lines forced on."""
    import edgeflow.passes.quantize as Q
    import edgeflow.validate.progress as PR
    from edgeflow.cli.optimize import summary_line
    from edgeflow.pipeline import optimize

    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("run")
    mp.setattr(PR, "AFTER", 0.0)
    mp.setattr(PR, "EVERY", 0.0)
    mp.setattr(Q, "default_calibration", lambda *a, **k: (_ for _ in ()).throw(ConfigError("none")))
    logs = []
    try:
        report = optimize(tiny / "model.pt", d / "out", target=str(_target(d, RECIPE, {"mel_l1": 1.0})),
                          data=tiny / "clips", n_eval=2, threads=1, allow_skip=True, clean_work=True,
                          log=logs.append)
    finally:
        mp.undo()
    return {"report": report, "logs": logs, "out": d / "out", "summary": summary_line(report, d / "out")}


@pytest.mark.needs_eval("matplotlib")   # report.html's plots
def test_skipped_pass_is_said_everywhere(run):
    rec = {p["name"]: p for p in run["report"]["passes"]}
    assert rec["distill"]["status"] == "skipped"
    assert "training data" in rec["distill"]["reason"] and "--data" in rec["distill"]["enable_with"]
    saved = json.loads((run["out"] / "report.json").read_text())
    assert {p["name"]: p["status"] for p in saved["passes"]}["distill"] == "skipped"
    html = (run["out"] / "report.html").read_text()
    row = re.search(r"<tr><td>distill</td><td class='(\w+)'>(\w+)</td>", html)
    assert row and row.groups() == ("skip", "skipped")
    assert any("SKIPPED" in line for line in run["logs"])
    assert "SKIPPED: distill" in run["summary"]


@pytest.mark.needs_eval("matplotlib")   # report.html's plots
def test_sanity_section_warns_when_the_reference_is_not_speech(run):
    s = run["report"]["sanity"]
    assert s["voiced_fraction"]["ground_truth"] > 0.8          # the sine clips are voiced throughout
    assert s["voiced_fraction"]["unoptimized"] < 0.3           # a random flow's output is noise
    assert s["warning"] and "voiced" in s["warning"]
    html = (run["out"] / "report.html").read_text()
    assert "Sanity" in html and "class='warn'" in html and "WARNING" in run["summary"]


@pytest.mark.needs_eval("matplotlib")   # report.html's plots
def test_report_cosmetics(run):
    html = (run["out"] / "report.html").read_text()
    assert "{'mel_l1'" not in html and "mel_l1 may rise by 1 nats" in html       # budget in words
    assert "(estimate)" not in html                     # the cpu target has no roofline: no row of dashes
    assert html.count("<audio controls") == 6 and "<a href='samples/" not in html
    assert "shortest two lengths" in html               # why the PyTorch RTF curve stops at 4 s
    assert re.search(r"\d kB \(model\.pt\)", html) and re.search(r"\d kB \(bundle\)", html)
    assert "mel-cepstral" in html or "log-mel" in html   # metric definitions printed
    assert run["report"]["size"]["bundle"].endswith("kB")


@pytest.mark.needs_eval("matplotlib")   # report.html's plots
def test_progress_lines_have_an_eta(run):
    lines = run["logs"]
    for label in ("measuring cost", "scoring the final bundle", "scoring (unoptimized)"):
        assert any(line.strip().startswith(label) and ("ETA" in line or "done" in line) for line in lines), label
    assert any("ETA" in line for line in lines)


@pytest.mark.needs_eval("matplotlib")   # report.html's plots
def test_clean_work_removes_work_and_is_documented(run, tiny, tmp_path):
    assert not (run["out"] / ".work").exists() and (run["out"] / "bundle" / "manifest.json").is_file()
    from edgeflow.pipeline import _check_out_dir

    with pytest.raises(ConfigError, match="clean-work"):
        _check_out_dir(run["out"])
    readme = (ROOT / "README.md").read_text()
    assert "OUT/.work/" in readme and "--clean-work" in readme


def test_progress_unit():
    import edgeflow.validate.progress as PR

    lines = []
    old = PR.AFTER, PR.EVERY
    PR.AFTER = PR.EVERY = 0.0
    try:
        p = PR.Progress("work", 4, lines.append, "clips")
        for _ in range(4):
            p.advance()
    finally:
        PR.AFTER, PR.EVERY = old
    assert len(lines) == 4 and "1/4 clips" in lines[0] and "ETA" in lines[0] and lines[-1].endswith("done")
    quiet = []
    q = PR.Progress("work", 4, quiet.append)
    q.advance()
    assert quiet == []                                   # a quick step prints nothing


@pytest.mark.needs_eval("librosa")
def test_voiced_fraction_agrees_with_pyin():
    import librosa

    from edgeflow.audio.io import load_wav
    from edgeflow.validate.sanity import voiced_fraction

    audio, _ = load_wav(DEMO / "eval" / "EF00098.wav", SR)
    _, flag, _ = librosa.pyin(audio, fmin=60, fmax=400, sr=SR, frame_length=2048, hop_length=256)
    assert abs(voiced_fraction(audio, SR) - float(np.mean(flag))) < 0.2
    t = np.arange(SR) / SR
    assert voiced_fraction(0.3 * np.sin(2 * np.pi * 150 * t), SR) > 0.95
    assert voiced_fraction(0.1 * np.random.default_rng(0).standard_normal(SR), SR) < 0.05


def test_demo_fast_recipe_runs_every_pass_by_default():
    """README command 1 with --recipe fast: every pass finds its data (the shipped calibration set)."""
    from edgeflow.models.checkpoint import load_model
    from edgeflow.passes.base import make_config
    from edgeflow.pipeline import resolve_inputs
    from edgeflow.targets import load_target, recipe_passes

    model, info = load_model(DEMO / "model.pt")
    for target in ("cpu", "jetson-orin-nano"):
        tgt = load_target(target)
        for recipe in ("balanced", "fast"):
            cfgs = [make_config(s.pop("pass"), s) for s in recipe_passes(tgt, recipe)]
            plan = resolve_inputs(cfgs, model, info, DEMO / "eval", None, False, DEMO / "model.pt")
            assert plan["skips"] == {}
            for cfg, got in zip(cfgs, plan["inputs"]):
                if cfg.inputs().get("training_data") == "":
                    assert got["training_data"][0] in ("calibration", "corpus"), (target, recipe, cfg.pass_name)
    calib = ROOT / "calibration" / "waveflow-demo"
    assert sum(f.stat().st_size for f in calib.iterdir()) < 5e6
    assert "calibration/waveflow-demo" in (DEMO / "README.md").read_text()     # the card names it and its licence


def test_float_bundle_has_one_constant_per_value(tiny, tmp_path):
    import onnx

    from edgeflow.export.onnx_export import export_bundle
    from edgeflow.models.checkpoint import load_model

    model, _ = load_model(tiny / "model.pt")
    export_bundle(model, tmp_path / "b")
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    values = [n.attribute[0].SerializeToString() for n in graph.node if n.op_type == "Constant"]
    assert len(values) == len(set(values)) and len(values) < 100


def test_dedup_constants_keeps_the_function():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeflow.export.dedup import dedup_constants

    nodes, prev = [], "x"
    for i in range(5):
        nodes.append(helper.make_node("Constant", [], [f"c{i}"], value=numpy_helper.from_array(np.float32([2.0]))))
        nodes.append(helper.make_node("Mul", [prev, f"c{i}"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert dedup_constants(model) == {"constants_before": 5, "constants_after": 1}
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {"x": np.float32([1, 2, 3])})[0], np.float32([32, 64, 96]))


def test_gitignore_covers_venvs_and_run_outputs(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [".venv/bin/python", "venv/lib/x.py", "env/pyvenv.cfg", "out/demo/report.html", "runs/x/model.pt",
             "OUT/.work/state.json", "demo-out/.work/state.json"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(paths), r.stdout


def test_metric_table_is_the_one_vocabulary():
    from edgeflow.validate import metrics as M
    from edgeflow.validate import table as T
    from edgeflow.validate.budget import DIRECTION, parse_budget
    from edgeflow.validate.evaluate import EvalClip, score
    from edgeflow.audio.mel import MelConfig

    assert set(DIRECTION) == {k for k, m in T.TABLE.items() if m.budget}
    with pytest.raises(ConfigError):
        parse_budget("log_mel_l1=0.1")                  # one name: mel_l1
    assert "log_mel_l1" not in T.METRICS and "mel_l1" in T.METRICS
    cfg = MelConfig()
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    a = (0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t ** 2))).astype(np.float32)     # a sweep: time matters
    b = np.concatenate([np.zeros(700, np.float32), a[:-700]]) + 0.01 * rng.standard_normal(SR).astype(np.float32)
    clip = EvalClip("c", a, np.zeros((80, 86), np.float32))
    got = score([b], [clip], cfg, metrics=["mcd", "mcd_dtw", "mel_l1"])
    assert got["mcd"] == pytest.approx(M.mcd(a, b, SR, cfg=cfg))                   # frame-aligned
    assert got["mcd_dtw"] == pytest.approx(M.mcd(a, b, SR, use_dtw=True, cfg=cfg))  # DTW
    assert got["mcd_dtw"] < got["mcd"]
    assert got["mel_l1"] == pytest.approx(M.log_mel_l1(a, b, SR, cfg))


def test_roofline_uses_the_bundle_precision():
    from edgeflow.targets import load_target
    from edgeflow.validate.report import roofline

    tgt = load_target("jetson-orin-nano")
    f32, i8, f16 = (roofline(40e9, 1e6, tgt, p) for p in ("float32", "int8", "float16"))
    assert "int8" in i8["peak_used"] and "float16" in f16["peak_used"]
    assert i8["rtf_estimate"] < f16["rtf_estimate"] < f32["rtf_estimate"]
    for name in ("gpu", "jetson-agx-orin", "jetson-orin-nano"):
        peak = load_target(name)["peak"]
        assert {"int8_tops", "fp16_tflops", "fp32_tflops", "source"} <= set(peak)


def test_sanity_warning_conditions():
    """Each sign of a model that does not speak is named: few voiced frames, WER over 0.8, DNSMOS far below."""
    from edgeflow.validate.sanity import sanity_check

    t = np.arange(SR) / SR
    voiced = [(0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)]
    noise = [(0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)]
    ok = sanity_check(voiced, voiced, SR, {"wer": 0.3, "dnsmos": 2.9}, {"wer": 0.2, "dnsmos": 3.0})
    assert ok["warning"] is None and ok["voiced_fraction"]["unoptimized"] > 0.9
    bad = sanity_check(voiced, noise, SR, {"wer": 1.0, "dnsmos": 1.1}, {"wer": 0.36, "dnsmos": 2.95})
    for needle in ("voiced frames", "WER 1.00", "DNSMOS 1.10 against 2.95"):
        assert needle in bad["warning"]
    only_wer = sanity_check(voiced, voiced, SR, {"wer": 0.9}, {"wer": 0.1})
    assert "WER 0.90" in only_wer["warning"] and "voiced" not in only_wer["warning"]

"""The optimize pipeline on a tiny model: outputs, gate + rollback, resume, bad input, HTML rendering."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.models import build_model
from edgeflow.models.checkpoint import save_model
from edgeflow.passes import PassConfig, register_pass

ROOT = Path(__file__).resolve().parents[1]
SR = 22050


@dataclasses.dataclass
class WreckConfig(PassConfig):
    """Test-only pass: lowers every flow's log-s bias by 3, so the inverse is e^3 louder per flow (breaks quality)."""


def _wreck(artifact, cfg, ctx):
    from edgeflow.flows.waveflow import WaveFlowNet

    with torch.no_grad():
        for m in artifact.model.modules():
            if isinstance(m, WaveFlowNet):
                m.end.bias[0] -= 3.0
    return {}


register_pass("test_wreck", WreckConfig, _wreck)


@dataclasses.dataclass
class FlakyConfig(PassConfig):
    """Test-only pass: fails the first time (as an interrupt would), succeeds once its flag file exists."""

    flag: str = ""


def _flaky(artifact, cfg, ctx):
    flag = Path(cfg.flag)
    if not flag.exists():
        flag.write_text("1")
        raise KeyboardInterrupt("simulated interrupt")
    return {}


register_pass("test_flaky", FlakyConfig, _flaky)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    model = build_model("waveflow", {"n_flows": 2, "n_layers": 2, "height": 8, "channels": 8})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model(d / "model.pt", model)
    clips = d / "clips"
    clips.mkdir()
    t = np.arange(int(0.6 * SR)) / SR
    rng = np.random.default_rng(0)
    for i, f0 in enumerate((140.0, 220.0)):
        audio = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * t)) + 0.02 * rng.standard_normal(t.size)
        save_wav(clips / f"clip{i}.wav", audio.astype(np.float32), SR)
    return d


def _target(d: Path, passes, budget) -> Path:
    base = json.loads((ROOT / "edgeflow" / "targets" / "cpu.json").read_text())
    base.update(name=d.name, recipes={"test": passes}, default_recipe="test", default_budget=budget)
    path = d / f"target-{len(list(d.glob('target-*')))}.json"
    path.write_text(json.dumps(base))
    return path


def _optimize(model, out, target, data, extra=()):
    return subprocess.run([sys.executable, "-m", "edgeflow", "optimize", str(model), "--target", str(target),
                           "--data", str(data), "--n-eval", "2", "--threads", "1", "-o", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.mark.needs_eval("pesq", "pystoi", "speechmos", "matplotlib")      # scored and plotted in the report
def test_pipeline_outputs_gate_and_resume(tiny, tmp_path):
    flag = tmp_path / "flag"
    passes = [{"pass": "freeze"}, {"pass": "test_wreck"}, {"pass": "export"},
              {"pass": "test_flaky", "flag": str(flag)}, {"pass": "validate"}]
    target = _target(tmp_path, passes, {"mel_l1": 0.05})
    out = tmp_path / "out"
    from edgeflow.pipeline import optimize

    logs = []
    kwargs = dict(target=str(target), data=tiny / "clips", n_eval=2, threads=1, log=logs.append)
    with pytest.raises(KeyboardInterrupt):                    # interrupted at test_flaky
        optimize(tiny / "model.pt", out, **kwargs)
    assert flag.exists() and not (out / "report.json").exists()
    logs.clear()
    optimize(tiny / "model.pt", out, **kwargs)
    assert sum("done in an earlier run" in line for line in logs) == 3   # freeze, test_wreck, export not redone
    report = json.loads((out / "report.json").read_text())
    status = {p["name"]: p["status"] for p in report["passes"]}
    assert status["test_wreck"] == "rolled_back"               # it broke the mel_l1 budget
    assert status["export"] == status["validate"] == "applied"
    assert report["budget_held"] is True
    q = report["quality"]["optimized_vs_ground_truth"]
    assert q["snr_vs_ref"] > 60                                # the wreck was undone: bundle = reference
    for key in ("pesq", "stoi", "mel_l1", "dnsmos"):
        assert np.isfinite(q[key])
    assert report["cost"]["rtf_by_length"]["4"]["median"] > 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert [h["name"] for h in manifest["history"]][-5:] == ["freeze", "test_wreck", "export", "test_flaky", "validate"]
    assert (out / "report.html").stat().st_size > 10000
    assert len(list((out / "samples").glob("*.wav"))) == 6


@pytest.mark.parametrize("args,needle", [
    (["--target", "mars-rover"], "unknown target"),
    (["--recipe", "warp"], "unknown recipe"),
    (["--max-drop", "pesq=lots"], "not a number"),
    (["--max-drop", "loudness=1"], "unknown metric"),
])
def test_bad_options(tiny, tmp_path, args, needle):
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "edgeflow", "optimize", str(tiny / "model.pt"), "--data",
                        str(tiny / "clips"), "-o", str(out), *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_dirs(tiny, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.txt").write_text("mine")
    r = _optimize(tiny / "model.pt", busy, "cpu", tiny / "clips")
    assert r.returncode == 2 and "holds something else" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["thesis.txt"]
    empty = tmp_path / "noaudio"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    out = tmp_path / "o2"
    r = _optimize(tiny / "model.pt", out, "cpu", empty)
    assert r.returncode == 2 and "no audio" in r.stderr and not out.exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
@pytest.mark.needs_eval("matplotlib")
def test_report_renders_in_chromium(tmp_path):
    from edgeflow.audio.mel import MelConfig
    from edgeflow.validate.evaluate import EvalClip
    from edgeflow.validate.html import render_html

    cfg = MelConfig()
    t = np.arange(SR) / SR
    gt = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    clip = EvalClip("c", gt, np.zeros((80, 86), np.float32))
    rtf = {"1": {"median": 0.5}, "4": {"median": 0.4}}
    report = {"quality": {"unoptimized_vs_ground_truth": {"pesq": 3.0}, "optimized_vs_ground_truth": {"pesq": 2.9}},
              "cost": {"rtf_by_length": rtf, "reference_rtf_by_length": rtf, "parameters": 10,
                       "flops_per_audio_second": 1e9, "target_estimate": None},
              "budget_held": True, "budget": {}, "size": {"model_pt_bytes": 1, "bundle_bytes": 2}, "target": "cpu",
              "model": "m.pt", "created": "now", "passes": [], "samples": []}
    render_html(tmp_path / "report.html", report, clip, gt * 0.9, gt * 0.8, cfg)
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'prof'}", "--window-size=1000,1400", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    img = mpimg.imread(str(shot))
    assert img.shape[0] > 500 and img.shape[1] > 500
    assert img[..., :3].std() > 0.05                         # not a blank page
    assert (img[..., :3].mean(axis=2) < 0.3).mean() > 0.002   # dark text / spectrogram pixels present


@pytest.mark.needs_eval("pesq", "pystoi", "matplotlib")
def test_bench_command(tiny, tmp_path):
    """``edgeflow bench``: a model.pt, then its bundle against the model; bad input exits 2 and writes nothing."""
    from edgeflow.validate.export import export_bundle
    from edgeflow.models.checkpoint import load_model

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "edgeflow", "bench", *map(str, args), "--n-eval", "2",
                               "--threads", "1"], capture_output=True, text=True, cwd=ROOT, timeout=900)

    out = tmp_path / "rep"
    r = bench(tiny / "model.pt", "--data", tiny / "clips", "-o", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["cost"]["parameters"] == sum(p.numel() for p in load_model(tiny / "model.pt")[0].parameters())
    assert report["cost"]["rtf_by_length"]["4"]["median"] > 0
    vs_ref = report["quality"]["optimized_vs_ground_truth"]
    assert vs_ref["snr_vs_ref"] > 60                        # the exported bundle = the eager model, same noise
    assert np.isfinite(report["quality"]["optimized_vs_ground_truth"]["pesq"])
    assert (out / "report.html").stat().st_size > 10000 and list((out / "samples").glob("*.wav"))

    model, _ = load_model(tiny / "model.pt")
    with torch.no_grad():                                   # a different model: the comparison must notice
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_bundle(model, tmp_path / "other")
    out2 = tmp_path / "rep2"
    r = bench(tmp_path / "other", "--against", tiny / "model.pt", "--data", tiny / "clips", "-o", out2)
    assert r.returncode == 0, r.stderr
    snr = json.loads((out2 / "report.json").read_text())["quality"]["optimized_vs_ground_truth"]["snr_vs_ref"]
    assert snr < vs_ref["snr_vs_ref"] - 20

    for args, needle in [((tmp_path / "nothing.pt", "--data", tiny / "clips"), "not found"),
                         ((tiny / "model.pt", "--data", tmp_path), "no audio"),
                         ((tiny / "model.pt", "--data", tiny / "clips", "--target", "mars"), "unknown target")]:
        bad = tmp_path / "bad"
        r = bench(*args, "-o", bad)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and not bad.exists()


def test_optimize_threads_apply_to_torch_too(monkeypatch):
    """--threads bounds torch's threads as well as onnxruntime's (distillation in a pass is torch work)."""
    import torch

    import edgeflow.pipeline
    from edgeflow.cli.main import main

    seen = {}

    def fake_optimize(*args, **kwargs):
        seen.update(torch=torch.get_num_threads(), ort=kwargs["threads"])
        return {"quality": {"optimized_vs_ground_truth": {"pesq": 1.0}}, "budget_held": True,
                "cost": {"rtf_by_length": {"4": {"median": 0.5}}}}

    monkeypatch.setattr(edgeflow.pipeline, "optimize", fake_optimize)
    torch.set_num_threads(1)
    assert main(["optimize", "m.pt", "--threads", "2", "-o", "out"]) == 0
    assert seen == {"torch": 2, "ort": 2}

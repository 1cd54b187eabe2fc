"""Compression: structured pruning, flow/height/layer reduction, distillation (loss falls, exact resume
after SIGKILL), the passes' bad-input errors, and a prune + distill + export recipe through optimize()."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeflow.audio.io import save_wav
from edgeflow.compress.distill import DistillSettings, Distiller, segment_length
from edgeflow.compress.data import from_wav_folder, resolve_source
from edgeflow.compress.layers import nets
from edgeflow.compress.prune import _parts, prune_model
from edgeflow.compress.reduce import drop_layers, keep_flows, set_height
from edgeflow.compress.student import make_student
from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.validate.export import export_bundle
from edgeflow.models.base import count_parameters
from edgeflow.models.checkpoint import load_model, save_model
from edgeflow.passes import Artifact, PassContext, apply_pass
from edgeflow.passes.base import make_config
from edgeflow.validate.cost import flops_per_second_of_audio
from export_helpers import HOP, N_MELS, SR, tiny_model

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["waveflow", "waveglow"]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> Path:
    """Four 1 s synthetic clips at the tiny models' 8 kHz (a training folder for distillation)."""
    d = tmp_path_factory.mktemp("wavs")
    t = np.arange(SR) / SR
    rng = np.random.default_rng(0)
    for i in range(4):
        audio = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t * (1 + 0.2 * t)) + 0.02 * rng.standard_normal(SR)
        save_wav(d / f"c{i}.wav", audio.astype(np.float32), SR)
    return d


def _xm(frames=4, batch=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(batch, frames * HOP, generator=g, dtype=dtype),
            torch.randn(batch, N_MELS, frames, generator=g, dtype=dtype) - 5)


def _silence_channels(model, k):
    """Zero the weights reading k residual, gate and skip channels of every net: those channels do nothing."""
    with torch.no_grad():
        for net in nets(model):
            p = _parts(net)
            for conv in p["res_in"]:
                conv.parametrizations.weight.original1[:, :k] = 0
            for readers in p["gate_read"]:
                for conv in readers:
                    conv.parametrizations.weight.original1[:, p["C"] - k:] = 0
            p["end"].weight[:, 1:k + 1] = 0
    return model


# -- pruning ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_ratio_zero_changes_nothing(family):
    model = tiny_model(family)
    pruned, info = prune_model(model, 0.0)
    x, mel = _xm(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(pruned(x, mel)[0], model(x, mel)[0])
        assert torch.equal(pruned.inverse(x, mel)[0], model.inverse(x, mel)[0])
    assert pruned.config == model.config and info["to"] == info["from"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_silent_channels_is_exact(family):
    """Channels whose readers are zero score 0, are the ones removed, and the output does not change."""
    model = _silence_channels(tiny_model(family).double(), 2)
    width = model.config.channels if family == "waveflow" else model.config.wn_channels
    pruned, info = prune_model(model, 2 / width)
    assert info["to"] == width - 2 and type(pruned) is type(model)
    x, mel = _xm()
    with torch.no_grad():
        for a, b in ((model(x, mel), pruned(x, mel)), (model.inverse(x, mel), pruned.inverse(x, mel))):
            assert torch.allclose(a[0], b[0], atol=1e-12) and torch.allclose(a[1], b[1], atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_smaller_and_exports(family, tmp_path, wavs):
    model = tiny_model(family)
    data = from_wav_folder(wavs, model.config.mel, 512, 0, 2)
    batches = [data.batch(i, 2) for i in range(2)]
    pruned, info = prune_model(model, 0.5, batches=batches)
    assert type(pruned) is type(model) and "activation" in info["score"]
    assert count_parameters(pruned) < count_parameters(model)
    assert flops_per_second_of_audio(pruned) < flops_per_second_of_audio(model)
    # a checkpoint round trip rebuilds the same model from the new config
    save_model(tmp_path / "p.pt", pruned)
    loaded, _ = load_model(tmp_path / "p.pt")
    x, mel = _xm(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.inverse(x, mel)[0], pruned.inverse(x, mel)[0])
    manifest = export_bundle(pruned, tmp_path / "bundle")
    assert manifest["validation"]["passed"] and manifest["config"] == pruned.config.to_dict()


def test_prune_keeps_weight_norm_state():
    from edgeflow.compress.layers import has_weight_norm
    from edgeflow.export.freeze import freeze_model

    model = tiny_model("waveflow")
    assert has_weight_norm(prune_model(model, 0.25)[0])
    frozen = freeze_model(tiny_model("waveflow"))
    pruned, _ = prune_model(frozen, 0.25)
    assert not has_weight_norm(pruned)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half", float("nan")])
def test_prune_ratio_outside_range_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match=r"ratio must be a number in \[0, 1\)"):
        make_config("prune", {"ratio": ratio})
    with pytest.raises(ConfigError):
        prune_model(tiny_model("waveflow"), ratio)


# -- flow / height / layer reduction -----------------------------------------------------------------------------
REDUCTIONS = [
    ("waveflow", lambda m: keep_flows(m, 1, "spread")[0]),
    ("waveflow", lambda m: keep_flows(m, 1, "first")[0]),
    ("waveflow", lambda m: set_height(m, 4)[0]),
    ("waveflow", lambda m: drop_layers(m, 1)[0]),
    ("waveglow", lambda m: keep_flows(m, 2, "spread")[0]),
    ("waveglow", lambda m: keep_flows(m, 3, "last")[0]),
    ("waveglow", lambda m: drop_layers(m, 1)[0]),
]


@pytest.mark.parametrize("family,reduce", REDUCTIONS)
def test_reduced_model_is_invertible_with_exact_logdet(family, reduce):
    model = reduce(tiny_model(family, n_flows=4) if family == "waveflow" else tiny_model(family, n_flows=4))
    model = model.double()
    x, mel = _xm()
    with torch.no_grad():
        z, ld = model(x, mel)
        back, ld_inv = model.inverse(z, mel)
    assert (back - x).abs().max() < 1e-9
    assert torch.allclose(ld_inv, -ld, atol=1e-9)
    xs, ms = _xm(frames=1, batch=1)
    jac = torch.autograd.functional.jacobian(lambda a: model(a, ms)[0], xs).reshape(xs.numel(), xs.numel())
    assert torch.allclose(model(xs, ms)[1][0], torch.linalg.slogdet(jac)[1], atol=1e-8)


def test_keep_flows_carries_weights_and_row_orders(tmp_path):
    model = tiny_model("waveflow", n_flows=4)
    reduced, info = keep_flows(model, 2, "last")
    assert info["kept"] == [2, 3] and reduced.config.n_flows == 2
    for j, i in enumerate(info["kept"]):
        new, old = reduced.flows.blocks[j], model.flows.blocks[i]
        assert torch.equal(new.permute.perm, old.permute.perm)
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))
    save_model(tmp_path / "r.pt", reduced)          # the orders live in the config: a round trip keeps them
    loaded, _ = load_model(tmp_path / "r.pt")
    x, mel = _xm(dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(x, mel)[0], reduced(x, mel)[0])


def test_waveglow_flow_count_that_breaks_early_outputs_is_refused():
    from edgeflow.compress.reduce import count_for_fraction, flow_counts

    model = tiny_model("waveglow", n_flows=4)     # early output every 2 flows: 2 stages
    with pytest.raises(ConfigError, match="valid counts: 2, 3, 4"):
        keep_flows(model, 1)
    assert flow_counts(model) == [2, 3, 4] and count_for_fraction(model, 0.25) == 2
    assert count_for_fraction(tiny_model("waveflow", n_flows=6), 0.5) == 3


def test_passes_without_training_data_leave_the_model_unchanged(tmp_path, wavs):
    model = tiny_model("waveflow")
    ctx = PassContext(work_dir=tmp_path, data_dir=wavs, progress=False)      # held-out clips only
    for name, opts in (("prune", {"finetune": {"steps": 2}}), ("distill", {"steps": 2}),
                       ("reduce_flows", {"n_flows": 1, "finetune": {"steps": 2}})):
        art = Artifact(model=model, reference=model)
        rec = apply_pass(art, make_config(name, opts), ctx)
        assert "needs training data" in rec["details"]["skipped"] and art.model is model
    with pytest.raises(ConfigError, match="not found"):
        apply_pass(Artifact(model=model, reference=model),
                   make_config("distill", {"data": str(tmp_path / "nowhere")}), ctx)


# -- students and bad input ------------------------------------------------------------------------------------------
def test_student_bigger_than_teacher_is_a_config_error():
    model = tiny_model("waveflow")
    with pytest.raises(ConfigError, match="bigger than the teacher"):
        make_student(model, {"channels": 16})
    with pytest.raises(ConfigError, match="unknown key"):
        make_student(model, {"chanels": 4})


def test_student_from_teacher_combines_reductions():
    model = tiny_model("waveflow", n_flows=4)
    student, info = make_student(model, {"n_flows": 2, "channels": 4, "n_layers": 1})
    assert (student.config.n_flows, student.config.channels, student.config.n_layers) == (2, 4, 1)
    assert [list(s) for s in info["steps"]] == [["keep_flows"], ["drop_layers"], ["prune"]]


def test_distill_pass_replaces_the_model_with_the_student(tmp_path, wavs):
    model = tiny_model("waveflow", n_flows=4)
    art = Artifact(model=model, reference=model)
    cfg = make_config("distill", {"student": {"channels": 4, "n_flows": 2}, "steps": 4, "segment": 512,
                                  "valid_every": 2, "data": str(wavs)})
    rec = apply_pass(art, cfg, PassContext(work_dir=tmp_path, progress=False))
    assert (art.model.config.channels, art.model.config.n_flows) == (4, 2) and art.reference is model
    d = rec["details"]
    assert d["after"]["parameters"] < d["before"]["parameters"] and d["training"]["steps"] == 4
    assert d["training"]["valid_distance_best"] <= d["training"]["valid_distance_before"]
    with pytest.raises(ConfigError, match="bigger than the current model"):
        apply_pass(art, make_config("distill", {"student": {"n_flows": 3}, "data": str(wavs)}),
                   PassContext(work_dir=tmp_path, progress=False))


def test_teacher_of_another_family_is_a_checkpoint_error(tmp_path, wavs):
    save_model(tmp_path / "glow.pt", tiny_model("waveglow"))
    art = Artifact(model=tiny_model("waveflow"), reference=tiny_model("waveflow"))
    ctx = PassContext(work_dir=tmp_path / "work", progress=False)
    cfg = make_config("distill", {"teacher": str(tmp_path / "glow.pt"), "steps": 1, "data": str(wavs)})
    with pytest.raises(CheckpointError, match="waveglow model, expected waveflow"):
        apply_pass(art, cfg, ctx)


def test_distillation_data_is_never_the_held_out_folder(tmp_path, wavs):
    with pytest.raises(ConfigError, match="needs training data"):
        resolve_source("", data_dir=wavs)                 # a folder of wavs there = held-out clips
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "metadata.csv").write_text("")
    assert resolve_source("", data_dir=wavs, train_data=corpus) == ("corpus", corpus)


# -- distillation ---------------------------------------------------------------------------------------------------
SETTINGS = dict(steps=24, segment=512, batch_size=2, lr=1e-3, valid_every=8, patience=0, ckpt_every=4,
                valid_segments=4)


def test_stft_loss_matches_the_metric():
    from edgeflow.audio.losses import RESOLUTIONS, mr_stft_loss
    from edgeflow.validate import metrics

    assert RESOLUTIONS == metrics.RESOLUTIONS
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 8192, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(1, 8192, generator=g, dtype=torch.float64)
    assert float(mr_stft_loss(b, a)) == pytest.approx(metrics.mr_stft_distance(a[0].numpy(), b[0].numpy()), rel=1e-3)
    assert float(mr_stft_loss(a, a)) == 0.0


def test_distillation_lowers_student_teacher_distance(tmp_path, wavs):
    teacher = tiny_model("waveflow")
    student, _ = prune_model(teacher, 0.5)
    s = DistillSettings(**SETTINGS)
    data = from_wav_folder(wavs, teacher.config.mel, segment_length(s, teacher), 0, 4)
    out = Distiller(teacher, student, data, s, tmp_path, progress=False, log=lambda m: None).run()
    assert out["steps"] == 24 and out["valid_distance_best"] < 0.7 * out["valid_distance_before"]
    assert out["first_step_seconds"] > 0 and out["estimated_seconds"] is not None


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from export_helpers import tiny_model
    from edgeflow.compress.distill import DistillSettings, Distiller, segment_length
    from edgeflow.compress.data import from_wav_folder
    from edgeflow.compress.prune import prune_model
    from edgeflow.models.checkpoint import save_model
    mode, work = sys.argv[1], sys.argv[2]
    teacher = tiny_model("waveflow")
    student, _ = prune_model(teacher, 0.5)
    s = DistillSettings(**{settings!r})
    data = from_wav_folder({wavs!r}, teacher.config.mel, segment_length(s, teacher), 0, 4)
    def hook(step):
        if mode == "kill" and step == 4:
            print("CKPT", flush=True)
            time.sleep(600)
    Distiller(teacher, student, data, s, work, progress=False, on_checkpoint=hook).run()
    save_model(work + "/student.pt", student)
""")


def test_killed_distillation_resumes_exactly(tmp_path, wavs):
    script = tmp_path / "run.py"
    settings = dict(SETTINGS, steps=12, valid_every=3, ckpt_every=2)
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), settings=settings, wavs=str(wavs)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], env=env, capture_output=True, text=True,
                                    timeout=600)
    res = run("full", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, str(script), "kill", str(tmp_path / "b")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = iter(proc.stdout.readline, "")
        assert any("CKPT" in line for line in lines)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert torch.load(tmp_path / "b" / "distill_state.pt", weights_only=True)["step"] == 4
    res = run("resume", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "student.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "a" / "distill_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "distill_state.pt", weights_only=True)
    assert sa["rows"] == sb["rows"] and sa["best"] == sb["best"]


# -- passes through the pipeline ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.needs_eval("pesq", "pystoi", "speechmos", "matplotlib")      # optimize() scores and plots its report
def test_optimize_with_reduce_prune_distill_recipe(tmp_path, wavs):
    """reduce_flows + prune (both fine-tuned) + distill + freeze + export + validate, gated, on a tiny model."""
    from edgeflow.pipeline import optimize

    save_model(tmp_path / "model.pt", tiny_model("waveflow", n_flows=4))
    ft = {"steps": 6, "segment": 512, "valid_every": 3, "ckpt_every": 3, "data": str(wavs)}
    target = json.loads((REPO / "edgeflow" / "targets" / "cpu.json").read_text())
    target.update(name="t", default_recipe="r", default_budget={"mel_l1": 10.0}, recipes={"r": [
        {"pass": "reduce_flows", "fraction": 0.5, "evaluate_counts": [1, 8], "finetune": ft},
        {"pass": "prune", "ratio": 0.25, "finetune": ft},
        dict(ft, **{"pass": "distill"}),
        {"pass": "freeze"}, {"pass": "export"}, {"pass": "validate"}]})
    (tmp_path / "t.json").write_text(json.dumps(target))
    report = optimize(tmp_path / "model.pt", tmp_path / "out", target=str(tmp_path / "t.json"), data=wavs,
                      n_eval=1, progress=False, log=lambda m: None)
    passes = {p["name"]: p for p in report["passes"]}
    assert all(passes[n]["status"] == "applied" for n in ("reduce_flows", "prune", "distill", "export"))
    manifest = json.loads((tmp_path / "out" / "bundle" / "manifest.json").read_text())
    assert manifest["config"]["n_flows"] == 2 and manifest["config"]["channels"] == 6
    hist = {h["name"]: h for h in manifest["history"]}
    assert set(hist["reduce_flows"]["details"]["quality_by_flow_count"]) == {"1", "2"}


def test_cpu_recipes_cut_the_demo_to_three_and_two_flows():
    """The shipped cpu recipes as bench/results/compress.md measured them: balanced 3 of the demo's 6 flows,
    fast 2 of 6; on a 12-flow WaveGlow (early outputs every 4) both fractions give counts it accepts."""
    from edgeflow.compress.reduce import count_for_fraction, flow_counts
    from edgeflow.targets import load_target

    recipes = load_target("cpu")["recipes"]
    frac = {r: next(p["fraction"] for p in recipes[r] if p["pass"] == "reduce_flows") for r in ("balanced", "fast")}
    demo = tiny_model("waveflow", n_flows=6)
    assert count_for_fraction(demo, frac["balanced"]) == 3 and count_for_fraction(demo, frac["fast"]) == 2
    glow = tiny_model("waveglow", n_flows=12, n_early_every=4)
    for f in frac.values():
        k = count_for_fraction(glow, f)
        assert k in flow_counts(glow) and k < 12


@pytest.mark.parametrize("family,key", [("waveflow", "n_layers"), ("waveglow", "wn_layers")])
def test_distill_layers_fraction_fits_any_depth(tmp_path, wavs, family, key):
    """layers_fraction keeps round(fraction x layers) of each flow's layers, for either family."""
    model = tiny_model(family, **{key: 3})
    art = Artifact(model=model, reference=model)
    cfg = make_config("distill", {"layers_fraction": 0.67, "steps": 1, "segment": 512, "valid_every": 0,
                                  "data": str(wavs)})
    rec = apply_pass(art, cfg, PassContext(work_dir=tmp_path / "a", progress=False))
    assert getattr(art.model.config, key) == 2 and rec["details"]["student"] == {key: 2}
    with pytest.raises(ConfigError, match="not both"):
        apply_pass(Artifact(model=model, reference=model),
                   make_config("distill", {"layers_fraction": 0.5, "student": {key: 1}, "data": str(wavs)}),
                   PassContext(work_dir=tmp_path / "b", progress=False))
    with pytest.raises(ConfigError, match="layers_fraction"):
        make_config("distill", {"layers_fraction": 1.0})

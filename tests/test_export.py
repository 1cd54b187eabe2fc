"""Tests of edgeflow.export: freezing, specs, ONNX export with parity validation, atomic bundles, CLI."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from edgeflow.cli.main import main
from edgeflow.core.errors import BundleError
from edgeflow.export import onnx_export
from edgeflow.export.freeze import freeze_model
from edgeflow.export.onnx_export import ExportValidationError, runtime_ir_version
from edgeflow.validate.export import export_bundle
from edgeflow.export.specs import SynthesisWrapper, families, get_spec
from edgeflow.runtime.bundle import read_manifest
from export_helpers import HOP, N_MELS, save_tiny, tiny_model

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["waveflow", "waveglow"]


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    family = request.param
    model = tiny_model(family)
    out = tmp_path_factory.mktemp(family) / "bundle"
    history = [{"name": "prune", "config": {"amount": 0.1}, "metrics": {}, "seconds": 1.5}]
    return family, model, out, export_bundle(model, out, history=history)


def _inputs(model, frames, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_MELS, frames, generator=g) * 2 - 5, torch.randn(batch, frames * HOP, generator=g)


@pytest.mark.parametrize("family,kw", [("waveflow", {}), ("waveglow", {}), ("waveglow", {"lu_conv": True})])
def test_frozen_inverse_equals_unfrozen(family, kw):
    model = tiny_model(family, **kw)
    frozen = freeze_model(copy.deepcopy(model))
    assert not any(parametrize.is_parametrized(m) for m in frozen.modules())
    assert not frozen.training
    if family == "waveglow":
        assert all(m.weight_inv is not None for m in frozen.modules() if hasattr(m, "weight_inv"))
    mel, z = _inputs(model, 12)
    with torch.no_grad():
        ref = model.inverse(z * 0.8, mel)[0]
        out = frozen.inverse(z * 0.8, mel)[0]
        again = model.inverse(z * 0.8, mel)[0]   # the original keeps working (weight norm intact)
    assert torch.max(torch.abs(ref - out)) < 1e-5
    assert torch.equal(ref, again)
    assert any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.mark.parametrize("factors", [[16, 16], [8, 8], [4, 2]])
def test_frozen_upsampler_phase_form_equals_transposed_conv(factors):
    from edgeflow.models.waveflow import UpsampleNet

    torch.manual_seed(0)
    net = UpsampleNet(factors)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    mel = torch.randn(2, 80, 9)
    net.requires_grad_(False)
    ref = net(mel)
    net.fuse()
    assert net.phased
    out = net(mel)
    assert out.shape == ref.shape == (2, 80, 9 * int(np.prod(factors)))
    assert torch.max(torch.abs(out - ref)) < 1e-5 * max(1.0, float(ref.abs().max()))


def test_frozen_upsampler_keeps_odd_factors_transposed():
    from edgeflow.models.waveflow import UpsampleNet

    net = UpsampleNet([3, 4])
    net.fuse()
    assert not net.phased


def test_fused_waveflow_equals_frozen():
    """fuse_for_export (upsampler phase form, end conv folded into skip convs): same inverse and forward."""
    from edgeflow.export.freeze import fuse_for_export
    from edgeflow.flows.waveflow import WaveFlowNet

    model = tiny_model("waveflow")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frozen = freeze_model(copy.deepcopy(model))
    fused = fuse_for_export(copy.deepcopy(frozen))
    nets = [m for m in fused.modules() if isinstance(m, WaveFlowNet)]
    assert nets and all(n.fused and all(l.skip_end.out_channels == 2 for l in n.layers) for n in nets)
    assert not any(getattr(m, "fused", False) for m in frozen.modules())     # the freeze pass does not fuse
    mel, z = _inputs(model, 12)
    with torch.no_grad():
        ref, out = frozen.inverse(z * 0.8, mel), fused.inverse(z * 0.8, mel)
        fwd_ref, fwd = frozen(z * 0.1, mel), fused(z * 0.1, mel)
    assert torch.max(torch.abs(ref[0] - out[0])) < 1e-5 and torch.allclose(ref[1], out[1], atol=1e-4)
    assert torch.max(torch.abs(fwd_ref[0] - fwd[0])) < 1e-5


def test_specs_registry():
    assert set(FAMILIES) <= set(families())
    for family in FAMILIES:
        spec = get_spec(family)
        assert spec.input_names == ("mel", "z", "sigma") and spec.output_names == ("audio",)
        assert 18 <= spec.opset <= 20 and spec.tolerance == 1e-4 and len(spec.validation_frames) == 3
        field = spec.receptive_field(tiny_model(family).config)
        assert field["left"] >= field["net_left"] > 0 and field["right"] >= field["net_right"] > 0
    model = tiny_model("waveflow")
    mel, z = _inputs(model, 5)
    with torch.no_grad():
        assert torch.equal(SynthesisWrapper(model)(mel, z, torch.tensor([0.5])), model.inverse(z * 0.5, mel)[0])


def test_export_parity_and_manifest(exported):
    family, model, out, manifest = exported
    val = manifest["validation"]
    assert val["passed"] and len(val["lengths"]) == 3
    assert [r["frames"] for r in val["lengths"]] == [8, 23, 50]
    assert all(r["max_abs_err"] < 1e-4 and r["passed"] for r in val["lengths"])
    assert read_manifest(out) == manifest
    assert manifest["format"] == "edgeflow.bundle" and manifest["format_version"] == 2
    assert manifest["family"] == family and manifest["precision"] == "float32" and manifest["opset"] == 18
    assert manifest["config"] == model.config.to_dict() and manifest["mel"] == model.config.mel.to_dict()
    assert manifest["sample_rate"] == model.config.mel.sample_rate
    assert manifest["history"][0]["name"] == "prune"
    assert [i["name"] for i in manifest["io"]["inputs"]] == ["mel", "z", "sigma"]
    assert manifest["io"]["inputs"][0]["shape"] == ["B", N_MELS, "T"]
    assert set(manifest["files"]) == {"model.onnx"}
    ctx = manifest["streaming"]["context_frames"]
    assert ctx["left"] > 0 and ctx["right"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "manifest.sha256", "model.onnx"]


def test_onnx_graph_checked_and_loadable(exported):
    import onnx
    import onnxruntime as ort

    _, model, out, manifest = exported
    graph = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(graph)
    assert graph.ir_version <= runtime_ir_version() and graph.ir_version == manifest["export"]["graph"]["ir_version"]
    assert manifest["export"]["graph"]["nodes"] == len(graph.graph.node)
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"Inverse", "Det"}
    if manifest["family"] == "waveflow":   # the upsampler is exported in phase form (see UpsampleNet.fuse)
        assert "ConvTranspose" not in ops
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    mel, z = _inputs(model, 17, batch=3, seed=5)   # another batch and length than the checks used
    got = sess.run(None, {"mel": mel.numpy(), "z": z.numpy(), "sigma": np.array([0.7], np.float32)})[0]
    with torch.no_grad():
        ref = model.inverse(z * 0.7, mel)[0].numpy()
    assert np.max(np.abs(got - ref)) < 1e-4


def test_waveflow_plain_graph(tmp_path):
    model = tiny_model("waveflow")
    plain = export_bundle(model, tmp_path / "plain", cached=False)
    assert plain["validation"]["passed"] and plain["export"]["cached"] is False
    assert all(r["max_abs_err"] < 1e-4 for r in plain["validation"]["lengths"])


def test_existing_bundle_refused_then_overwritten(tmp_path):
    model = tiny_model("waveglow")
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(model, out)
    assert (out / "keep").exists()
    export_bundle(model, out, overwrite=True)
    assert not (out / "keep").exists() and read_manifest(out)["family"] == "waveglow"


def test_failed_validation_leaves_nothing(tmp_path, monkeypatch):
    real = onnx_export.validate_parity

    def failing(*a, **k):
        res = real(*a, **k)
        res["lengths"][1].update(max_abs_err=0.5, passed=False)
        return dict(res, passed=False)

    monkeypatch.setattr(onnx_export, "validate_parity", failing)
    with pytest.raises(ExportValidationError, match="failed validation"):
        export_bundle(tiny_model("waveglow"), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_killed_export_leaves_no_bundle(tmp_path):
    out = tmp_path / "b"
    script = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "import torch; torch.set_num_threads(1)\n"
        "from export_helpers import tiny_model\n"
        "from edgeflow.export import onnx_export as oe\n"
        "def die(*a, **k):\n"
        "    assert os.listdir(os.path.dirname(sys.argv[1]))  # model.onnx is already in the temp dir\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "oe.validate_parity = die\n"
        "oe.export_bundle(tiny_model('waveglow'), sys.argv[1])\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not out.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())   # at most a hidden temp dir


def test_cli_export(tmp_path, capsys):
    model_pt = save_tiny(tmp_path / "model.pt", "waveglow")
    out = tmp_path / "bundle"
    assert main(["export", str(model_pt), "-o", str(out)]) == 0
    assert "parity max abs err" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["history"][0]["name"] == "train" and manifest["validation"]["passed"]
    assert main(["export", str(model_pt), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert main(["export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "b2").exists()


@pytest.mark.slow
def test_demo_recipe_waveflow_exports_and_loads(tmp_path):
    """The demo-sized WaveFlow (6 flows x 6 layers, h=16, ~20k-node unrolled graph): parity, and the
    runtime loads it in reasonable time (memory-reuse planning off for large graphs)."""
    import time

    from edgeflow.models import build_model
    from edgeflow.runtime import Synthesizer
    from edgeflow.train.recipe import load_recipe

    recipe = load_recipe("waveflow-demo")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(recipe.family, recipe.model).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".end." in name:
                    p.add_(0.02 * torch.randn_like(p))
    manifest = export_bundle(model, tmp_path / "demo")
    assert manifest["validation"]["passed"] and manifest["export"]["graph"]["nodes"] > 4000
    t0 = time.perf_counter()
    syn = Synthesizer.load(tmp_path / "demo", threads=1)
    assert time.perf_counter() - t0 < 120
    mel = np.random.default_rng(0).normal(-5, 2, (80, 20)).astype(np.float32)
    with torch.no_grad():
        ref = model.synthesize(torch.from_numpy(mel)[None], seed=1)[0].numpy()
    assert np.max(np.abs(syn.synthesize(mel, seed=1) - ref)) < 1e-4

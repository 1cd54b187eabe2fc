"""The voice pipeline gates passes that change the torch model (before ``tts_export``): scored in PyTorch, rolled
back (model restored) when they break the budget, saved so a resumed run starts from the changed model."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from edgeflow.passes.base import PASSES, PassConfig, register_pass
from test_optimize_tts import fake_scorers, tiny_pt  # noqa: F401  (fixtures)


@dataclasses.dataclass
class ScaleDecoderConfig(PassConfig):
    """Test pass: a new model whose decoder output conv is scaled by ``factor``."""

    factor: float = 1.0


def _scale(artifact, cfg, ctx):
    model = copy.deepcopy(artifact.model)
    with torch.no_grad():
        for p in model.dec.conv_post.parameters():
            p.mul_(cfg.factor)
    artifact.model = model
    return {"factor": cfg.factor}


if "test_scale_decoder" not in PASSES:
    register_pass("test_scale_decoder", ScaleDecoderConfig, _scale)


def _target(tmp_path, factor):
    from edgeflow.targets import load_target

    target = load_target("cpu")
    target["recipes_tts"]["quality"] = [{"pass": "test_scale_decoder", "factor": factor}, {"pass": "tts_export"}]
    path = tmp_path / f"t{factor}.json"
    path.write_text(json.dumps(target))
    return str(path)


def test_model_pass_kept_gated_and_resumed(tmp_path, tiny_pt, fake_scorers):  # noqa: F811
    from edgeflow.pipeline_tts import optimize_tts
    from edgeflow.runtime import Voice

    _, path = tiny_pt
    out, target = tmp_path / "k", _target(tmp_path, 1.01)
    rep = optimize_tts(path, out, target=target, recipe="quality", n_eval=2, budget="mcd=30", log=lambda *_: None)
    first = rep["passes"][0]
    assert first["status"] == "applied" and first["metrics"]["rtf_engine"] == "pytorch"
    assert 0 < first["metrics"]["mcd"] < 30                    # scored: the scaled decoder differs a little
    saved = sorted((out / ".work").glob("model-01-*.pt"))
    assert len(saved) == 1
    w = Voice.load(out / "bundle")                             # the export ran on the changed model
    assert w.manifest["precision"] == "float32"
    assert "does not produce intelligible speech" in rep["sanity"]["warning"]    # random weights: flagged
    page = (out / "report.html").read_text()
    assert "Sanity: does the unoptimized voice speak?" in page and "PyTorch model" in page
    logs = []
    again = optimize_tts(path, out, target=target, recipe="quality", n_eval=2, budget="mcd=30", log=logs.append)
    assert sum("reused" in line for line in logs) == 2
    assert again["final"]["mcd"] == pytest.approx(rep["final"]["mcd"])


def test_model_pass_breaking_the_budget_is_rolled_back(tmp_path, tiny_pt, fake_scorers):  # noqa: F811
    from edgeflow.pipeline_tts import optimize_tts

    _, path = tiny_pt
    out = tmp_path / "r"
    rep = optimize_tts(path, out, target=_target(tmp_path, 0.0), recipe="quality", n_eval=2, budget="mcd=2.5",
                       log=lambda *_: None)
    first, export = rep["passes"]
    assert first["status"] == "rolled_back" and first["violations"]["mcd"]["current"] > 2.5
    assert not list((out / ".work").glob("model-*.pt"))
    assert export["status"] == "applied" and rep["final"]["mcd"] < 0.05   # the export used the restored model

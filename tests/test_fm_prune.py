"""Pruning + distillation of a flow-matching voice's vector field (``fm_prune``, :mod:`edgeflow.passes.fm_prune`;
:mod:`edgeflow.compress.fm_field`, :mod:`edgeflow.compress.fm_field_distill`): the residual blocks' inner widths
are cut by importance, the narrowed field is distilled against the full one on the voice's own solver paths,
and the gate keeps the full field when the mel moves too far."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from edgeflow.compress.fm_field import prune_field, res_blocks, windows_from_feeds
from edgeflow.compress.fm_field_distill import FieldDistillSettings, distill_field, field_distance
from edgeflow.core.errors import ConfigError
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.models.checkpoint import load_model, save_model
from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
from edgeflow.passes.fm_nfe import calibration_ids
from edgeflow.passes.fm_quantize import record_feeds
from edgeflow.runtime import Voice
from test_fmtts_export import tiny_fmtts, tiny_vocoder

OPTS = {"calib_sentences": 3, "sentences": 2, "record_nfe": 4, "window": 8, "per_feed": 2, "steps": 40,
        "max_minutes": 0.0, "valid_every": 10, "rounds": 1, "threads": 1}


@pytest.fixture(scope="module")
def model():
    m = tiny_fmtts()
    torch.manual_seed(3)
    with torch.no_grad():                      # a trained field is not near zero: make every block matter
        for p in m.decoder.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fm_p") / "voice"
    export_fmtts_bundle(model, tiny_vocoder(), out)
    return out


@pytest.fixture(scope="module")
def windows(bundle):
    voice = Voice.load(bundle, threads=1)
    feeds = record_feeds(voice, calibration_ids(voice, 3), 0, nfe=4, solver="euler")
    return feeds, windows_from_feeds(feeds, 8, 2, seed=0)


def test_windows_pair_each_state_with_the_next_of_its_solve(windows):
    feeds, data = windows
    assert len(feeds) % 4 == 0 and len(data) == 2 * len(feeds)          # every sentence is >= 8 frames here
    ta, tb = data.ta.numpy(), data.tb.numpy()
    assert np.all(tb >= ta) and np.sum(tb > ta) == 3 * len(feeds) // 2     # the last step of a solve pairs itself
    x0, _, _, _ = data.at(torch.zeros(len(data)))
    x1, _, _, t1 = data.at(torch.ones(len(data)))
    assert torch.equal(x0, data.xa) and torch.equal(x1, data.xb) and torch.equal(t1, data.tb)
    # window 0 is a crop of the first call; its partner is the same frames of the second call of that solve
    first, a = feeds[0]["x"][0], data.xa[0].numpy()
    hits = [j for j in range(first.shape[1] - 7) if np.array_equal(first[:, j:j + 8], a)]
    assert hits and np.array_equal(feeds[1]["x"][0, :, hits[0]:hits[0] + 8], data.xb[0].numpy())
    assert float(data.ta[0]) == float(feeds[0]["t"][0]) < float(data.tb[0]) == float(feeds[1]["t"][0])
    with pytest.raises(ConfigError, match="frames long"):
        windows_from_feeds(feeds, 100000, 1)


def test_guided_solves_give_windows_of_both_rows(bundle):
    voice = Voice.load(bundle, threads=1)
    feeds = record_feeds(voice, calibration_ids(voice, 2), 0, nfe=2, solver="euler", guidance=1.0)
    assert all(f["x"].shape[0] == 2 for f in feeds)
    data = windows_from_feeds(feeds, 8, 1, seed=0)
    assert len(data) == 2 * len(feeds)                                  # one window per row and call
    conditional = data.cond.abs().sum(dim=(1, 2)) > 0
    assert int(conditional.sum()) == len(feeds)                         # the zeroed condition: the other half
    for k in range(0, len(data), 2):                                   # row 0 conditional, row 1 not
        assert bool(conditional[k]) and not bool(conditional[k + 1])


def test_pruning_keeps_the_important_channels(model, windows):
    _, data = windows
    field = copy.deepcopy(model.decoder)
    name, block = res_blocks(field)[0]
    with torch.no_grad():
        block.conv2.weight[:, :4] = 0.0                       # channels 0-3 of the first block feed nothing
    inner = block.conv2.in_channels
    pruned, info = prune_field(field, inner - 4, data)
    got = dict(res_blocks(pruned))[name]
    assert got.conv1.out_channels == got.conv2.in_channels == got.norm1.gamma.numel() == inner - 4
    assert torch.equal(got.conv1.weight, block.conv1.weight[4:])           # exactly the dead ones went
    assert torch.equal(got.time.weight, block.time.weight[4:])
    assert info["width"] == inner - 4 and info["blocks"] == len(res_blocks(field))
    full, _ = prune_field(field, inner, data)                               # keeping all is the same function
    x, cond, mask, t = data.take(torch.arange(4)).at(torch.full((4,), 0.3))
    with torch.no_grad():
        assert torch.allclose(full(x, cond, mask, t), field(x, cond, mask, t), atol=1e-6)
        assert pruned(x, cond, mask, t).shape == x.shape
    with pytest.raises(ConfigError, match="width"):
        prune_field(field, inner + 1, data)


def test_distillation_fits_the_pruned_field_to_the_teacher(model, windows):
    _, data = windows                              # its own data held out too: the objective must fall on it
    teacher = copy.deepcopy(model.decoder).eval()
    student, _ = prune_field(teacher, 8, data)
    before = field_distance(student, teacher, data)
    summary = distill_field(student, teacher, data, data, FieldDistillSettings(steps=80, max_minutes=0,
                            valid_every=20, lr=2e-3, threads=1), progress=False, log=None)
    assert summary["valid_before"] == pytest.approx(before, rel=1e-4)
    assert summary["valid_best"] < 0.5 * before
    assert field_distance(student, teacher, data) == pytest.approx(summary["valid_best"], rel=1e-4)
    assert [r[0] for r in summary["valid_curve"]] == [0, 20, 40, 60, 80]


def run_pass(model, bundle, tmp_path, **opts):
    art = Artifact(model=model, reference=model, bundle_dir=bundle)
    rec = apply_pass(art, make_config("fm_prune", dict(OPTS, **opts)), PassContext(work_dir=tmp_path, progress=False))
    return art, rec["details"]


def test_pass_writes_a_narrower_field_and_a_model_that_reloads(model, bundle, tmp_path):
    art, d = run_pass(model, bundle, tmp_path, max_mcd=50.0, require_speedup=False)
    assert d["applied"] is True and art.bundle_dir != bundle and d["width"] == 8 and d["width_before"] == 16
    assert art.model is not model and art.model.config.dec_inner == 8 and model.config.dec_inner == 0
    manifest = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert manifest["config"]["dec_inner"] == 8 and manifest["field_pruning"]["export"]["rel_err"] < 1e-4
    g = onnx.load(str(art.bundle_dir / "field.onnx"))
    shapes = {i.name: list(i.dims) for i in g.graph.initializer}
    assert any(s[:2] == [8, 16] for s in shapes.values())                 # a conv1 of 8 rows over the trunk
    voice = Voice.load(art.bundle_dir, threads=1)
    x = calibration_ids(voice, 1)[0]
    assert np.isfinite(voice.mel_ids(x, seed=1)).all()
    save_model(tmp_path / "pruned.pt", art.model)
    again, _ = load_model(tmp_path / "pruned.pt", family="fmtts")
    assert again.config.dec_inner == 8
    c = torch.randn(1, 33, 8)
    with torch.no_grad():
        assert torch.allclose(again.decoder(c[:, :32], c, torch.ones(1, 1, 8), torch.tensor([0.4])),
                              art.model.decoder(c[:, :32], c, torch.ones(1, 1, 8), torch.tensor([0.4])))


def test_tight_budget_keeps_the_full_field(model, bundle, tmp_path):
    art, d = run_pass(model, bundle, tmp_path, max_mcd=1e-9, steps=0)                  # steps 0: prune only
    assert d["applied"] is False and "MCD" in d["reason"] and art.bundle_dir == bundle and art.model is model
    assert d["distill"]["steps"] == 0 and d["distill"]["valid_best"] == pytest.approx(d["valid_mse_pruned"], 1e-4)
    assert not list(tmp_path.glob("bundle-*-fm_prune"))


def test_config_checks(tmp_path):
    for bad in ({"ratio": 0.0}, {"window": 6}, {"calib_sentences": 19, "sentences": 2}):
        with pytest.raises(ConfigError):
            make_config("fm_prune", bad)
    assert make_config("fm_prune", {}).refusal("vits")
    assert make_config("fm_prune", {"ratio": 0.5}).kept_width(128) == 64
    assert make_config("fm_prune", {"ratio": 0.7}).kept_width(16) == 8
    with pytest.raises(ConfigError, match="needs the fmtts model"):
        apply_pass(Artifact(), make_config("fm_prune", {}), PassContext(work_dir=tmp_path, progress=False))

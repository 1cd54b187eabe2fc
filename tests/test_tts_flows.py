"""The VITS flow passes (tts_reduce_flows, tts_duration) and their library code on a tiny random Vits: cuts,
WN pruning, distillation lowering its loss, checkpoint round trips, export parity with fewer couplings, a
narrower flow and the deterministic duration predictor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeflow.compress.vits_duration import (DurationDistillSettings, distill_duration, duration_error,
                                             sdp_targets, to_deterministic)
from edgeflow.compress.vits_flows import (FlowDistillSettings, chosen_couplings, distill_flow, flow_loss,
                                          keep_couplings, prune_flow, valid_batches)
from edgeflow.compress.vits_prior_data import (distillation_texts, phoneme_ids, split, teacher_utterances)
from edgeflow.core.errors import ConfigError
from edgeflow.models.vits.config import VitsConfig, from_hparams
from edgeflow.models.vits.flows import FlowCond
from edgeflow.models.vits.model import Vits
from edgeflow.passes.base import PASSES, Artifact, PassContext

RECIPE = Path(__file__).resolve().parents[1] / "edgeflow" / "recipes" / "vits-tiny.json"


def _tiny(**kw) -> Vits:
    d = json.loads(RECIPE.read_text(encoding="utf-8"))["model"]
    d.update(dict(n_flows=4, inter_channels=16, hidden_channels=16, filter_channels=32, n_layers=1, posterior_layers=1,
                  decoder=dict(d["decoder"], in_channels=16, upsample_initial_channel=16)), **kw)
    torch.manual_seed(0)
    model = Vits(VitsConfig(**d))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():               # zero-initialised coupling / spline outputs would make the flows trivial
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def teacher():
    return _tiny()


@pytest.fixture(scope="module")
def utts(teacher):
    ids = phoneme_ids(teacher, distillation_texts(10, 0))
    return teacher_utterances(teacher, ids, seed=5)


def test_chosen_couplings():
    assert chosen_couplings(4, 2, "first") == [0, 1]
    assert chosen_couplings(4, 2, "last") == [2, 3]
    assert chosen_couplings(4, 2, "spread") == [0, 3]
    assert chosen_couplings(4, 3, "spread") == [0, 2, 3] or chosen_couplings(4, 3, "spread") == [0, 1, 3]
    assert chosen_couplings(4, 1, "spread") == [0]
    assert chosen_couplings(4, 2, [3, 1]) == [1, 3]
    for bad in ((4, 5, "first"), (4, 0, "first"), (4, 2, [1, 1]), (4, 2, "middle")):
        with pytest.raises(ConfigError):
            chosen_couplings(*bad)


def test_distillation_texts_never_evaluation():
    from edgeflow.data.tts_text import sentences

    texts = distillation_texts(30, 0)
    assert len(texts) >= 30 and not set(texts) & set(sentences("evaluation"))


def test_keep_couplings_copies_weights(teacher):
    small = keep_couplings(teacher, [1, 3])
    assert small.config.n_flows == 2 and len(small.flow.flows) == 4
    for dst, src in ((0, 2), (2, 6)):
        for (k, a), (_, b) in zip(small.flow.flows[dst].state_dict().items(),
                                  teacher.flow.flows[src].state_dict().items()):
            assert torch.equal(a, b), k
    assert torch.equal(small.dec.conv_post.weight, teacher.dec.conv_post.weight)


def test_prune_flow_full_width_is_exact_and_narrow_runs(teacher):
    x, cond = torch.randn(2, 16, 30), FlowCond(torch.ones(2, 1, 30))
    same, info = prune_flow(teacher, 16)
    assert same.config.flow_hidden_channels is None and info["to"] == 16
    assert torch.allclose(same.flow.inverse(x, cond)[0], teacher.flow.inverse(x, cond)[0], atol=1e-5)
    narrow, info = prune_flow(teacher, 8)
    assert narrow.config.flow_hidden_channels == 8 and narrow.flow.flows[0].enc.in_layers[0].weight.shape[:2] == (16, 8)
    z, _ = narrow.flow.inverse(x, cond)
    back, ld = narrow.flow.forward(z, cond)                  # still invertible, volume preserving
    assert torch.allclose(back, x, atol=1e-5) and float(ld.abs().max()) == 0.0
    with pytest.raises(ConfigError):
        prune_flow(teacher, 17)


def test_prune_flow_drops_dead_channels_exactly(teacher):
    """Channels whose weights are zero are the ones pruned, and the output does not change."""
    import copy

    dead = copy.deepcopy(teacher)
    with torch.no_grad():
        for i in range(0, len(dead.flow.flows), 2):
            layer = dead.flow.flows[i]
            for conv in layer.enc.in_layers:            # residual channels 12..15 never read
                conv.parametrizations.weight.original1[:, 12:] = 0
            layer.pre.weight[12:] = 0
            layer.pre.bias[12:] = 0
            layer.post.weight[:, 12:] = 0               # skip channels 12..15 never read
            for conv in layer.enc.res_skip_layers:      # gate channels 12..15 never read
                conv.parametrizations.weight.original1[:, 12:] = 0
    narrow, _ = prune_flow(dead, 12)
    x, cond = torch.randn(1, 16, 25), FlowCond(torch.ones(1, 1, 25))
    assert torch.allclose(narrow.flow.inverse(x, cond)[0], dead.flow.inverse(x, cond)[0], atol=1e-5)


def test_config_field_round_trip():
    cfg = _tiny(flow_hidden_channels=8).config
    assert cfg.flow_hidden == 8 and VitsConfig.from_dict(cfg.to_dict()).flow_hidden_channels == 8
    assert from_hparams({"num_symbols": 10, "flow_hidden_channels": 64}).flow_hidden == 64
    assert VitsConfig().flow_hidden == 192
    with pytest.raises(ValueError):
        VitsConfig(flow_hidden_channels=0)


def test_teacher_utterances_match_synthesis(teacher, utts):
    u = utts[0]
    assert u.z.shape == u.z_p.shape and u.z_p.shape[0] == 16
    _, dur = teacher.synthesize(u.ids.tolist(), seed=u.seed, return_durations=True)
    c = teacher.config
    assert torch.equal(torch.ceil(torch.exp(u.logw) * c.length_scale).long(), dur)
    assert int(dur.sum()) == u.z.shape[1]


def test_flow_distillation_lowers_held_out_loss(teacher, utts):
    train, held = split(utts, 0.2, 0)
    student = keep_couplings(teacher, [0, 1])
    s = FlowDistillSettings(steps=40, lr=3e-3, batch=4, window=16, margin=4, valid_every=10, max_minutes=1)
    r = distill_flow(student, train, held, s, log=None, progress=False)
    assert r["held_out_after"]["mse"] < 0.8 * r["held_out_before"]["mse"]
    assert flow_loss(student.flow, valid_batches(held, s))["mse"] == pytest.approx(r["held_out_after"]["mse"])
    again = keep_couplings(teacher, [0, 1])                  # deterministic
    r2 = distill_flow(again, train, held, s, log=None, progress=False)
    assert r2["held_out_after"]["mse"] == r["held_out_after"]["mse"]


def test_duration_distillation_lowers_error(teacher, utts):
    s = DurationDistillSettings(filter_channels=16, samples=4, steps=60, lr=3e-3, batch=4, valid_every=10)
    train, held = split(sdp_targets(teacher, utts, s), 0.2, 0)
    student = to_deterministic(teacher, 16)
    assert not student.config.use_sdp and torch.equal(student.enc_p.emb.weight, teacher.enc_p.emb.weight)
    before = duration_error(student.dp, held)["mse"]
    r = distill_duration(student, train, held, s, log=None, progress=False)
    assert r["held_out"]["mse"] < 0.5 * before


def _ctx(tmp_path):
    return PassContext(work_dir=tmp_path)


def _apply(name, artifact, tmp_path, **opts):
    entry = PASSES.get(name)
    return entry.handler(artifact, entry.config(**opts), _ctx(tmp_path))


def test_passes_apply_and_round_trip(tmp_path, teacher):
    from edgeflow.export.vits import export_vits_bundle
    from edgeflow.models.checkpoint import load_model, save_model

    art = Artifact(model=teacher, reference=teacher)
    d = _apply("tts_reduce_flows", art, tmp_path, n_flows=2, flow_channels=8, sentences=4, steps=4, batch=2,
               window=16, margin=4, valid_every=2)
    assert d["couplings"] == {"before": 4, "after": 2, "kept": [0, 3]} and d["flow_channels"]["after"] == 8
    flops = d["gflops_per_audio_second"]
    assert flops["after"]["flow"] < flops["before"]["flow"] / 2
    assert flops["after"]["decoder"] == flops["before"]["decoder"]
    d = _apply("tts_duration", art, tmp_path, filter_channels=16, samples=2, sentences=4, steps=4, batch=2,
               valid_every=2)
    assert d["gflops_per_audio_second"]["after"]["duration"] < d["gflops_per_audio_second"]["before"]["duration"]
    assert "mae_log_duration_vs_sdp_sample" in d["held_out_vs_sdp"]
    model = art.model
    assert (model.config.n_flows, model.config.flow_hidden_channels, model.config.use_sdp) == (2, 8, False)
    with pytest.raises(ConfigError):
        _apply("tts_duration", art, tmp_path, sentences=4, steps=1)
    save_model(tmp_path / "m.pt", model)
    back, _ = load_model(tmp_path / "m.pt")
    ids = list(range(1, 30))
    assert torch.equal(back.synthesize(ids, seed=3), model.synthesize(ids, seed=3))
    manifest = export_vits_bundle(model, tmp_path / "bundle")
    assert manifest["validation"]["passed"]
    assert [i["name"] for i in manifest["io"]["encoder"]["inputs"]][-1] == "noise_w_z"
    import onnx

    assert [i.name for i in onnx.load(str(tmp_path / "bundle" / "model.onnx")).graph.input][-1] == "noise_w_z"


def test_passes_refuse_other_families_and_bad_configs(tmp_path):
    from edgeflow.models.family import get_family

    for name in ("tts_reduce_flows", "tts_duration"):
        cfg = PASSES.get(name).config(**({"n_flows": 1} if name == "tts_reduce_flows" else {}))
        assert "not a VITS" in cfg.refusal(get_family("waveflow"))
        assert cfg.refusal(get_family("vits")) is None
        with pytest.raises(ConfigError, match="not a VITS"):
            PASSES.get(name).handler(Artifact(model=torch.nn.Linear(1, 1)), cfg, _ctx(tmp_path))
    for bad in ({}, {"n_flows": 2, "fraction": 0.5}, {"n_flows": 2, "keep": "middle"}, {"n_flows": -1}):
        with pytest.raises(ValueError):
            PASSES.get("tts_reduce_flows").config(**bad)
    with pytest.raises(ValueError):
        PASSES.get("tts_duration").config(target="median")


def test_reduce_flows_on_a_voice_with_few_couplings_changes_nothing(tmp_path):
    model = _tiny(n_flows=2)
    art = Artifact(model=model, reference=model)
    d = _apply("tts_reduce_flows", art, tmp_path, n_flows=2, sentences=4, steps=1)
    assert d["couplings"] == {"before": 2, "after": 2} and "nothing to reduce" in d["note"]
    assert art.model is model                      # untouched: the pipeline neither scores nor saves it
    d = _apply("tts_reduce_flows", art, tmp_path, n_flows=1, sentences=4, steps=1, batch=2, window=16, margin=4)
    assert d["couplings"]["after"] == 1 and art.model is not model

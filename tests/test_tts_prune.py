"""The ``tts_prune`` pass (edgeflow/passes/tts_compress.py) on a tiny random VITS, and its data."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgeflow.core.errors import ConfigError
from edgeflow.models import vits
from edgeflow.models.family import get_family
from edgeflow.passes import PassContext, apply_pass
from edgeflow.passes.base import Artifact, make_config
from tests.test_vits_model import randomized, tiny_config
from tests.voice_helpers import tiny_id_map

FAST = dict(ratio=0.5, steps=3, valid_every=0, batch=2, sentences=2, seeds_per_sentence=1, window_frames=8,
            margin_frames=2, calib_windows=4, max_minutes=1.0, valid_fraction=0.5)


def _tiny():
    idm = tiny_id_map()
    torch.manual_seed(0)
    return randomized(vits.Vits(tiny_config(num_symbols=len(idm), phoneme_id_map=idm)))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    model = _tiny()
    art = Artifact(model=model, reference=model)
    rec = apply_pass(art, make_config("tts_prune", FAST), PassContext(work_dir=tmp_path_factory.mktemp("w"),
                                                                       progress=False))
    return model, art, rec


def test_pass_prunes_and_distills(pruned):
    model, art, rec = pruned
    new, d = art.model, rec["details"]
    assert new is not model and art.reference is model                 # teacher untouched
    assert new.config.decoder.widths() == [16, 8, 4, 2] == new.dec.config.widths()
    assert model.config.decoder.widths() == [32, 16, 8, 4] and model.config.decoder.channels is None
    assert d["decoder_widths"] == [[32, 16, 8, 4], [16, 8, 4, 2]]
    assert d["params"][1] < d["params"][0]
    dec0, dec1 = d["decoder_gflop_per_s"]
    assert dec1 == pytest.approx(get_family("vits").flops_breakdown(new.config)["decoder"] / 1e9, abs=1e-3)
    assert 0.2 < dec1 / dec0 < 0.3 and d["total_gflop_per_s"][1] < d["total_gflop_per_s"][0]
    assert d["distill"]["steps"] == 3 and d["distill"]["valid_best"] <= d["distill"]["valid_before"]
    assert d["windows"]["train"] > 0 and d["windows"]["valid"] > 0
    # everything but the decoder is the same model: same durations, same length of audio
    ids = list(range(3, 20))
    a, da = model.synthesize(ids, seed=1, return_durations=True)
    b, db = new.synthesize(ids, seed=1, return_durations=True)
    assert torch.equal(da, db) and a.shape == b.shape and torch.isfinite(b).all()
    for k, v in model.state_dict().items():
        if not k.startswith("dec."):
            assert torch.equal(v, new.state_dict()[k])


def test_pruned_voice_exports_at_parity(pruned, tmp_path):
    from edgeflow.export.vits import export_vits_bundle

    manifest = export_vits_bundle(pruned[1].model, tmp_path / "bundle")
    assert manifest["validation"]["passed"]
    assert manifest["config"]["decoder"]["channels"] == [16, 8, 4, 2]


def test_polyphase_rewrite_of_pruned_decoder(pruned):
    from edgeflow.export.vits_polyphase import to_phase_form
    from edgeflow.flows.coupling import remove_weight_norm

    dec = copy.deepcopy(pruned[1].model.dec)
    remove_weight_norm(dec)
    z = torch.randn(1, dec.config.in_channels, 13, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = dec(z)
        assert to_phase_form(dec) == 3
        out = dec(z)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-5


def test_windows_are_aligned_with_the_teacher():
    from edgeflow.compress.vits_decoder_data import cut_windows, sentence_ids, utterance_pair

    model = _tiny()
    ids = sentence_ids(model, "A short test.")[0]
    z, audio = utterance_pair(model, model, ids, seed=4)
    with torch.no_grad():
        assert torch.allclose(model.dec(z), audio, atol=1e-6)              # current == teacher: z is the teacher's
    zs, ys = cut_windows(z, audio, 8, model.config.hop_length, margin=2)
    hop = model.config.hop_length
    assert zs.shape[2] == 12 and ys.shape[2] == 8 * hop and zs.shape[0] == ys.shape[0] > 0
    assert torch.equal(zs[1], z[0, :, 4:16]) and torch.equal(ys[1, 0], audio[0, 0, 6 * hop:14 * hop])


def test_refusals():
    from edgeflow.models.family import FAMILIES

    cfg = make_config("tts_prune", {})
    assert cfg.refusal(FAMILIES.get("vits")) is None
    assert "not VITS" in cfg.refusal(FAMILIES.get("waveflow"))
    with pytest.raises(ConfigError, match="needs a VITS model"):
        apply_pass(Artifact(model=torch.nn.Linear(2, 2)), cfg, PassContext(work_dir=Path(".")))
    for bad in ({"ratio": 1.0}, {"ratio": -0.1}, {"sentences": 1}, {"window_frames": 0}, {"lr": 0}, {"nope": 1},
                {"refit_mode": "joint"}):
        with pytest.raises(ConfigError):
            make_config("tts_prune", bad)


def test_distillation_texts_exclude_evaluation():
    from edgeflow.compress.vits_decoder_data import distillation_texts
    from edgeflow.data.tts_text import sentences

    texts = distillation_texts(50, seed=0)
    assert len(texts) == len(set(texts)) == 50
    assert texts[:20] == sentences("distillation") and not set(texts) & set(sentences("evaluation"))


def test_distillation_loss_options_reach_the_decoder_distillation(tmp_path):
    opts = dict(FAST, adv_weight=0.5, fm_weight=1.0, disc_channels=4, keep="last", wave_weight=3.0)
    cfg = make_config("tts_prune", opts)
    s = cfg.settings()
    assert (s.adv_weight, s.fm_weight, s.disc_channels, s.keep, s.wave_weight) == (0.5, 1.0, 4, "last", 3.0)
    model = _tiny()
    art = Artifact(model=model, reference=model)
    d = apply_pass(art, cfg, PassContext(work_dir=tmp_path, progress=False))["details"]
    assert d["distill"]["steps"] == 3 and d["distill"]["kept"] == "last"
    with pytest.raises(ConfigError, match="needs a discriminator"):
        make_config("tts_prune", dict(FAST, fm_weight=1.0))
    with pytest.raises(ConfigError, match="wave_weight"):
        make_config("tts_prune", dict(FAST, wave_weight=-1.0))


def test_calibration_windows_are_drawn_across_the_training_set():
    """The ranking / refit windows come from the whole set (not its first sentences), in order, reproducibly."""
    from edgeflow.passes.tts_compress import calibration_batches

    cond = torch.arange(200, dtype=torch.float32).reshape(200, 1, 1).expand(200, 2, 3)
    batches = calibration_batches(cond, 64, seed=0)
    picked = torch.cat([b[:, 0, 0] for b in batches])
    assert [len(b) for b in batches] == [16] * 4 and len(set(picked.tolist())) == 64
    assert bool((picked[1:] > picked[:-1]).all()) and picked.max() > 150 and picked.min() < 50
    assert torch.equal(picked, torch.cat([b[:, 0, 0] for b in calibration_batches(cond, 64, seed=0)]))
    assert not torch.equal(picked, torch.cat([b[:, 0, 0] for b in calibration_batches(cond, 64, seed=1)]))
    assert sum(len(b) for b in calibration_batches(cond[:10], 64)) == 10

"""INT8 for the vocoder inside a flow-matching voice bundle (``fm_vocoder``, :mod:`edgeflow.passes.fm_vocoder`):
the HiFi-GAN graph is quantized with the vocoder recipe's machinery, calibrated on the voice's own mels; the gate
keeps the float vocoder when the audio moves too far, and the acoustic graphs are left untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeflow.core.errors import ConfigError, InputError
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
from edgeflow.passes.fm_nfe import calibration_ids
from edgeflow.passes.fm_vocoder import mel_windows
from edgeflow.quant.graph import quantized_nodes
from edgeflow.runtime import Voice
from test_fmtts_export import tiny_fmtts, tiny_vocoder

#: Every candidate conv in int8 (no search), a loose audio budget: the tiny random vocoder is not speech.
QUANT = {"precision": "int8", "method": "minmax", "activation_type": "uint8", "residual": True,
         "sensitivity": False, "max_mel_l1": None}
OPTS = {"calib_sentences": 2, "sentences": 2, "window": 8, "rounds": 1, "quantize": QUANT}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fm_v") / "voice"
    export_fmtts_bundle(tiny_fmtts(), tiny_vocoder(), out)
    return out


def run_pass(bundle, tmp_path, **opts):
    art = Artifact(bundle_dir=bundle)
    rec = apply_pass(art, make_config("fm_vocoder", dict(OPTS, **opts)), PassContext(work_dir=tmp_path, progress=False))
    return art, rec["details"]


def test_calibration_mels_are_the_voices_own(bundle):
    voice = Voice.load(bundle, threads=1)
    ids = calibration_ids(voice, 2)
    wins = mel_windows(voice, ids, 8)
    assert wins and all(w["mel"].shape[:2] == (1, voice.n_mels) and w["mel"].shape[2] <= 8 for w in wins)
    first = voice.mel_ids(ids[0], seed=0)
    assert np.array_equal(wins[0]["mel"][0], first[:, :wins[0]["mel"].shape[2]])


def test_int8_vocoder_applied_and_acoustic_graphs_untouched(bundle, tmp_path):
    art, d = run_pass(bundle, tmp_path, max_mcd=50.0, require_speedup=False)
    assert d["applied"] is True and d["quantized_nodes"] > 0 and d["residual_tensors"] > 0
    src = json.loads((bundle / "manifest.json").read_text())
    new = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert new["vocoder"]["precision"] == "int8" and new["vocoder"]["sha256"] == new["files"]["vocoder.onnx"]
    assert src["vocoder"]["precision"] == "float32"
    assert {k: new["files"][k] for k in ("model.onnx", "field.onnx")} == \
           {k: src["files"][k] for k in ("model.onnx", "field.onnx")}
    import onnx

    q = onnx.load(str(art.bundle_dir / "vocoder.onnx"))
    assert any("resblocks" in n for n in quantized_nodes(q))
    f, v = Voice.load(bundle, threads=1), Voice.load(art.bundle_dir, threads=1)
    mel = f.mel_ids(calibration_ids(f, 1)[0], seed=3)
    a, b = f.vocode(mel), v.vocode(mel)
    assert a.shape == b.shape == (mel.shape[1] * f.hop_length,) and np.isfinite(b).all()
    assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.5
    assert np.array_equal(f.mel_ids(calibration_ids(f, 1)[0], seed=3), v.mel_ids(calibration_ids(v, 1)[0], seed=3))


def test_tight_budget_keeps_the_float_vocoder(bundle, tmp_path):
    art, d = run_pass(bundle, tmp_path, max_mcd=1e-9)
    assert d["applied"] is False and "MCD" in d["reason"] and art.bundle_dir == bundle
    assert not list(tmp_path.glob("bundle-*-fm_vocoder"))            # nothing half-written left


def test_config_and_input_checks(bundle, tmp_path):
    with pytest.raises(ConfigError, match="precision must be int8"):
        make_config("fm_vocoder", {"quantize": {"precision": "float16"}})
    with pytest.raises(ConfigError, match="quantize"):
        make_config("fm_vocoder", {"quantize": {"no_such_option": 1}})
    with pytest.raises(ConfigError, match="no bundle"):
        apply_pass(Artifact(), make_config("fm_vocoder", {}), PassContext(work_dir=tmp_path, progress=False))
    with pytest.raises(InputError, match="mel must be"):
        Voice.load(bundle, threads=1).vocode(np.zeros((3, 4), np.float32))


def test_quantize_options_come_from_the_targets_hifigan_recipe():
    from edgeflow.passes.fm_vocoder import FALLBACK_QUANTIZE, quantize_options
    from edgeflow.targets import load_target

    cpu = load_target("cpu")
    step = next(dict(p) for p in cpu["families"]["hifigan"]["recipes"]["balanced"] if p["pass"] == "quantize")
    step.pop("pass")
    cfg = make_config("fm_vocoder", {})
    assert quantize_options(cfg, cpu) == step and step["residual"] is True
    assert quantize_options(cfg, {"families": {}}) == FALLBACK_QUANTIZE
    assert quantize_options(make_config("fm_vocoder", {"quantize": QUANT}), cpu) == QUANT


def test_prune_narrows_the_vocoder_refitted_on_the_voices_mels(bundle, tmp_path):
    """With ``prune`` and the HiFi-GAN model.pt the pipeline exported, the quantized graph is the narrower one;
    it vocodes the voice's mels close to the unpruned float vocoder (refit on those mels, no training)."""
    import onnx

    from edgeflow.models.checkpoint import save_model

    path = tmp_path / "hifigan.pt"
    save_model(path, tiny_vocoder())
    widths = {"stage-1": 0.5}
    art = Artifact(bundle_dir=bundle, info={"vocoder": str(path)})
    rec = apply_pass(art, make_config("fm_vocoder", dict(OPTS, prune=widths, max_mcd=50.0, require_speedup=False)),
                     PassContext(work_dir=tmp_path, progress=False))
    d = rec["details"]
    assert d["applied"] is True and d["prune"]["widths"] == widths and d["prune"]["params"][1] < d["prune"]["params"][0]
    assert "stage2 4 -> 2" in d["prune"]["groups"]                            # the last stage's stream
    new = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert new["vocoder"]["pruned"] == d["prune"]["groups"]
    q = onnx.load(str(art.bundle_dir / "vocoder.onnx"))
    last = [i for i in q.graph.initializer if "resblocks.4" in i.name and len(i.dims) == 3]   # last stage's
    assert last and all(i.dims[0] == i.dims[1] == 2 for i in last)
    f, v = Voice.load(bundle, threads=1), Voice.load(art.bundle_dir, threads=1)
    mel = f.mel_ids(calibration_ids(f, 1)[0], seed=0)
    a, b = f.vocode(mel), v.vocode(mel)
    # half of a random 4-channel stream, refitted, then INT8: 0.45 here; a lost refit (or weights) is near 0
    assert a.shape == b.shape and np.isfinite(b).all() and np.corrcoef(a, b)[0, 1] > 0.3


def test_prune_is_skipped_for_a_vocoder_bundle_and_checked(bundle, tmp_path):
    art = Artifact(bundle_dir=bundle, info={"vocoder": str(bundle)})          # a directory: no channel groups
    rec = apply_pass(art, make_config("fm_vocoder", dict(OPTS, prune="recipe", max_mcd=50.0, require_speedup=False)),
                     PassContext(work_dir=tmp_path, progress=False, target={"families": {"hifigan": {"recipes": {
                         "fast": [{"pass": "generator_prune", "widths": {"stage-1": 0.5}}]}}}}))
    assert rec["details"]["applied"] is True and "model.pt" in rec["details"]["prune"]["skipped"]
    with pytest.raises(ConfigError, match="prune must be"):
        make_config("fm_vocoder", {"prune": "half"})
    from edgeflow.passes.fm_vocoder_prune import prune_widths
    from edgeflow.targets import load_target

    assert prune_widths("recipe", load_target("cpu")) == next(
        p["widths"] for p in load_target("cpu")["families"]["hifigan"]["recipes"]["fast"] if p["pass"] == "generator_prune")
    with pytest.raises(ConfigError, match="recipe"):
        prune_widths("recipe", {"families": {}})
    assert prune_widths(None, None) is None and prune_widths({}, None) is None


def test_refit_inputs_keep_one_window_length():
    """The sequential refit needs one length: a short sentence's whole mel is left out, full windows batched."""
    from edgeflow.passes.fm_vocoder_prune import refit_inputs

    feeds = [{"mel": np.full((1, 4, 8), k, np.float32)} for k in range(10)] + [{"mel": np.zeros((1, 4, 5), np.float32)}]
    batches = refit_inputs(feeds, batch=4)
    assert [tuple(b.shape) for b in batches] == [(4, 4, 8), (4, 4, 8), (2, 4, 8)]
    assert [float(b[0, 0, 0]) for b in batches] == [0.0, 4.0, 8.0]


def test_equalize_rebuilds_the_same_vocoder_with_balanced_channels(bundle, tmp_path):
    """``equalize`` alone: the graph is rebuilt from the model.pt with equalized channels (the float function kept,
    checked by the pass), then quantized; the details carry each stage's channel spread before and after."""
    from edgeflow.models.checkpoint import save_model

    path = tmp_path / "hifigan.pt"
    save_model(path, tiny_vocoder())
    art = Artifact(bundle_dir=bundle, info={"vocoder": str(path)})
    rec = apply_pass(art, make_config("fm_vocoder", dict(OPTS, equalize=1.0, max_mcd=50.0, require_speedup=False)),
                     PassContext(work_dir=tmp_path, progress=False))
    d = rec["details"]
    eq = d["prune"]["equalize"]
    assert d["applied"] is True and "widths" not in d["prune"] and eq["max_rel_error"] < 1e-3
    assert eq["stages"] and all(after <= before for before, after in eq["stages"].values())
    assert any(after < 0.9 * before for before, after in eq["stages"].values())
    f, v = Voice.load(bundle, threads=1), Voice.load(art.bundle_dir, threads=1)
    mel = f.mel_ids(calibration_ids(f, 1)[0], seed=0)
    a, b = f.vocode(mel), v.vocode(mel)
    assert a.shape == b.shape and np.corrcoef(a, b)[0, 1] > 0.5
    with pytest.raises(ConfigError, match="equalize"):
        make_config("fm_vocoder", {"equalize": 2.0})


def test_a_vocos_vocoder_is_kept_float_with_the_reason(tmp_path):
    """fm_vocoder quantizes HiFi-GAN generators; a voice bundle whose vocoder is another family keeps it as is."""
    import torch

    from edgeflow.models.vocos import Vocos, VocosConfig, VocosNetConfig
    from test_fmtts_export import MEL

    torch.manual_seed(0)
    vocos = Vocos(VocosConfig(mel=MEL, net=VocosNetConfig(channels=16, hidden=32, layers=2))).eval()
    out = tmp_path / "voice"
    export_fmtts_bundle(tiny_fmtts(), vocos, out)
    art, d = run_pass(out, tmp_path / "work", max_mcd=50.0, require_speedup=False)
    assert d["applied"] is False and "vocos" in d["reason"] and "HiFi-GAN" in d["reason"]
    manifest = json.loads((art.bundle_dir / "manifest.json").read_text())
    assert manifest["vocoder"]["family"] == "vocos" and manifest["vocoder"]["precision"] == "float32"
    voice = Voice.load(art.bundle_dir, threads=1)
    audio = voice.speak_ids([1, 2, 3, 4, 5, 6, 7, 8])
    assert audio.ndim == 1 and audio.size > 0 and np.isfinite(audio).all()
    mel = voice.mel_ids([1, 2, 3, 4, 5, 6, 7, 8])
    whole = voice.vocode(mel)
    ctx = max(voice.context_frames)                  # the vocoder's receptive field, from its export declaration
    hop = voice.hop_length
    cut = mel.shape[1] // 2
    left = voice.vocode(mel[:, :min(cut + ctx, mel.shape[1])])[:cut * hop]
    right = voice.vocode(mel[:, max(cut - ctx, 0):])[(cut - max(cut - ctx, 0)) * hop:]
    np.testing.assert_allclose(np.concatenate([left, right]), whole, atol=1e-4)

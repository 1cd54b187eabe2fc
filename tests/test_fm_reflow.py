"""Reflow of a flow-matching voice's vector field to few steps (``fm_reflow``, :mod:`edgeflow.passes.fm_reflow`;
:mod:`edgeflow.compress.fm_reflow`): pairs are the reference solve's (noise, mel), the straight-path loss falls
with training, and the gate keeps the field only when it beats step-cutting within the budget."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from edgeflow.compress.fm_field_distill import FieldDistillSettings
from edgeflow.compress.fm_reflow import pair_windows, reflow_distance, reflow_field
from edgeflow.core.errors import ConfigError
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
from edgeflow.passes.fm_nfe import calibration_ids
from edgeflow.passes.fm_reflow import REFERENCE, record_pairs
from edgeflow.runtime import Voice
from test_fm_prune import model, bundle  # noqa: F401  (fixtures: a perturbed tiny model and its bundle)

OPTS = {"nfe": 1, "calib_sentences": 3, "seeds": 1, "sentences": 2, "window": 16, "per_pair": 2, "margin": 2,
        "steps": 30, "max_minutes": 0.0, "valid_every": 10, "threads": 1}


@pytest.fixture(scope="module")
def pairs(bundle):  # noqa: F811
    voice = Voice.load(bundle, threads=1)
    ids = calibration_ids(voice, 3)
    return voice, ids, record_pairs(voice, ids, [[5], [6, 7], [8]])


def test_pairs_are_the_reference_solves_noise_and_mel(pairs):
    voice, ids, got = pairs
    assert len(got) == 4
    p = got[1]                                                # sentence 1, seed 6
    mel = voice.mel_ids(ids[1], seed=6, **REFERENCE)
    n = mel.shape[1]
    assert np.allclose(p["x1"][0, :, :n] * voice.mel_std + voice.mel_mean, mel, atol=1e-5)
    assert not p["x1"][0, :, n:].any() and int(p["mask"].sum()) == n
    assert not np.array_equal(got[2]["x0"][..., :8], p["x0"][..., :8])     # seed 7: another noise draw
    assert np.isclose(p["x0"].std(), voice.manifest["inference"]["noise_scale"], rtol=0.3)   # scaled initial noise
    assert voice.field.__class__.__name__ != "_Recorder"


@pytest.fixture(scope="module")
def guided(model):  # noqa: F811
    """The same model with classifier-free guidance 1.5 as its sampling default."""
    m = copy.deepcopy(model)
    m.config.guidance = 1.5
    return m


@pytest.fixture(scope="module")
def guided_bundle(guided, tmp_path_factory):
    from test_fm_prune import tiny_vocoder

    out = tmp_path_factory.mktemp("fm_r_guided") / "voice"
    export_fmtts_bundle(guided, tiny_vocoder(), out)
    return out


def test_guided_pairs_keep_the_conditional_half_and_the_guided_mel(pairs, guided_bundle):
    voice, ids, plain = pairs
    guided = Voice.load(guided_bundle, threads=1)
    assert guided.sampling["guidance"] == 1.5
    got = record_pairs(guided, ids[:1], [[5]])[0]
    for k in ("x0", "cond", "mask"):                      # one batch row, the same noise and condition
        assert got[k].shape[0] == 1 and np.array_equal(got[k], plain[0][k]), k
    mel = guided.mel_ids(ids[0], seed=5, **REFERENCE)     # x1: where the guided reference solve lands
    n = mel.shape[1]
    assert np.allclose(got["x1"][0, :, :n] * guided.mel_std + guided.mel_mean, mel, atol=1e-5)
    assert not np.allclose(got["x1"], plain[0]["x1"], atol=1e-3)


def test_guided_teacher_gives_an_unguided_student(guided, guided_bundle, tmp_path):
    art, d = run_pass(guided, guided_bundle, tmp_path, max_mcd=50.0)
    assert d["reference"]["guidance"] == 1.5
    assert d["applied"], d.get("reason")                  # seeded: the student beats step-cutting here
    out = art.bundle_dir
    assert art.model.config.guidance == 0.0 and guided.config.guidance == 1.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"]["guidance"] == 0.0 and manifest["config"]["guidance"] == 0.0
    assert manifest["sampling"]["guidance_trained"] is False
    assert Voice.load(out, threads=1).sampling["guidance"] == 0.0


def test_windows_mask_the_edges_and_training_straightens(model, pairs):  # noqa: F811
    _, _, got = pairs
    data = pair_windows(got, 16, 3, 2, seed=0)
    assert data.mask[:, :, :2].sum() == 0 and data.mask[:, :, -2:].sum() == 0 and data.mask[:, :, 2:-2].all()
    assert data.field_mask.all()
    with pytest.raises(ConfigError, match="twice the margin"):
        pair_windows(got, 4, 1, 2)
    field = copy.deepcopy(model.decoder)
    sigma = model.config.sigma_min
    before = reflow_distance(field, data, sigma)
    s = reflow_field(field, data, data, sigma, FieldDistillSettings(steps=60, max_minutes=0, valid_every=20, lr=2e-3,
                                                                     threads=1), progress=False, log=None)
    assert s["valid_before"] == pytest.approx(before, rel=1e-4) and s["valid_best"] < 0.5 * before


def run_pass(model, bundle, tmp_path, **opts):  # noqa: F811
    art = Artifact(model=model, reference=model, bundle_dir=bundle)
    rec = apply_pass(art, make_config("fm_reflow", dict(OPTS, **opts)),
                     PassContext(work_dir=tmp_path, progress=False))
    return art, rec["details"]


def test_pass_records_both_distances_and_gates(model, bundle, tmp_path):  # noqa: F811
    art, d = run_pass(model, bundle, tmp_path, max_mcd=50.0)
    assert set(d["step_cut_mcd"]) == {"sway 0", "sway -1"} and d["mcd"] >= 0 and d["train"]["steps"] == 30
    assert d["export"]["rel_err"] < 1e-4
    if d["applied"]:                                     # it beat step-cutting on this tiny random model
        assert d["mcd"] < d["step_cut_best"] and art.model is not model
        manifest = json.loads((art.bundle_dir / "manifest.json").read_text())
        assert {k: manifest["sampling"][k] for k in ("nfe", "solver", "sway")} == \
            {"nfe": 1, "solver": "euler", "sway": 0.0}
        assert Voice.load(art.bundle_dir, threads=1).sampling["nfe"] == 1
    else:
        assert "step-cutting" in d["reason"] and art.bundle_dir == bundle
    art2, d2 = run_pass(model, bundle, tmp_path / "tight", max_mcd=1e-9, steps=0)
    assert d2["applied"] is False and "MCD" in d2["reason"] and art2.bundle_dir == bundle and art2.model is model
    assert not list((tmp_path / "tight").glob("bundle-*"))


def test_config_checks(tmp_path):
    for bad in ({"nfe": 0}, {"window": 16, "margin": 8}, {"calib_sentences": 18, "sentences": 3}):
        with pytest.raises(ConfigError):
            make_config("fm_reflow", bad)
    assert make_config("fm_reflow", {}).refusal("waveflow")
    with pytest.raises(ConfigError, match="needs the fmtts model"):
        apply_pass(Artifact(), make_config("fm_reflow", {}), PassContext(work_dir=tmp_path, progress=False))

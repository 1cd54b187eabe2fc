"""NFE reduction of flow-matching voices (``fm_nfe``, :mod:`edgeflow.passes.fm_nfe`) and the fmtts route of
``edgeflow optimize`` (:mod:`edgeflow.pipeline_fmtts`): the chosen ODE setting is the cheapest that holds the
budget (checked against a brute-force recomputation), the manifest defaults are rewritten with valid hashes, an
impossible budget keeps the reference setting, the CLI refuses a missing or misplaced --vocoder, and a small
end-to-end run writes a bundle and an honest report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.fft import dct

from edgeflow.audio.mel import MelConfig
from edgeflow.cli.main import main
from edgeflow.core.errors import ConfigError
from edgeflow.data.tts_text import sentences
from edgeflow.export.fmtts import export_fmtts_bundle
from edgeflow.models.checkpoint import save_model
from edgeflow.models.hifigan import HiFiGAN, HiFiGANConfig
from edgeflow.passes.base import Artifact, PassContext, apply_pass, make_config
from edgeflow.passes.fm_nfe import FmNfeConfig, mel_mcd
from edgeflow.runtime import Voice
from edgeflow.targets import list_targets, load_target
from export_helpers import save_tiny
from test_fmtts_export import GEN, tiny_fmtts, tiny_vocoder

GRID = {"nfe": [1, 2, 3, 4, 8], "sway": [0.0, -1.0], "sentences": 2}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fm_nfe") / "voice"
    export_fmtts_bundle(tiny_fmtts(), tiny_vocoder(), out)
    return out


@pytest.fixture(scope="module")
def brute(bundle):
    """Every candidate's mean MCD, recomputed here without the pass's code: per sentence, the cepstra of both
    mels (DCT-II / 2N, c_1..c_order), frame distances, mean."""
    voice = Voice.load(bundle, threads=1)
    ids = [x for t in sentences("calibration")[:GRID["sentences"]] for x in voice.sentence_ids(t)]
    order = min(24, voice.n_mels - 1)

    def cep(m):
        return dct(m.astype(np.float64), type=2, axis=0)[1:order + 1] / (2.0 * m.shape[0])

    refs = [cep(voice.mel_ids(x, seed=k, solver="midpoint", nfe=32, sway=0.0)) for k, x in enumerate(ids)]
    out = {}
    for solver in ("euler", "midpoint"):
        for n in GRID["nfe"]:
            if solver == "midpoint" and n % 2:
                continue
            for s in GRID["sway"]:
                d = [np.mean(np.sqrt(np.sum((cep(voice.mel_ids(x, seed=k, solver=solver, nfe=n, sway=s)) - r) ** 2,
                                            axis=0))) * 10 / np.log(10) * np.sqrt(2)
                     for k, (x, r) in enumerate(zip(ids, refs))]
                out[(solver, n, s)] = float(np.mean(d))
    return out


def run_pass(bundle: Path, tmp_path: Path, **opts):
    art = Artifact(bundle_dir=bundle)
    rec = apply_pass(art, make_config("fm_nfe", dict(GRID, **opts)), PassContext(work_dir=tmp_path, progress=False))
    return art, rec["details"]


def test_mel_mcd_ignores_energy_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(-5, 2, (32, 40)), rng.normal(-5, 2, (32, 40))
    assert mel_mcd(a, a) == 0.0
    assert mel_mcd(a, a + 3.0) < 1e-9                     # a level change is c_0 only, which MCD excludes
    assert mel_mcd(a, b) == pytest.approx(mel_mcd(b, a)) and mel_mcd(a, b) > 1.0
    with pytest.raises(ValueError, match="shape"):
        mel_mcd(a, b[:, :30])


def test_chosen_setting_is_the_cheapest_within_budget(bundle, brute, tmp_path):
    budget = 0.5                    # the tiny model: NFE 1 is ~0.77 dB from the reference, NFE 2 Euler ~0.39 dB
    art, d = run_pass(bundle, tmp_path, max_mcd=budget)
    table = {(r["solver"], r["nfe"], r["sway"]): r["mcd"] for r in d["table"]}
    assert table.keys() == brute.keys()
    for key, v in brute.items():
        assert table[key] == pytest.approx(v, rel=1e-6, abs=1e-9), key
    held = [(n, v) for (solver, n, s), v in brute.items() if v <= budget]
    assert held and min(brute.values()) < budget < max(brute.values())      # the budget discriminates
    cheapest = min(n for n, _ in held)
    assert cheapest > 1                                                        # NFE 1 is over budget
    best = min(v for n, v in held if n == cheapest)
    c = d["chosen"]
    assert c["nfe"] == cheapest and brute[(c["solver"], c["nfe"], c["sway"])] == pytest.approx(best)
    assert d["mcd"] <= budget and d["fallback"] is None
    # the new bundle: hashes valid, defaults rewritten, the rest of the manifest kept
    voice = Voice.load(art.bundle_dir, threads=1)
    assert {k: voice.sampling[k] for k in ("nfe", "solver", "sway")} == c
    m = json.loads((art.bundle_dir / "manifest.json").read_text())
    old = json.loads((bundle / "manifest.json").read_text())
    assert m["nfe_reduction"]["chosen"] == c and m["nfe_reduction"]["before"]["nfe"] == old["sampling"]["nfe"]
    assert m["sampling"]["guidance"] == old["sampling"]["guidance"] and m["files"] == old["files"]
    ids = next(iter(voice.sentence_ids("Hello there.")))
    np.testing.assert_array_equal(voice.mel_ids(ids, seed=3), voice.mel_ids(ids, seed=3, **c))


def test_impossible_budget_keeps_the_reference_setting(bundle, brute, tmp_path):
    art, d = run_pass(bundle, tmp_path, max_mcd=0.0)
    assert min(brute.values()) > 0.0
    assert d["fallback"] == "reference" and d["chosen"] == {"nfe": 32, "solver": "midpoint", "sway": 0.0}
    assert len(d["table"]) == len(brute)                      # the whole table is still recorded
    v = Voice.load(art.bundle_dir, threads=1)
    assert (v.sampling["nfe"], v.sampling["solver"], v.sampling["sway"]) == (32, "midpoint", 0.0)


@pytest.mark.parametrize("opts, message", [({"max_mcd": -1}, "max_mcd"), ({"nfe": [0]}, "nfe"),
                                           ({"solvers": ["rk4"]}, "solvers"), ({"sway": [-2]}, "sway"),
                                           ({"reference_nfe": 31}, "reference_nfe"), ({"sentences": 0}, "sentences"),
                                           ({"budget": 1}, "unknown")])
def test_bad_config_is_a_config_error(opts, message):
    with pytest.raises(ConfigError, match=message):
        make_config("fm_nfe", opts)


def test_pass_refuses_other_families_and_non_fmtts_bundles(tmp_path):
    cfg = FmNfeConfig()
    assert cfg.refusal("vits") and cfg.refusal("waveflow") and cfg.refusal("fmtts") is None
    other = tmp_path / "b"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"family": "vits"}))
    with pytest.raises(ConfigError, match="not an fmtts"):
        apply_pass(Artifact(bundle_dir=other), cfg, PassContext(work_dir=tmp_path, progress=False))


@pytest.mark.parametrize("name", list_targets())
def test_every_target_has_fmtts_recipes(name):
    tgt = load_target(name)
    table = tgt["recipes_fmtts"]
    assert tgt["default_recipe_fmtts"] in table and set(table) == {"quality", "balanced", "fast"}
    assert table["quality"] == [] and tgt["description_fmtts"]
    budgets = {}
    for recipe, passes in table.items():
        for spec in passes:
            spec = dict(spec)
            cfg = make_config(spec.pop("pass"), spec)
            assert cfg.refusal("fmtts") is None
            if isinstance(cfg, FmNfeConfig):
                budgets[recipe] = cfg.max_mcd
    assert budgets["fast"] > budgets["balanced"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fm_models")
    save_model(d / "fm.pt", tiny_fmtts())
    save_model(d / "voc.pt", tiny_vocoder())
    save_tiny(d / "wf.pt", "waveflow")
    return d


def test_cli_refuses_missing_or_misplaced_vocoder(models, tmp_path, capsys):
    assert main(["optimize", str(models / "fm.pt"), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vocoder" in err and "fmtts" in err
    assert main(["optimize", str(models / "wf.pt"), "--vocoder", str(models / "voc.pt"),
                 "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vocoder applies to flow-matching (fmtts) models only" in err
    assert main(["optimize", str(models / "fm.pt"), "--vocoder", str(models / "voc.pt"), "--max-drop", "mcd=1",
                 "-o", str(tmp_path / "c")]) == 2
    assert "--max-drop" in capsys.readouterr().err
    assert main(["optimize", str(models / "fm.pt"), "--vocoder", str(models / "voc.pt"), "--recipe", "tiny",
                 "-o", str(tmp_path / "d")]) == 2
    assert "unknown recipe 'tiny'" in capsys.readouterr().err
    assert main(["optimize", str(models / "fm.pt"), "--vocoder", str(tmp_path / "none"),
                 "-o", str(tmp_path / "e")]) == 2
    assert "vocoder not found" in capsys.readouterr().err
    other = HiFiGAN(HiFiGANConfig(mel=MelConfig(sample_rate=16000, n_fft=512, hop_length=128, win_length=512,
                                                n_mels=32, fmax=7000.0), generator=GEN))
    save_model(tmp_path / "other.pt", other)            # fails inside the export: the run leaves nothing behind
    assert main(["optimize", str(models / "fm.pt"), "--vocoder", str(tmp_path / "other.pt"),
                 "-o", str(tmp_path / "f")]) == 2
    assert "fmax" in capsys.readouterr().err
    assert not any((tmp_path / k).exists() and any((tmp_path / k).iterdir()) for k in "abcdef")


@pytest.mark.slow           # export + 3 passes (fm_prune distils for minutes) + WER/DNSMOS scoring of 4 bundles
def test_optimize_end_to_end(models, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["optimize", str(models / "fm.pt"), "--vocoder", str(models / "voc.pt"), "--recipe", "fast",
                 "--n-eval", "2", "--threads", "1", "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "WARNING: the reference model does not produce speech" in line
    r = json.loads((out / "report.json").read_text())
    assert r["family"] == "fmtts" and r["speech"] is False and r["reference"]["wer"] > 0.8 and r["warning"]
    assert [p["name"] for p in r["passes"]] == ["export", "fm_prune", "fm_reflow", "fm_nfe",
                                               "fm_quantize", "fm_vocoder"] and r["recipe"] == "fast"
    assert "applied" in r["passes"][1]["details"] and "mcd" in r["passes"][1]["details"]
    nfe = r["passes"][3]["details"]
    assert r["budget_held"] and nfe["mcd"] <= 2.5 and nfe["chosen"]["nfe"] <= r["passes"][0]["sampling"]["nfe"]
    voice = Voice.load(out / "bundle", threads=1)
    assert {k: voice.sampling[k] for k in ("nfe", "solver", "sway")} == nfe["chosen"]
    assert {k: r["final"][k] for k in ("nfe", "solver", "sway")} == nfe["chosen"]
    assert [h["name"] for h in voice.manifest["history"]] == ["export", "fm_prune", "fm_reflow", "fm_nfe",
                                                              "fm_quantize", "fm_vocoder"]
    for row in r["passes"]:
        m = row["metrics"]
        assert m["rtf"] > 0 and m["size_mb"] > 0 and 0 <= m["mcd"] < 10 and "dnsmos" in m
    assert r["reference"]["mcd"] == 0.0 and r["threads"] == 1 and len(r["sentences"]) == 2

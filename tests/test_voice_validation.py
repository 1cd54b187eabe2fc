"""Text-to-speech validation: the text set, transcript normalisation, MCD to a teacher, evaluate_voice."""

from __future__ import annotations

import numpy as np
import pytest

from edgeflow.core.errors import InputError
from edgeflow.data import tts_text
from edgeflow.runtime import Voice
from edgeflow.validate import tts
from voice_helpers import make_bundle, piper_voice_path


def test_text_set_parts_are_fixed_and_disjoint():
    parts = {name: tts_text.sentences(name) for name in ("calibration", "distillation", "evaluation")}
    assert [len(p) for p in parts.values()] == [20, 20, 20]
    flat = [s for p in parts.values() for s in p]
    assert len(set(flat)) == 60 and all(s[-1] in ".?!" for s in flat)
    with pytest.raises(KeyError):
        tts_text.sentences("train")
    for s in parts["evaluation"]:
        assert not any(ch.isdigit() for ch in tts.normalize_transcript(s))


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"),
                                      (100, "one hundred"), (1234, "one thousand two hundred thirty four"),
                                      (2000017, "two million seventeen")])
def test_number_to_words(n, words):
    assert tts.number_to_words(n) == words


def test_normalize_transcript():
    assert tts.normalize_transcript("It took us 4 hours, at 3.5 km/h on the 21st!") == \
        "it took us four hours at three point five km h on the twenty first"
    assert tts.normalize_transcript("Pay $1,200 (or 50%) by the 3rd.") == \
        "pay one thousand two hundred or fifty percent by the third"


def test_mel_cepstral_distance():
    rng = np.random.default_rng(0)
    t = np.arange(22050) / 22050
    a = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    assert tts.mel_cepstral_distance(a, a, 22050) == 0.0
    b = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    near = (a + 0.003 * rng.standard_normal(t.size)).astype(np.float32)
    assert 0 < tts.mel_cepstral_distance(a, near, 22050) < tts.mel_cepstral_distance(a, b, 22050)
    with pytest.raises(InputError, match="equal lengths"):
        tts.mel_cepstral_distance(a, a[:-10], 22050)


def test_evaluate_and_teacher_distance_on_a_bundle(tmp_path):
    v = Voice.load(make_bundle(tmp_path / "a"), threads=1)
    other = Voice.load(make_bundle(tmp_path / "b", seed=1), threads=1)      # other weights, same layout
    texts = ["A short one.", "And a second, longer sentence."]
    res = tts.evaluate_voice(v, texts, wer=False, dnsmos=False, seed=2)
    s = res["summary"]
    assert s["sentences"] == 2 and s["rtf"] > 0 and s["audio_seconds"] > 0
    assert all(0 < r["time_to_first_audio"] <= r["wall"] for r in res["rows"])
    assert tts.teacher_distance(v, v, texts, seed=2)["mcd"] == 0.0
    assert tts.teacher_distance(other, v, texts, seed=2)["mcd"] > 1.0


@pytest.mark.needs_eval("pocketsphinx", "speechmos")        # scores WER and DNSMOS
def test_evaluate_the_stock_voice_and_bare_onnxruntime():
    path = piper_voice_path()
    voice, bare = Voice.load(path, threads=1), tts.BarePiper(path, threads=1)
    texts = tts_text.sentences("evaluation")[:1]
    res = tts.evaluate_voice(voice, texts, noise_scale=0.333, noise_w=0.333)
    s = res["summary"]
    assert s["wer"] <= 0.4 and s["p808"] > 2.5 and 0 < s["rtf"] < 5, res
    assert tts.teacher_distance(bare, voice, texts[:1], noise_scale=0, noise_w=0)["mcd"] < 0.1

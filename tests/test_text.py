"""The torch-free text front-end: espeak-ng phonemes clause by clause, Piper's phoneme ids."""

from __future__ import annotations

import collections
import threading

import pytest

from edgeflow.core.errors import ConfigError
from edgeflow import text as T
from voice_helpers import piper_id_map

#: Piper's default espeak map for the symbols of "licht!" (the same ids as the joe voice json).
LICHT_MAP = {"_": [0], "^": [1], "$": [2], "!": [4], "c": [16], "l": [24], "t": [32], "ɪ": [74], "ˈ": [120],
             "\u0327": [140]}


def joined(sentences):
    return ["".join(s) for s in sentences]


def test_piper_phonemize_reference_vectors():
    # piper-phonemize's own test vectors (src/python_test.py): NFD splits ç; ids ^ _ ... _ $.
    de = T.phonemize("licht!", "de")
    assert de == [["l", "ˈ", "ɪ", "c", "\u0327", "t", "!"]]
    assert T.phonemes_to_ids(de[0], LICHT_MAP) == [1, 0, 24, 0, 120, 0, 74, 0, 16, 0, 140, 0, 32, 0, 4, 0, 2]
    assert T.phonemize("Test 1. Test2.", "en-us") == [
        ["t", "ˈ", "ɛ", "s", "t", " ", "w", "ˈ", "ʌ", "n", "."],
        ["t", "ˈ", "ɛ", "s", "t", " ", "t", "ˈ", "u", "ː", "."]]
    missing = collections.Counter()
    assert T.phonemes_to_ids(["\0"] * 3, LICHT_MAP, missing) == [1, 0, 2]
    assert missing == {"\0": 3}


def test_clauses_keep_punctuation_and_split_sentences():
    assert joined(T.phonemize("Hello, world. How are you?")) == ["həlˈoʊ, wˈɜːld.", "hˈaʊ ɑːɹ juː?"]
    assert joined(T.phonemize("Wait; no: stop!")) == ["wˈeɪt; nˈoʊ: stˈɑːp!"]
    assert joined(T.phonemize("Wait... what?")) == ["wˈeɪt; wˌʌt?"]          # ellipsis is espeak's ';'
    assert joined(T.phonemize("One \u2014 two")) == ["wˈʌn; tˈuː"]            # so is a dash
    assert joined(T.phonemize("no end punctuation")) == ["nˈoʊ ˈɛnd pˌʌŋktʃuːˈeɪʃən"]
    assert len(T.phonemize("First paragraph\n\nsecond paragraph")) == 2


def test_hello_world_ids_hand_checked():
    ids = T.phonemes_to_ids(T.phonemize("Hello, world.")[0], piper_id_map())
    #        ^  _  h     ə     l     ˈ      o     ʊ      ,    ' '    w     ˈ      ɜ     ː      l     d     .     $
    assert ids == [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 8, 0, 3, 0, 35, 0, 120, 0, 62, 0, 122, 0,
                   24, 0, 17, 0, 10, 0, 2]


def test_every_espeak_symbol_is_in_the_voice_map():
    id_map = piper_id_map()
    missing = collections.Counter()
    text = ("The quick brown fox jumps over the lazy dog. She sells sea shells; thirty-three thousand "
            "things, measured at 3.14 metres! Who's there? Judge George's rouge, a yacht: Dr. Zhivago.")
    for s in T.phonemize(text):
        T.phonemes_to_ids(s, id_map, missing)
    assert not missing


def test_numbers_and_abbreviations_as_espeak_reads_them():
    text = "".join(joined(T.phonemize("It costs 1,234 dollars.")))
    assert "θˈaʊzənd" in text and "tˈuːhˈʌndɹɪd" in text
    assert joined(T.phonemize("Dr. Jones"))[0] == "dˈɑːktɚ."          # espeak ends the clause at "Dr."


@pytest.mark.parametrize("text", ["", "   ", "...", "?!", ";;", "\n\n", "\x00\x01"])
def test_nothing_to_speak_gives_no_sentences(text):
    assert T.phonemize(text) == []


@pytest.mark.parametrize("text", ["😀 🎉", "你好世界", "Привет, мир.", "a\x00b", "x" * 5000])
def test_odd_text_does_not_crash(text):
    sentences = T.phonemize(text)
    assert sentences and all(len(s) <= T.MAX_SENTENCE_SYMBOLS for s in sentences)


def test_long_sentence_is_split_at_clauses():
    text = ", ".join(["the small bird sang"] * 200) + "."
    sentences = T.phonemize(text)
    assert len(sentences) > 1 and all(len(s) <= T.MAX_SENTENCE_SYMBOLS for s in sentences)
    assert sum(s.count(",") for s in sentences) == 199


def test_unknown_symbols_are_counted_and_dropped():
    id_map = dict(LICHT_MAP)
    missing = collections.Counter()
    ids = T.phonemes_to_ids(["l", "x", "ɪ", "x", "y"], id_map, missing)
    assert ids == [1, 0, 24, 0, 74, 0, 2] and missing == {"x": 2, "y": 1}
    assert "3 phoneme symbol(s)" in T.describe_missing(missing)


@pytest.mark.parametrize("consumed, at_end, want", [
    ("Hello, w", False, ","), ("world. H", False, "."), ('he said "hi."', False, "."), ("(approx.)", False, "."),
    ("Wait... w", False, ";"), ("A \u2014 B", False, ";"), ("fine; o", False, ";"), ("end", True, ""),
    ("ok!", True, "!"), ("long clause without stop x", False, ""), ("why? ", False, "?"), ("\uff1f", True, "?")])
def test_clause_terminator(consumed, at_end, want):
    assert T.clause_terminator(consumed, at_end) == want


def test_unknown_espeak_voice_and_bad_maps():
    with pytest.raises(ConfigError, match="no voice"):
        T.phonemize("hello", "xx-not-a-voice")
    assert T.phonemize("hello", "en-us")            # the library recovers
    for bad in ({}, {"^": [1], "$": [2]}, {"^": [1], "$": [2], "_": [-1]}, {"^": 1, "$": [2], "_": [0]}, []):
        with pytest.raises(ConfigError):
            T.check_id_map(bad)


def test_phonemize_is_thread_safe():
    texts = [f"Sentence number {i}, said twice. And again {i}!" for i in range(8)]
    serial = [T.phonemize(t) for t in texts]
    results = [None] * len(texts)

    def work(i):
        for _ in range(5):
            results[i] = T.phonemize(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial

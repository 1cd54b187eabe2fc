"""Reader for corpora in the LJSpeech layout, and a stable train/valid/test split.

Layout::

    DIR/metadata.csv     one utterance a line: id|text|normalized_text[|speaker]  (or id|text)
    DIR/wavs/ID.wav      the audio of each utterance
    DIR/sources.json     optional (written by edgeflow.data.corpus): per-clip source and licence
    DIR/splits.json      the train/valid/test split, written once and reused by every tool

The split is by utterance, deterministic for a seed, and stored in ``splits.json`` so that
every later tool (training, calibration, evaluation) sees exactly the same partition;
calibration must only ever read ``train`` or ``valid``, never ``test``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeflow.core.errors import ConfigError, CorpusError
from edgeflow.core.io import atomic_write_json

SPLIT_NAMES = ("train", "valid", "test")
SPLITS_FILE = "splits.json"
SPLITS_VERSION = 1


@dataclass(frozen=True)
class Utterance:
    """One corpus entry.

    Attributes:
        id: utterance id (the wav is ``wavs/<id>.wav``).
        text: the transcript (normalised column when present, else the raw one).
        wav: path of the wav file.
        speaker: 4th metadata column, or ``"default"``.
        source: where the clip came from (from ``sources.json``, else the corpus folder name).
        licence: licence of the clip when known, else None.
    """

    id: str
    text: str
    wav: Path
    speaker: str = "default"
    source: str = ""
    licence: str | None = None


def _read_sources(corpus: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(clip id -> source name, source name -> licence) from sources.json, or empty maps."""
    path = corpus / "sources.json"
    if not path.is_file():
        return {}, {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        clips = {str(k): str(v["source"]) for k, v in info.get("clips", {}).items()}
        licences = {str(k): str(v.get("licence")) for k, v in info.get("sources", {}).items()
                    if v.get("licence")}
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise CorpusError(f"{path}: unreadable sources.json ({type(exc).__name__}: {exc})") from None
    return clips, licences


def load_corpus(corpus_dir: str | Path) -> list[Utterance]:
    """Read an LJSpeech-layout corpus.

    Args:
        corpus_dir: folder holding ``metadata.csv`` and ``wavs/``.

    Returns:
        Utterances in file order.

    Raises:
        CorpusError: no folder or metadata.csv, a malformed or duplicate line, a line naming a
            missing wav, or no utterances at all. The message names the file and line.
    """
    corpus = Path(corpus_dir)
    meta = corpus / "metadata.csv"
    if not corpus.is_dir():
        raise CorpusError(f"corpus folder not found: {corpus}")
    if not meta.is_file():
        raise CorpusError(f"{corpus} is not an LJSpeech-layout corpus: no metadata.csv")
    try:
        lines = meta.read_text(encoding="utf-8-sig").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise CorpusError(f"{meta}: cannot read ({type(exc).__name__})") from None
    clip_source, licences = _read_sources(corpus)
    utts: list[Utterance] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{meta}:{lineno}"
        cols = line.split("|")
        if not 2 <= len(cols) <= 4:
            raise CorpusError(f"{where}: malformed line, expected id|text[|normalized_text"
                              f"[|speaker]], got {len(cols)} column(s)")
        uid = cols[0].strip()
        if not uid or "/" in uid or "\\" in uid or uid.startswith("."):
            raise CorpusError(f"{where}: malformed line, bad utterance id {uid!r}")
        if uid in seen:
            raise CorpusError(f"{where}: duplicate utterance id {uid!r}")
        seen.add(uid)
        text = (cols[2].strip() if len(cols) >= 3 else "") or cols[1].strip()
        if not text:
            raise CorpusError(f"{where}: malformed line, empty transcript for {uid!r}")
        speaker = cols[3].strip() if len(cols) == 4 and cols[3].strip() else "default"
        wav = corpus / "wavs" / f"{uid}.wav"
        if not wav.is_file():
            raise CorpusError(f"{where}: wav file missing: {wav}")
        source = clip_source.get(uid, corpus.name)
        utts.append(Utterance(uid, text, wav, speaker, source, licences.get(source)))
    if not utts:
        raise CorpusError(f"{meta}: no utterances")
    return utts


def _count(n: int, frac: float, min_each: int) -> int:
    return 0 if frac <= 0 else max(int(min_each), int(round(frac * n)))


def split_corpus(utts: list[Utterance], seed: int = 0, valid: float = 0.05,
                 test: float = 0.05, min_each: int = 1) -> dict[str, list[Utterance]]:
    """Split utterances into train/valid/test, by utterance, deterministically.

    Ids are sorted first, then permuted with ``numpy.random.default_rng(seed)``; the first
    ``n_test`` go to test, the next ``n_valid`` to valid, the rest to train. Each list comes
    back sorted by id.

    Args:
        utts: the corpus (any order).
        seed: permutation seed.
        valid: fraction of utterances for validation (0 for none).
        test: fraction for the held-out test set (0 for none).
        min_each: at least this many in valid and test when their fraction is > 0.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}``.

    Raises:
        ConfigError: fractions out of range.
        CorpusError: too few utterances to leave at least one for training.
    """
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ConfigError(f"split fractions must be in [0, 1) and sum below 1, got "
                          f"valid={valid} test={test}")
    ordered = sorted(utts, key=lambda u: u.id)
    n = len(ordered)
    n_valid, n_test = _count(n, valid, min_each), _count(n, test, min_each)
    if n_valid + n_test >= n:
        raise CorpusError(f"cannot split {n} utterance(s) into train/valid/test with "
                          f"valid={valid} test={test} min_each={min_each}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    parts = {"test": perm[:n_test], "valid": perm[n_test:n_test + n_valid],
             "train": perm[n_test + n_valid:]}
    return {name: sorted((ordered[i] for i in parts[name]), key=lambda u: u.id)
            for name in SPLIT_NAMES}


def write_split(corpus_dir: str | Path, split: dict[str, list[Utterance]], seed: int,
                valid: float, test: float) -> Path:
    """Write ``splits.json`` (ids per split and the parameters that made it), atomically."""
    path = Path(corpus_dir) / SPLITS_FILE
    try:
        atomic_write_json(path, {"version": SPLITS_VERSION, "seed": int(seed), "valid": valid,
                                 "test": test, **{k: [u.id for u in split[k]] for k in SPLIT_NAMES}})
    except OSError as exc:
        raise CorpusError(f"cannot write {path} ({exc.strerror or type(exc).__name__}); the "
                          "corpus folder must be writable once to record its split") from None
    return path


def ensure_split(corpus_dir: str | Path, seed: int | None = None, valid: float | None = None,
                 test: float | None = None) -> dict[str, list[Utterance]]:
    """Read the corpus split from ``splits.json``, creating it there first if absent.

    Args:
        corpus_dir: the corpus folder.
        seed, valid, test: parameters for a new split (defaults 0, 0.05, 0.05). When
            ``splits.json`` exists, any value given must match the stored one.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}`` of :class:`Utterance`.

    Raises:
        CorpusError: unreadable splits.json, parameters that differ from the stored split, or
            a split that no longer matches metadata.csv (ids added or removed).
    """
    corpus = Path(corpus_dir)
    utts = load_corpus(corpus)
    path = corpus / SPLITS_FILE
    if not path.is_file():
        params = {"seed": 0 if seed is None else seed, "valid": 0.05 if valid is None else valid,
                  "test": 0.05 if test is None else test}
        split = split_corpus(utts, **params)
        write_split(corpus, split, **params)
        return split
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        ids = {k: [str(i) for i in stored[k]] for k in SPLIT_NAMES}
    except (ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"{path}: unreadable split file ({type(exc).__name__}: {exc})") from None
    for key, want in (("seed", seed), ("valid", valid), ("test", test)):
        if want is not None and stored.get(key) != want:
            raise CorpusError(f"{path} was made with {key}={stored.get(key)}, not {want}; delete "
                              "it to re-split (this changes which clips are held out)")
    by_id = {u.id: u for u in utts}
    listed = [i for k in SPLIT_NAMES for i in ids[k]]
    if len(listed) != len(set(listed)) or set(listed) != set(by_id):
        raise CorpusError(f"{path} does not match metadata.csv ({len(listed)} ids listed, "
                          f"{len(by_id)} in the corpus); delete it to re-split")
    return {k: [by_id[i] for i in ids[k]] for k in SPLIT_NAMES}


def load_split(corpus_dir: str | Path, name: str) -> list[Utterance]:
    """The utterances of one split (``train``, ``valid`` or ``test``), via :func:`ensure_split`.

    Raises:
        ConfigError: unknown split name.
        CorpusError: see :func:`ensure_split`.
    """
    if name not in SPLIT_NAMES:
        raise ConfigError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
    return ensure_split(corpus_dir)[name]

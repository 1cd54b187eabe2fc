"""Vocoder training pairs from a voice's own mels: (acoustic model's log-mel, teacher vocoder's audio of it).

A vocoder trained on the log-mels of recordings meets smoother mels when an acoustic model drives it, and the
flow-matching voices' one-step mels are smoother still. HiFi-GAN fine-tunes on its acoustic model's
teacher-forced mels for that reason (arXiv 2010.05646, section 4.4). A flow-matching voice has no teacher-forced
mels to offer, so the target here is a trained vocoder's audio of the same mel (a distillation): the student
learns what the teacher makes of the voice's mels, frame for frame.

Layout written (``edgeflow corpus pairs``)::

    OUT/pairs.json          provenance: voices, teacher, seeds, texts' corpus and split, counts, date
    OUT/NAME.mel.npy        float32 [n_mels, frames]: the voice's log-mel of one sentence
    OUT/NAME.wav            the teacher's audio of that mel, frames * hop samples, float32 wav

The vocos trainer mixes these into its batches (``pairs`` / ``pairs_fraction`` in the recipe's train section,
:class:`edgeflow.train.data.PairSampler`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from edgeflow.core.errors import InputError
from edgeflow.core.io import atomic_dir


def corpus_texts(data_dir: str | Path, split: str) -> List[str]:
    """Transcripts of one split of an LJSpeech-layout corpus (the split fixed by its splits.json)."""
    from edgeflow.data.ljspeech import load_split

    texts = [u.text for u in load_split(data_dir, split)]
    if not texts:
        raise InputError(f"{data_dir}: split {split!r} has no utterances")
    return texts


def _teacher(path: str | Path):
    import torch

    from edgeflow.models.checkpoint import load_model

    model, _ = load_model(path)
    if not hasattr(model, "n_mels") or not hasattr(model, "hop_length"):
        raise InputError(f"{path}: not a mel vocoder (family {type(model).__name__})")

    def vocode(mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(mel[None])).reshape(-1).numpy().astype(np.float32)

    return vocode, int(model.n_mels), int(model.hop_length)


def write_vocoder_pairs(voices: Sequence[str | Path], teacher: str | Path, texts: Sequence[str],
                        out_dir: str | Path, seeds: Sequence[int] = (0,), progress: bool = True,
                        meta: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """Write one (mel, teacher audio) pair per voice, seed and sentence of ``texts``.

    Args:
        voices: flow-matching voice bundles (their mels; their own vocoders are not used).
        teacher: a mel vocoder model.pt (HiFi-GAN), run in PyTorch on each mel.
        texts: sentences (each text's sentences are voiced one by one).
        out_dir: absent or empty folder; written whole into a temporary sibling, then renamed
            (:func:`edgeflow.core.io.atomic_dir`).
        seeds: noise seeds per sentence.
        progress: print a progress line with an ETA.
        meta: extra provenance for pairs.json.

    Returns:
        The pairs.json dict.
    """
    from edgeflow.runtime import Voice

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty")
    vocode, n_mels, hop = _teacher(teacher)
    loaded = [Voice.load(v) for v in voices]
    for path, voice in zip(voices, loaded):
        if not hasattr(voice, "mel_ids"):
            raise InputError(f"{path}: not a flow-matching voice bundle (it makes no mels)")
        if (getattr(voice, "n_mels", None), voice.hop_length) != (n_mels, hop):
            raise InputError(f"{path}: its mels ({getattr(voice, 'n_mels', None)} bands, hop {voice.hop_length}) "
                             f"are not the teacher's ({n_mels} bands, hop {hop})")
    with atomic_dir(out, overwrite=True) as tmp:          # an existing ``out`` is empty (checked above)
        info = _write_all(loaded, vocode, texts, tmp, seeds, progress)
        info.update({"voices": [str(v) for v in voices], "teacher": str(teacher), "seeds": list(seeds),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **(meta or {})})
        (tmp / "pairs.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _write_all(voices, vocode, texts, tmp: Path, seeds, progress: bool) -> Dict[str, Any]:
    import soundfile as sf

    jobs = [(v, vi, s, ti) for vi, v in enumerate(voices) for s in seeds for ti in range(len(texts))]
    t0, frames, count = time.time(), 0, 0
    for k, (voice, vi, seed, ti) in enumerate(jobs):
        for si, ids in enumerate(voice.sentence_ids(texts[ti])):
            mel = voice.mel_ids(ids, seed=seed)
            audio = vocode(mel)[:mel.shape[1] * voice.hop_length]
            name = f"v{vi}_s{seed}_t{ti:04d}_{si}"
            np.save(tmp / f"{name}.mel.npy", mel.astype(np.float32))
            sf.write(str(tmp / f"{name}.wav"), np.clip(audio, -1.0, 1.0), voice.sample_rate, subtype="FLOAT")
            frames += mel.shape[1]
            count += 1
        if progress and ((k + 1) % 10 == 0 or k + 1 == len(jobs)):
            el = time.time() - t0
            print(f"pairs: {k + 1}/{len(jobs)} texts, {count} sentences, {el:.0f} s, "
                  f"ETA {el / (k + 1) * (len(jobs) - k - 1):.0f} s", flush=True)
    hop, sr = voices[0].hop_length, voices[0].sample_rate
    return {"pairs": count, "seconds": round(frames * hop / sr, 1), "sample_rate": sr, "hop_length": hop}

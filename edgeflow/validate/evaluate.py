"""Evaluate a synthesizer on held-out clips: against the ground truth and against a reference output.

A *synthesizer* is any callable ``mel [n_mels, F] float32 -> audio [F * hop] float32`` with a fixed
seed inside; :func:`torch_synthesizer` and :func:`bundle_synthesizer` make one from a model or a bundle.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from edgeflow.audio.io import load_wav
from edgeflow.audio.mel import MelConfig, log_mel
from edgeflow.core.errors import CorpusError

Synth = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class EvalClip:
    """One held-out clip: ground-truth audio [T] (T a multiple of hop) and its log-mel [n_mels, T / hop]."""

    name: str
    audio: np.ndarray
    mel: np.ndarray
    text: str = ""


def find_clips(data: str | Path) -> List[tuple]:
    """(name, wav path, text) of held-out clips: a corpus's test split, or every audio file in a folder."""
    data = Path(data)
    if (data / "metadata.csv").is_file():
        from edgeflow.data.ljspeech import load_split

        return [(u.id, Path(u.wav), u.text) for u in load_split(data, "test")]
    if not data.is_dir():
        raise CorpusError(f"data folder not found: {data}")
    texts = {}
    if (data / "transcripts.txt").is_file():
        for line in (data / "transcripts.txt").read_text().splitlines():
            if "|" in line:
                k, v = line.split("|", 1)
                texts[k.strip()] = v.strip()
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    if not files:
        raise CorpusError(f"{data}: no audio files (.wav/.flac/.ogg) and no metadata.csv")
    return [(p.stem, p, texts.get(p.stem, "")) for p in files]


def load_clips(data: str | Path, mel_cfg: MelConfig, n: int = 4, max_seconds: float = 4.0,
               multiple: int = 256) -> List[EvalClip]:
    """Load up to ``n`` held-out clips, cropped to ``max_seconds`` and a multiple of ``multiple`` samples."""
    clips = []
    for name, path, text in find_clips(data)[:n]:
        audio, _ = load_wav(path, mel_cfg.sample_rate)
        keep = min(len(audio), int(max_seconds * mel_cfg.sample_rate)) // multiple * multiple
        if keep < multiple * 4:
            continue
        audio = audio[:keep]
        clips.append(EvalClip(name, audio, log_mel(audio, mel_cfg), text if keep == len(audio) else ""))
    if not clips:
        raise CorpusError(f"{data}: no usable audio clips (all shorter than {4 * multiple} samples)")
    return clips


def torch_synthesizer(model, seed: int = 0, sigma: Optional[float] = None) -> Synth:
    """Synthesizer from a torch FlowVocoder (CPU, float32, the shared noise function)."""
    import torch

    def fn(mel: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model.synthesize(torch.from_numpy(mel[None]).float(), sigma=sigma, seed=seed)
        return out[0].numpy().astype(np.float32)

    return fn


def bundle_synthesizer(bundle_dir: str | Path, seed: int = 0, threads: Optional[int] = None,
                       sigma: Optional[float] = None) -> Synth:
    """Synthesizer from a bundle through the torch-free runtime."""
    from edgeflow.runtime import Synthesizer

    syn = Synthesizer.load(bundle_dir, threads=threads)
    return lambda mel: np.asarray(syn.synthesize(mel, sigma=sigma, seed=seed), dtype=np.float32).reshape(-1)


#: metrics of :func:`score` when none are named (the per-pass gate's historical set)
GATE_METRICS = ("pesq", "stoi", "mel_l1", "mr_stft")
#: metrics of the final report (every budgetable metric; wer only where clips have transcripts)
REPORT_METRICS = ("pesq", "stoi", "mel_l1", "mr_stft", "mcd", "lsd", "dnsmos", "dnsmos_p808", "wer")


def evaluate(synth: Synth, clips: Sequence[EvalClip], mel_cfg: MelConfig,
             reference: Optional[Sequence[np.ndarray]] = None, metrics: Optional[Sequence[str]] = None,
             log=None) -> Dict[str, float]:
    """Mean metrics of a synthesizer over clips (see :func:`score`)."""
    return score(synthesize_all(synth, clips), clips, mel_cfg, reference, metrics, log=log)


def synthesize_all(synth: Synth, clips: Sequence[EvalClip], log=None, label: str = "synthesizing") -> List[np.ndarray]:
    """Outputs of ``synth`` for each clip, cut to the clip's length (progress lines through ``log``)."""
    from edgeflow.validate.progress import Progress

    prog = Progress(label, sum(len(c.audio) for c in clips), log, "samples")
    outs = []
    for c in clips:
        outs.append(synth(c.mel)[:len(c.audio)])
        prog.advance(len(c.audio))
    return outs


def score(outs: Sequence[np.ndarray], clips: Sequence[EvalClip], mel_cfg: MelConfig,
          reference: Optional[Sequence[np.ndarray]] = None, metrics: Optional[Sequence[str]] = None,
          log=None, label: str = "scoring") -> Dict[str, float]:
    """Mean of each metric over clips (names from :mod:`edgeflow.validate.table`).

    Args:
        outs: outputs [T_i] for each clip.
        metrics: table names to score (default :data:`GATE_METRICS`); only these are computed. ``wer``
            is averaged over the clips that have a transcript.
        reference: outputs of the unoptimized model for the same clips and noise: adds ``snr_vs_ref``
            (dB, capped at 120) and ``mel_l1_vs_ref``.
        log: where progress lines go (see :mod:`edgeflow.validate.progress`).

    Returns:
        {metric: mean}. A metric that fails on any clip it applies to (PESQ finding no speech, a
        non-finite value) is absent, so that a budget on it reports it as not scored rather than
        averaging over fewer clips.
    """
    from edgeflow.core.errors import AudioError
    from edgeflow.validate import metrics as M
    from edgeflow.validate.progress import Progress
    from edgeflow.validate.table import get

    specs = [get(m) for m in (GATE_METRICS if metrics is None else metrics)]
    sr = mel_cfg.sample_rate
    rows: Dict[str, List[float]] = {}
    failed = set()

    def add(k, v):
        if v is not None and np.isfinite(v):
            rows.setdefault(k, []).append(float(v))

    prog = Progress(label, len(clips), log, "clips")
    for i, (out, clip) in enumerate(zip(outs, clips)):
        for spec in specs:
            try:
                v = spec.score(clip.audio, out, sr, mel_cfg, clip.text)
            except AudioError:
                v = float("nan")
            if v is not None and not np.isfinite(v):
                failed.add(spec.name)
            add(spec.name, v)
        if reference is not None:
            add("snr_vs_ref", min(M.snr(reference[i], out, sr), 120.0))
            add("mel_l1_vs_ref", M.log_mel_l1(reference[i], out, sr, mel_cfg))
        prog.advance()
    return {k: float(np.mean(v)) for k, v in rows.items() if k not in failed}

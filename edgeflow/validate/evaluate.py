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


def evaluate(synth: Synth, clips: Sequence[EvalClip], mel_cfg: MelConfig,
             reference: Optional[Sequence[np.ndarray]] = None, full: bool = False) -> Dict[str, float]:
    """Mean metrics over clips.

    Against ground truth: ``pesq`` (PESQ-WB), ``stoi``, ``mel_l1`` (log-mel L1), ``mr_stft``; with
    ``full`` also ``mcd`` (DTW) and ``dnsmos`` (no reference) and ``wer`` where clips have text.
    Against ``reference`` outputs (same noise): ``snr_vs_ref`` (dB) and ``mel_l1_vs_ref``.

    Returns:
        dict of metric -> mean value, plus ``outputs`` is not included (see :func:`synthesize_all`).
    """
    outs = synthesize_all(synth, clips)
    return score(outs, clips, mel_cfg, reference, full)


def synthesize_all(synth: Synth, clips: Sequence[EvalClip]) -> List[np.ndarray]:
    return [synth(c.mel)[:len(c.audio)] for c in clips]


def score(outs: Sequence[np.ndarray], clips: Sequence[EvalClip], mel_cfg: MelConfig,
          reference: Optional[Sequence[np.ndarray]] = None, full: bool = False) -> Dict[str, float]:
    from edgeflow.validate import metrics as M
    from edgeflow.validate import perceptual as P

    sr = mel_cfg.sample_rate
    rows: Dict[str, List[float]] = {}

    def add(k, v):
        if v is not None and np.isfinite(v):
            rows.setdefault(k, []).append(float(v))

    for i, (out, clip) in enumerate(zip(outs, clips)):
        add("pesq", P.pesq_wb(clip.audio, out, sr))
        add("stoi", P.stoi(clip.audio, out, sr))
        add("mel_l1", M.log_mel_l1(clip.audio, out, sr, mel_cfg))
        add("mr_stft", M.mr_stft_distance(clip.audio, out, sr))
        if full:
            add("mcd", M.mcd_dtw(clip.audio, out, sr))
            add("dnsmos", P.dnsmos(out, sr)["ovrl"])
            if clip.text:
                add("wer", P.asr_wer(out, sr, clip.text)["wer"])
        if reference is not None:
            add("snr_vs_ref", min(M.snr(reference[i], out, sr), 120.0))
            add("mel_l1_vs_ref", M.log_mel_l1(reference[i], out, sr, mel_cfg))
    return {k: float(np.mean(v)) for k, v in rows.items()}

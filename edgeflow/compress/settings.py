"""Distillation settings: the options of the ``distill`` pass and the ``finetune`` options of prune / reduce_flows."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from edgeflow.core.config import ConfigBase


@dataclasses.dataclass
class DistillSettings(ConfigBase):
    """Distillation settings (the ``distill`` pass options and the ``finetune`` options of prune/reduce_flows).

    Attributes:
        steps: optimizer steps at most; max_minutes: wall-clock cap (0: none), counted across resumes.
        batch_size, segment: segments per step and samples per segment (rounded up to the length multiple).
        lr, grad_clip: Adam learning rate and gradient-norm clip.
        l1_weight, stft_weight, nll_weight: loss weights (NLL needs audio, i.e. a corpus source).
        stft_sc: include the spectral-convergence term in the MR-STFT loss (False: log-magnitudes only).
        mel_weight: weight of the log-mel L1 distance (the model's own front-end, HiFi-GAN's mel loss).
            Unlike the MR-STFT distance it has no spectral-convergence term, which, against a target
            whose fine structure the student cannot match (a recording), is lowest for a quieter output.
        sigma: noise scale (0: the teacher's sigma_infer).
        seed: drives segments and z of every step.
        valid_every, valid_segments, patience: validation interval, fixed validation segments, and
            validations without improvement before stopping early (0: never).
        ckpt_every: checkpoint interval in steps.
        device: "auto" (CUDA if available), "cpu" or "cuda[:i]"; amp: float16 autocast on CUDA.
        threads: torch CPU threads while distilling (0: leave torch's setting; 1 is often fastest on a
            CPU shared with other jobs, where extra threads spin and wait).
        data: training data (corpus, calibration set or wav folder); "": chosen by the pass.
        target: what the student's synthesis is compared with: "teacher" (distillation: the teacher's
            output for the same z and mel) or "audio" (spectral fine-tuning: the recorded segment the mel
            was computed from; needs an audio source, and l1_weight 0, since a waveform L1 against a
            recording asks the flow for a phase that the mel does not determine).
    """

    steps: int = 200
    max_minutes: float = 0.0
    batch_size: int = 2
    segment: int = 4096
    lr: float = 2e-4
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    stft_weight: float = 1.0
    nll_weight: float = 0.0
    mel_weight: float = 0.0
    stft_sc: bool = True
    sigma: float = 0.0
    seed: int = 0
    valid_every: int = 25
    valid_segments: int = 4
    patience: int = 4
    ckpt_every: int = 25
    device: str = "auto"
    amp: bool = True
    threads: int = 0
    data: str = ""
    target: str = "teacher"

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.segment < 1 or self.valid_segments < 1:
            raise ValueError("steps >= 0, batch_size >= 1, segment >= 1 and valid_segments >= 1 are required")
        weights = (self.l1_weight, self.stft_weight, self.nll_weight, self.mel_weight)
        if min(*weights, self.max_minutes, self.sigma) < 0:
            raise ValueError("loss weights, sigma and max_minutes must be >= 0")
        if sum(weights) <= 0:
            raise ValueError("at least one loss weight must be > 0")
        if not self.lr > 0 or min(self.valid_every, self.ckpt_every, self.patience, self.threads) < 0:
            raise ValueError("lr > 0 and non-negative valid_every, ckpt_every, patience, threads are required")
        if self.target not in ("teacher", "audio"):
            raise ValueError(f"target must be 'teacher' or 'audio', not {self.target!r}")
        if self.target == "audio" and self.l1_weight > 0:
            raise ValueError("target 'audio' needs l1_weight 0 (the mel does not fix the recording's phase)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def segment_length(settings: DistillSettings, *models) -> int:
    """The segment length rounded up to a multiple of every model's length multiple."""
    mult = 1
    for m in models:
        mult = int(np.lcm(mult, m.length_multiple))
    return -(-settings.segment // mult) * mult

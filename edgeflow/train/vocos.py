"""Training the "vocos" family (:mod:`edgeflow.models.vocos`) on recordings: a reconstruction objective on the
maximum-likelihood trainer's loop (:class:`edgeflow.train.trainer.Trainer` picks it by the recipe's family).

The objective is the log-mel L1 of the output against the recording's, weighted by ``mel_weight``, plus the
multi-resolution STFT loss (spectral convergence + log-magnitude L1 at 512 / 1024 / 2048 points,
:func:`edgeflow.audio.losses.mr_stft_loss`), weighted by ``stft_weight``. There is no discriminator: Vocos as
published adds multi-period and multi-resolution discriminators; this recipe measures what the spectral losses
alone give on a CPU (bench/results/fm_tts.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

import torch

from edgeflow.audio.losses import mr_stft_loss
from edgeflow.train.recipe import TrainConfig


@dataclasses.dataclass
class VocosTrainConfig(TrainConfig):
    """:class:`TrainConfig` plus the loss weights (log-mel L1, multi-resolution STFT)."""

    mel_weight: float = 15.0
    stft_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.mel_weight < 0 or self.stft_weight < 0 or self.mel_weight + self.stft_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got mel_weight={self.mel_weight!r}, "
                             f"stft_weight={self.stft_weight!r}")


class ReconstructionObjective:
    """``mel_weight`` x log-mel L1 + ``stft_weight`` x MR-STFT of the vocoded recording against the recording.

    Args:
        mel: the model's :class:`edgeflow.audio.mel_torch.LogMel` front-end.
        cfg: the recipe's :class:`VocosTrainConfig`.
    """

    def __init__(self, mel: torch.nn.Module, cfg: VocosTrainConfig):
        self.mel, self.cfg = mel, cfg

    def loss(self, model: torch.nn.Module, audio: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """audio [B, T] (T a multiple of the hop) -> (scalar loss, {"mel_l1", "mr_stft"})."""
        target_mel = self.mel(audio)
        pred = model(target_mel)
        mel_l1 = torch.nn.functional.l1_loss(self.mel(pred), target_mel)
        stft = mr_stft_loss(pred, audio)
        loss = self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * stft
        return loss, {"mel_l1": float(mel_l1.detach()), "mr_stft": float(stft.detach())}

    def valid(self, model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
        """The same loss on validation segments (no gradients needed by the caller)."""
        return self.loss(model, audio)[0]

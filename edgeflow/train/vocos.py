"""Training the "vocos" family (:mod:`edgeflow.models.vocos`) on recordings: a reconstruction objective on the
maximum-likelihood trainer's loop (:class:`edgeflow.train.trainer.Trainer` picks it by the recipe's family).

The objective is the log-mel L1 of the output against the recording's, weighted by ``mel_weight``, plus the
multi-resolution STFT loss (spectral convergence + log-magnitude L1 at 512 / 1024 / 2048 points,
:func:`edgeflow.audio.losses.mr_stft_loss`), weighted by ``stft_weight``. The shipped recipe has no
discriminator (``adv_weight`` 0). Vocos as published adds multi-period and multi-resolution discriminators; with
``adv_weight`` > 0 a multi-resolution one (UnivNet's MRD, narrowed to ``disc_channels`` and run on
``disc_rows`` crops of ``disc_segment`` samples so that it fits a CPU step) trains beside the vocoder, with
least-squares GAN and feature-matching terms (``fm_weight``); bench/results/fm_tts.md measures both.

With ``pairs`` (a folder from ``edgeflow corpus pairs``, :mod:`edgeflow.pipeline_pairs`) a share
``pairs_fraction`` of every batch is (an acoustic model's log-mel, a teacher vocoder's audio of it) instead of
(a recording's log-mel, the recording): the vocoder then learns the mels it will be driven by.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple, Union

import torch

from edgeflow.audio.losses import mr_stft_loss
from edgeflow.train.recipe import TrainConfig


@dataclasses.dataclass
class VocosTrainConfig(TrainConfig):
    """:class:`TrainConfig` plus the loss weights (log-mel L1, multi-resolution STFT), the training pairs
    (``pairs``: a folder from ``edgeflow corpus pairs``, "" for none; ``pairs_fraction`` of each batch) and the
    optional discriminator (``adv_weight`` 0 = none; ``fm_weight``, ``disc_channels``, ``disc_rows``,
    ``disc_segment``, ``disc_lr``: see :class:`ReconstructionObjective`)."""

    mel_weight: float = 15.0
    stft_weight: float = 1.0
    pairs: str = ""
    pairs_fraction: float = 0.5
    adv_weight: float = 0.0
    fm_weight: float = 2.0
    disc_channels: int = 16
    disc_rows: int = 4
    disc_segment: int = 8192
    disc_lr: float = 2e-4

    def __post_init__(self):
        super().__post_init__()
        if self.mel_weight < 0 or self.stft_weight < 0 or self.mel_weight + self.stft_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got mel_weight={self.mel_weight!r}, "
                             f"stft_weight={self.stft_weight!r}")
        if self.adv_weight < 0 or self.fm_weight < 0 or self.disc_lr <= 0 or self.disc_channels < 1 \
                or self.disc_rows < 1 or self.disc_segment < 1024:
            raise ValueError("adv_weight and fm_weight must be >= 0, disc_lr > 0, disc_channels and disc_rows >= 1, "
                             f"disc_segment >= 1024 (got {self.adv_weight}, {self.fm_weight}, {self.disc_lr}, "
                             f"{self.disc_channels}, {self.disc_rows}, {self.disc_segment})")
        if not 0.0 < self.pairs_fraction <= 1.0:
            raise ValueError(f"pairs_fraction must be in (0, 1], got {self.pairs_fraction!r}")


class ReconstructionObjective:
    """``mel_weight`` x log-mel L1 + ``stft_weight`` x MR-STFT of the vocoded audio against the target audio, and
    with ``adv_weight`` > 0 the least-squares GAN and feature-matching terms of a multi-resolution spectrogram
    discriminator (UnivNet's MRD, :mod:`edgeflow.train.discriminator`, ``disc_channels`` wide) trained beside the
    vocoder: each step it takes one Adam step (``disc_lr``) on random ``disc_segment``-sample crops of the first
    ``disc_rows`` rows (real: the target audio; fake: the output), then scores the output's crops for the vocoder.
    The discriminator's state is part of the train state (:meth:`state_dict`).

    Args:
        mel: the model's :class:`edgeflow.audio.mel_torch.LogMel` front-end.
        cfg: the recipe's :class:`VocosTrainConfig`.
    """

    def __init__(self, mel: torch.nn.Module, cfg: VocosTrainConfig):
        self.mel, self.cfg = mel, cfg
        self.disc = self.disc_opt = None
        if cfg.adv_weight > 0:
            from edgeflow.train.discriminator import MultiResolutionDiscriminator

            self.disc = MultiResolutionDiscriminator(channels=cfg.disc_channels).to(mel.basis.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.8, 0.99))

    def loss(self, model: torch.nn.Module, batch: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
             ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """(scalar loss, {"mel_l1", "mr_stft"[, "d_loss", "g_adv", "g_fm"]}) of a batch: audio [B, T] (T a multiple
        of the hop; the input mels are the audio's), or (audio [B, T], mel [P, n_mels, T / hop]) where the last P
        rows' input mels are given (training pairs). The mel L1 compares the output's log-mel with the target's."""
        audio, given = batch if isinstance(batch, (tuple, list)) else (batch, None)
        target_mel = self.mel(audio)
        inputs = target_mel
        if given is not None:
            inputs = torch.cat([target_mel[:len(audio) - len(given)], given.to(target_mel.dtype)])
        pred = model(inputs)
        mel_l1 = torch.nn.functional.l1_loss(self.mel(pred), target_mel)
        stft = mr_stft_loss(pred, audio)
        loss = self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * stft
        logs = {"mel_l1": float(mel_l1.detach()), "mr_stft": float(stft.detach())}
        if self.disc is not None and model.training:
            adv, adv_logs = self._adversarial(audio, pred)
            loss, logs = loss + adv, {**logs, **adv_logs}
        return loss, logs

    def _adversarial(self, audio: torch.Tensor, pred: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """One discriminator step on crops of the first rows, then the vocoder's GAN + feature-matching terms."""
        from edgeflow.train.discriminator import discriminator_loss, feature_matching_loss, generator_adv_loss

        cfg = self.cfg
        rows, seg = min(cfg.disc_rows, len(audio)), min(cfg.disc_segment, audio.shape[-1])
        off = int(torch.randint(0, audio.shape[-1] - seg + 1, ()))
        real, fake = audio[:rows, off:off + seg], pred[:rows, off:off + seg]
        self.disc.requires_grad_(True)
        d_loss = discriminator_loss(self.disc(real), self.disc(fake.detach()))
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)
        self.disc.requires_grad_(False)          # the vocoder's step must not touch the discriminator
        with torch.no_grad():
            real_out = self.disc(real)
        fake_out = self.disc(fake)
        g_adv, g_fm = generator_adv_loss(fake_out), feature_matching_loss(real_out, fake_out)
        return cfg.adv_weight * g_adv + cfg.fm_weight * g_fm, {
            "d_loss": float(d_loss.detach()), "g_adv": float(g_adv.detach()), "g_fm": float(g_fm.detach())}

    def valid(self, model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss on validation segments (no adversarial terms; no gradients needed)."""
        return self.loss(model, audio)[0]

    def state_dict(self) -> Dict[str, Any]:
        """The discriminator and its optimizer ({} without one)."""
        if self.disc is None:
            return {}
        return {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an empty state (a run resumed with the discriminator newly on) keeps the
        fresh discriminator."""
        if self.disc is not None and state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])

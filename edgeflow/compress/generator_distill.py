"""Distillation of a (pruned) HiFi-GAN generator against its teacher's audio, window by window.

The data are aligned windows ``(cond [N, C, F], audio [N, 1, (F - 2 * margin) * hop])``: what the generator reads
(a VITS latent z, a vocoder's mel) and what the teacher produced from the same input (for VITS: the whole teacher's
audio with the same durations and noise, see :mod:`edgeflow.compress.vits_decoder_data`). ``margin`` frames each
side are context only: the student's output there is cut off before the loss, so the window's zero padding does
not make the target unreachable (a margin of the generator's receptive field makes the target exact). Loss::

    pred = student(cond, g)[..., margin * hop : -margin * hop]
    loss = mel_weight * |logmel(pred) - logmel(audio)|_1 + stft_weight * MR-STFT(pred, audio)
           + wave_weight * mean |pred - audio|

(:func:`edgeflow.audio.losses.log_mel_l1`, :func:`edgeflow.audio.losses.mr_stft_loss`,
:func:`edgeflow.audio.losses.waveform_l1`). The sample term (off by default) is possible here because the
target is the teacher's own output for the same input, phase included: spectral losses alone leave the student
free to drift in phase. With ``adv_weight`` > 0 a multi-resolution spectrogram discriminator
(:mod:`edgeflow.train.discriminator`, trained from scratch beside the student from step ``adv_start`` on, the
teacher's audio as "real") adds HiFi-GAN's least-squares adversarial term and, at ``fm_weight``, feature
matching::

    loss += adv_weight * E(1 - D(pred))^2 + fm_weight * |D_feats(audio) - D_feats(pred)|_1

each step first updating the discriminator (its own AdamW at ``disc_lr``) on the detached prediction. AdamW;
the batch of step k is a seeded draw of window indices depending only on (seed, k), so a run is deterministic on
one machine. Validation: the weighted mel + STFT (+ sample) loss, never the adversarial terms, no gradients, on
held-out windows every ``valid_every`` steps (and before the first); the best student is kept (``keep``
"best"), or the last one (``keep`` "last": what the adversarial terms improve, the spectral distance does not
measure). Stops at ``steps``, after ``max_minutes`` or after ``patience`` validations without improvement. The
loop is :class:`edgeflow.train.loop.TrainLoop` (progress bar with an ETA, the cost printed after a timed first
step). With ``state_path`` a run keeps its state there (student, optimizers, discriminator, counters; every 5
minutes and at the end) and a later call with the same ``state_key`` resumes it
(:class:`edgeflow.compress.window_loop.WindowState`): a long adversarial distillation can run in several parts.

Example::

    data = GeneratorWindows(cond=z, audio=wav, margin=4)      # z [N, 192, 40], wav [N, 1, 8192]
    train, valid = data.split(valid_fraction=0.1)
    settings = GeneratorDistillSettings(steps=600, max_minutes=10, batch=8)
    summary = distill_generator(student, train, valid, LogMel(mel_cfg), settings)   # student holds the best
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from edgeflow.train.discriminator import (MultiResolutionDiscriminator, discriminator_loss,
                                             feature_matching_loss, generator_adv_loss)
from edgeflow.audio.losses import log_mel_l1, mr_stft_loss, waveform_l1
from edgeflow.compress.window_loop import WindowState, train_windows
from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import ConfigError


@dataclasses.dataclass
class GeneratorDistillSettings(ConfigBase):
    """Options of :func:`distill_generator`.

    Attributes:
        steps, max_minutes: stop at this step or once this much training time passed (0: no cap).
        lr, weight_decay, betas: AdamW.
        batch: windows per step.
        mel_weight, stft_weight, wave_weight: loss weights (log-mel L1, multi-resolution STFT, sample L1).
        grad_clip: max gradient norm.
        valid_every: steps between validations (0: validate only before and after).
        patience: stop after this many validations without improvement (0: never).
        seed: the window draws (and the discriminator's initialization).
        threads: torch CPU threads during the run (0: leave as is).
        adv_weight: weight of the least-squares adversarial term (0: no discriminator).
        fm_weight: weight of the discriminator feature matching (needs adv_weight > 0).
        adv_start: steps of spectral losses alone before the discriminator and its terms start.
        disc_lr: the discriminator's AdamW learning rate (same betas).
        disc_channels: hidden width of each sub-discriminator.
        keep: "best" (lowest validation value) or "last" weights at the end.
    """

    steps: int = 600
    max_minutes: float = 10.0
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.8, 0.99)
    batch: int = 8
    mel_weight: float = 1.0
    stft_weight: float = 1.0
    wave_weight: float = 0.0
    grad_clip: float = 10.0
    valid_every: int = 50
    patience: int = 0
    seed: int = 0
    threads: int = 0
    adv_weight: float = 0.0
    fm_weight: float = 0.0
    adv_start: int = 0
    disc_lr: float = 2e-4
    disc_channels: int = 32
    keep: str = "best"

    def __post_init__(self):
        if self.steps < 0 or self.batch < 1 or self.valid_every < 0 or self.patience < 0:
            raise ValueError("steps, valid_every, patience must be >= 0 and batch >= 1")
        if not (self.lr > 0 and self.max_minutes >= 0 and self.grad_clip > 0 and self.weight_decay >= 0):
            raise ValueError("lr and grad_clip must be > 0, max_minutes and weight_decay >= 0")
        if min(self.mel_weight, self.stft_weight, self.wave_weight) < 0 \
                or self.mel_weight + self.stft_weight + self.wave_weight <= 0:
            raise ValueError("mel_weight, stft_weight and wave_weight must be >= 0, not all 0")
        self.betas = tuple(float(b) for b in self.betas)
        if self.adv_weight < 0 or self.fm_weight < 0 or self.adv_start < 0 or not self.disc_lr > 0 \
                or self.disc_channels < 1:
            raise ValueError("adv_weight, fm_weight and adv_start must be >= 0, disc_lr > 0, disc_channels >= 1")
        if self.fm_weight > 0 and self.adv_weight == 0:
            raise ValueError("fm_weight needs a discriminator: set adv_weight > 0")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")


@dataclasses.dataclass
class GeneratorWindows:
    """Aligned windows: generator input ``cond`` [N, C, F], target ``audio`` [N, 1, (F - 2 * margin) * hop] (the
    centre frames), optional speaker conditioning ``g`` [N, gin, 1], ``margin`` context frames each side."""

    cond: torch.Tensor
    audio: torch.Tensor
    g: Optional[torch.Tensor] = None
    margin: int = 0

    def __post_init__(self):
        if self.cond.dim() != 3 or self.audio.dim() != 3 or self.audio.shape[1] != 1 \
                or self.cond.shape[0] != self.audio.shape[0] or self.cond.shape[0] == 0:
            raise ConfigError(f"generator windows: need cond [N, C, F] and audio [N, 1, T] with N >= 1, got "
                              f"{tuple(self.cond.shape)} and {tuple(self.audio.shape)}")
        centre = self.cond.shape[2] - 2 * self.margin
        if self.margin < 0 or centre < 1 or self.audio.shape[2] % centre:
            raise ConfigError(f"generator windows: audio length {self.audio.shape[2]} must be a multiple of the "
                              f"{centre} centre frames ({self.cond.shape[2]} frames, margin {self.margin})")

    @property
    def hop(self) -> int:
        return self.audio.shape[2] // (self.cond.shape[2] - 2 * self.margin)

    def __len__(self) -> int:
        return self.cond.shape[0]

    def take(self, idx: torch.Tensor) -> "GeneratorWindows":
        return GeneratorWindows(self.cond[idx], self.audio[idx], None if self.g is None else self.g[idx], self.margin)

    def split(self, valid_fraction: float = 0.1) -> Tuple["GeneratorWindows", "GeneratorWindows"]:
        """(train, valid): the last ``valid_fraction`` of the windows (at least one) held out, in order (group
        windows by sentence before splitting so no sentence is in both)."""
        n_valid = min(len(self) - 1, max(1, int(round(len(self) * valid_fraction))))
        if n_valid < 1:
            raise ConfigError("generator windows: need at least 2 windows to hold one out")
        idx = torch.arange(len(self))
        return self.take(idx[:-n_valid]), self.take(idx[-n_valid:])


class _Adversary:
    """The discriminator and its optimizer; :meth:`step` trains it once and returns the generator's terms."""

    def __init__(self, s: GeneratorDistillSettings):
        with torch.random.fork_rng():
            torch.manual_seed(s.seed)
            self.disc = MultiResolutionDiscriminator(channels=s.disc_channels)
        self.opt = torch.optim.AdamW(self.disc.parameters(), lr=s.disc_lr, betas=s.betas)

    def state_dict(self) -> Dict[str, Any]:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])

    def step(self, pred: torch.Tensor, target: torch.Tensor, fm: bool) -> Dict[str, torch.Tensor]:
        """One discriminator update on (target [B, T] real, pred [B, T] detached fake), then the generator's
        terms "adv" and, with ``fm``, "fm" (differentiable in ``pred``) and the discriminator's loss "disc"
        (before its update)."""
        disc = self.disc.requires_grad_(True)
        d_loss = discriminator_loss(disc(target), disc(pred.detach()))
        if bool(torch.isfinite(d_loss)):
            self.opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        disc.requires_grad_(False)
        fake = disc(pred)
        terms = {"disc": d_loss.detach(), "adv": generator_adv_loss(fake)}
        if fm:
            with torch.no_grad():
                real = disc(target)                 # the updated discriminator's maps of the teacher's audio
            terms["fm"] = feature_matching_loss(real, fake)
        return terms


class _Objective:
    def __init__(self, logmel: nn.Module, s: GeneratorDistillSettings):
        self.logmel, self.s = logmel, s
        self.adversary = _Adversary(s) if s.adv_weight > 0 else None
        self.calls = 0

    def state_dict(self) -> Dict[str, Any]:
        """The resume state: the step counter and, with a discriminator, its weights and optimizer."""
        return {"calls": self.calls, **({"adversary": self.adversary.state_dict()} if self.adversary else {})}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])

    @staticmethod
    def _pair(model: nn.Module, batch: GeneratorWindows) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prediction [B, T], target [B, T]): the student's centre samples and the teacher's."""
        cut = batch.margin * batch.hop
        pred = model(batch.cond, batch.g)[:, 0].float()
        return pred[:, cut:pred.shape[1] - cut], batch.audio[:, 0].float()

    def _matching(self, pred: torch.Tensor, t: torch.Tensor) -> Dict[str, torch.Tensor]:
        parts = {}
        total = pred.new_zeros(())
        if self.s.mel_weight > 0:
            parts["mel"] = log_mel_l1(self.logmel, pred, t)
            total = total + self.s.mel_weight * parts["mel"]
        if self.s.stft_weight > 0:
            parts["stft"] = mr_stft_loss(pred, t)
            total = total + self.s.stft_weight * parts["stft"]
        if self.s.wave_weight > 0:
            parts["wave"] = waveform_l1(pred, t)
            total = total + self.s.wave_weight * parts["wave"]
        parts["total"] = total
        return parts

    def terms(self, model: nn.Module, batch: GeneratorWindows) -> Dict[str, torch.Tensor]:
        """The matching terms (mel, stft, wave) and their weighted "total" (what validation measures)."""
        return self._matching(*self._pair(model, batch))

    def loss(self, model, batch, _u=None):
        pred, t = self._pair(model, batch)
        parts = self._matching(pred, t)
        step, self.calls = self.calls, self.calls + 1
        if self.adversary is not None and step >= self.s.adv_start:
            parts.update(self.adversary.step(pred, t, fm=self.s.fm_weight > 0))
            parts["total"] = parts["total"] + self.s.adv_weight * parts["adv"]
            if "fm" in parts:
                parts["total"] = parts["total"] + self.s.fm_weight * parts["fm"]
        return parts["total"], {k: float(v.detach()) for k, v in parts.items() if k != "total"}

    @torch.no_grad()
    def distance(self, gen: nn.Module, windows: GeneratorWindows) -> float:
        """The weighted loss over ``windows`` in batches, no gradients, ``gen`` in eval mode (its mode restored)."""
        was = gen.training
        gen.eval()
        total, n = 0.0, 0
        for a in range(0, len(windows), self.s.batch):
            part = windows.take(torch.arange(a, min(a + self.s.batch, len(windows))))
            total += float(self.terms(gen, part)["total"]) * len(part)
            n += len(part)
        gen.train(was)
        return total / n


def window_distance(gen: nn.Module, windows: GeneratorWindows, logmel: nn.Module,
                    settings: GeneratorDistillSettings) -> float:
    """The validation value of ``gen`` on ``windows`` (the weighted loss, no gradients): e.g. the unpruned
    generator's, the floor the window edges leave."""
    return _Objective(logmel, settings).distance(gen, windows)


def distill_generator(student: nn.Module, train: GeneratorWindows, valid: GeneratorWindows, logmel: nn.Module,
                      settings: GeneratorDistillSettings, progress: bool = True,
                      log: Optional[Callable[[str], None]] = print, desc: str = "distill generator",
                      state_path: Optional[Path] = None, state_key: str = "") -> Dict[str, Any]:
    """Train ``student`` (in place, on CPU) towards the windows' audio; it ends holding the best weights (or the
    last, ``settings.keep``).

    Args:
        state_path, state_key: keep resume state in this file, and resume it when its key is ``state_key``
            (None: no state; the key should name the settings that shape the run and the starting model).

    Returns:
        {"steps", "stopped", "valid_before", "valid_best", "best_step", "valid_curve" [[step, value]],
         "loss_first", "loss_last" (means of the first / last 10 steps), "train_seconds", "first_step_seconds",
         "resumed_at"}.
    """
    s = settings
    objective = _Objective(logmel, s)
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    state = None if state_path is None else WindowState(Path(state_path), state_key,
                                                        get_extra=objective.state_dict,
                                                        set_extra=objective.load_state_dict)
    return train_windows(student, objective.loss, train, lambda m: objective.distance(m, valid), len(valid), s,
                         progress, log, desc, optimizer=opt, digits=5, keep_best=s.keep == "best", state=state)

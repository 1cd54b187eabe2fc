"""Maximum-likelihood trainer: the loop of :mod:`edgeflow.train.loop` (Adam, gradient clipping, AMP on
GPU, exact resume, DDP under ``torchrun``: gloo on CPU, nccl on CUDA) with the likelihood objective,
plus a CSV log, atomic checkpoints and the best weights by validation NLL. The "vocos" family (an iSTFT vocoder,
not a flow) trains on the same loop with a reconstruction objective instead (:func:`make_objective`); its
``valid_nll`` column then holds that validation loss.

Run directory::

    RUN/recipe.json      the recipe trained
    RUN/train_state.pt   model + optimizer + step + RNG state (resume point), written atomically
    RUN/model.pt         the latest weights in the model.pt format
    RUN/best.pt          the weights with the best validation NLL
    RUN/log.csv          step, loss, grad_norm, lr, steps_per_s, samples_per_s, valid_nll, elapsed_s
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from edgeflow.audio.io import load_wav
from edgeflow.audio.mel_torch import LogMel
from edgeflow.core.errors import CheckpointError, ConfigError, short_reason
from edgeflow.core.io import atomic_path, atomic_write_json
from edgeflow.models.base import build_model, latent_nll_per_dim
from edgeflow.models.checkpoint import checkpoint_dict, model_from_checkpoint, save_model
from edgeflow.train.data import MixedSampler, PairSampler, SegmentSampler, center_segments, split_wavs
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop
from edgeflow.train.recipe import Recipe

LOG_FIELDS = ["step", "loss", "grad_norm", "lr", "steps_per_s", "samples_per_s", "valid_nll", "elapsed_s"]


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


class LikelihoodObjective:
    """Maximum likelihood: the NLL per sample (nats/dim) of an audio batch [B, T] given its log-mel.

    Args:
        mel: the model's :class:`edgeflow.audio.mel_torch.LogMel` front-end (on the training device).
        sigma: the prior's standard deviation (the config's ``sigma_train``).
        amp: run the flow under float16 autocast (CUDA).
    """

    def __init__(self, mel: torch.nn.Module, sigma: float, amp: bool = False):
        self.mel, self.sigma, self.amp = mel, sigma, amp

    def loss(self, model: torch.nn.Module, audio: torch.Tensor):
        mel = self.mel(audio)
        with torch.autocast("cuda", enabled=self.amp):
            z, logdet = model(audio, mel)
        return latent_nll_per_dim(z.float(), logdet.float(), self.sigma), {}

    def valid(self, model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
        """Validation NLL (nats/dim) of an audio batch [B, T]."""
        return model.nll_per_dim(audio, self.mel(audio))


def make_objective(recipe: Recipe, mel: torch.nn.Module, amp: bool):
    """The recipe family's objective: reconstruction for the "vocos" family (:mod:`edgeflow.train.vocos`),
    maximum likelihood for the flow vocoders."""
    if recipe.family == "vocos":
        from edgeflow.train.vocos import ReconstructionObjective

        return ReconstructionObjective(mel, recipe.train)
    return LikelihoodObjective(mel, recipe.model.sigma_train, amp)


class Trainer(LoopHooks):
    """Trains ``recipe`` on a corpus folder into ``out_dir``. See the module docstring."""

    def __init__(self, recipe: Recipe, data_dir: str | Path, out_dir: str | Path, device: str = "cpu",
                 progress: bool = True):
        self.recipe, self.cfg = recipe, recipe.train
        self.data_dir, self.out = Path(data_dir), Path(out_dir)
        self.world, self.rank = _dist_info()
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend)
            if device.startswith("cuda"):
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        if self.world > 1 and getattr(self.cfg, "adv_weight", 0) > 0:
            raise ConfigError("the vocos discriminator (adv_weight > 0) is not distributed: train it in one process")
        if self.cfg.batch_size % self.world:
            raise ConfigError(f"batch_size {self.cfg.batch_size} is not divisible by {self.world} processes")
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(recipe.family, recipe.model).to(self.device)
        mult = self.model.length_multiple
        if self.cfg.segment_length % mult or self.cfg.valid_segment % mult:
            raise ConfigError(f"segment lengths must be multiples of {mult}")
        use_amp = self.cfg.amp and self.device.type == "cuda"
        self.mel = LogMel(recipe.model.mel).to(self.device)
        self.ddp = None
        if self.world > 1:
            # find_unused_parameters: WaveFlow's last residual layer has a res_conv whose output is unused.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        c = self.cfg
        settings = LoopSettings(steps=c.steps, lr=c.lr, grad_clip=c.grad_clip, lr_decay_every=c.lr_decay_every,
                                lr_decay=c.lr_decay, valid_every=c.valid_every, ckpt_every=c.ckpt_every,
                                ckpt_at_end=True, amp=use_amp, desc="train")
        self.objective = make_objective(recipe, self.mel, use_amp)
        self.loop = TrainLoop(self.model, self.objective, self,
                              settings, net=self.ddp, is_main=self.rank == 0, progress=self.progress)
        self.opt, self.scaler = self.loop.opt, self.loop.scaler

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def best_valid(self) -> float:
        return self.loop.best

    # -- state -------------------------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def save(self, step: int) -> None:
        loop = self.loop.state_dict()
        state = {"model": checkpoint_dict(self.model, meta=self._meta()), "optimizer": loop["optimizer"],
                 "step": loop["step"], "best_valid": loop["best"], "best_step": loop["best_step"],
                 "torch_rng": torch.get_rng_state(), "scaler": loop["scaler"], "recipe_family": self.recipe.family}
        if hasattr(self.objective, "state_dict"):
            state["objective"] = self.objective.state_dict()
        with atomic_path(self.state_path()) as tmp:
            torch.save(state, tmp)
        save_model(self.out / "model.pt", self.model, meta=self._meta())

    save_state = save

    def load_state(self) -> None:
        try:
            state = torch.load(self.state_path(), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt, truncated or unsafe file is a user error
            raise CheckpointError(f"{self.state_path()}: cannot resume, unreadable train state "
                                  f"({short_reason(exc)}); delete it to start over") from None
        if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
            raise CheckpointError(f"{self.state_path()}: cannot resume, not an edgeflow train state")
        loaded = model_from_checkpoint(state["model"], str(self.state_path()))
        self.model.load_state_dict(loaded.state_dict())
        self.loop.load_state_dict({"optimizer": state["optimizer"], "scaler": state.get("scaler"),
                                   "step": state["step"], "best": state.get("best_valid", math.inf),
                                   "best_step": state.get("best_step", 0)})
        torch.set_rng_state(state["torch_rng"])
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state.get("objective") or {})

    def _trim_log(self, log_path: Path) -> None:
        """Start log.csv, or on resume drop the rows after the resumed step (they are about to be redone)."""
        rows = []
        if log_path.exists():
            with open(log_path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and r[0].isdigit() and int(r[0]) <= self.step]
        tmp = log_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([LOG_FIELDS, *rows])
        os.replace(tmp, log_path)

    def _meta(self) -> Dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "step": self.step, "best_valid_nll": self.best_valid,
                "data": str(self.data_dir)}

    # -- loop hooks --------------------------------------------------------------------------------------------
    def batch(self, step: int):
        """audio [B, T]; with training pairs (vocos) (audio [B, T], the pair rows' mels [P, n_mels, T / hop])."""
        per_rank = self.cfg.batch_size // self.world
        out = self._sampler.batch(step, per_rank, self.rank)
        if isinstance(out, tuple):
            return tuple(torch.from_numpy(a).to(self.device) for a in out)
        return torch.from_numpy(out).to(self.device)

    def validate(self, segments: Optional[np.ndarray] = None) -> float:
        """Mean validation loss of ``segments`` (default: the run's fixed validation segments): the NLL (nats/dim)
        for the flow vocoders, the reconstruction loss for "vocos"."""
        segments = self._valid if segments is None else segments
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(segments), 4):
                audio = torch.from_numpy(segments[i:i + 4]).to(self.device)
                total += self.objective.valid(self.model, audio).item() * len(audio)
        self.model.train()
        return total / len(segments)

    def on_valid(self, step: int, value: float, improved: bool) -> None:
        if improved:
            save_model(self.out / "best.pt", self.model, meta=self._meta())

    def on_step(self, step: int, loss: float, logs: Dict[str, Any], grad_norm: float,
                valid: Optional[float]) -> None:
        cfg = self.cfg
        if self.rank != 0 or not (step % cfg.log_every == 0 or valid is not None or step == self.loop.s.steps):
            return
        now = time.time()
        sps = (step - self._s_last) / max(now - self._t_last, 1e-9)
        self._t_last, self._s_last = now, step
        with open(self.out / "log.csv", "a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6f}", f"{grad_norm:.4f}", f"{self.opt.param_groups[0]['lr']:.3g}",
                                    f"{sps:.4f}", f"{sps * cfg.batch_size * cfg.segment_length:.1f}",
                                    "" if valid is None else f"{valid:.6f}", f"{now - self._t0:.1f}"])

    # -- run ---------------------------------------------------------------------------------------------------
    def train(self, steps: Optional[int] = None, resume: bool = False) -> Dict[str, Any]:
        """Run until ``steps`` (default: the recipe's). Returns a summary dict."""
        cfg = self.cfg
        self.loop.s.steps = int(steps if steps is not None else cfg.steps)
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.state_path().exists():
            self.load_state()
        elif self.rank == 0:
            atomic_write_json(self.out / "recipe.json", self.recipe.to_dict())
        sr = self.recipe.model.mel.sample_rate
        self._sampler = SegmentSampler.from_paths(split_wavs(self.data_dir, "train"), sr, cfg.segment_length,
                                                  cfg.seed)
        if getattr(cfg, "pairs", ""):
            mel_cfg = self.recipe.model.mel
            pairs = PairSampler.from_dir(cfg.pairs, sr, cfg.segment_length, mel_cfg.hop_length, cfg.seed,
                                         math.log(mel_cfg.log_clamp))
            self._sampler = MixedSampler(self._sampler, pairs, cfg.pairs_fraction)
        valid_wavs = split_wavs(self.data_dir, "valid")[:cfg.valid_clips]
        self._valid = center_segments([load_wav(p, sr)[0] for p in valid_wavs], cfg.valid_segment)
        if self.rank == 0:
            self._trim_log(self.out / "log.csv")
        self._t0 = self._t_last = time.time()
        self._s_last = self.step
        self.model.train()
        self.loop.last_loss = None
        self.loop.run()
        if self.world > 1:
            torch.distributed.barrier()
        return {"steps": self.step, "final_loss": self.loop.last_loss,
                "best_valid_nll": self.best_valid if math.isfinite(self.best_valid) else None,
                "seconds": time.time() - self._t0}

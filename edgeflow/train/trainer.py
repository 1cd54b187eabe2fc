"""Maximum-likelihood trainer: Adam, gradient clipping, AMP on GPU, CSV log, atomic checkpoints,
exact resume, and DDP under ``torchrun`` (gloo on CPU, nccl on CUDA).

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
from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.core.io import atomic_path, atomic_write_json
from edgeflow.models.base import build_model
from edgeflow.models.checkpoint import checkpoint_dict, model_from_checkpoint, save_model
from edgeflow.train.data import SegmentSampler, center_segments, split_wavs
from edgeflow.train.recipe import Recipe

LOG_FIELDS = ["step", "loss", "grad_norm", "lr", "steps_per_s", "samples_per_s", "valid_nll", "elapsed_s"]


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


class Trainer:
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
        if self.cfg.batch_size % self.world:
            raise ConfigError(f"batch_size {self.cfg.batch_size} is not divisible by {self.world} processes")
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(recipe.family, recipe.model).to(self.device)
        mult = self.model.length_multiple
        if self.cfg.segment_length % mult or self.cfg.valid_segment % mult:
            raise ConfigError(f"segment lengths must be multiples of {mult}")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.use_amp = self.cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.mel = LogMel(recipe.model.mel).to(self.device)
        self.step = 0
        self.best_valid = math.inf
        self.ddp = None
        if self.world > 1:
            # find_unused_parameters: WaveFlow's last residual layer has a res_conv whose output is unused.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    # -- state -------------------------------------------------------------------------------------------------
    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def save_state(self) -> None:
        state = {"model": checkpoint_dict(self.model, meta=self._meta()), "optimizer": self.opt.state_dict(),
                 "step": self.step, "best_valid": self.best_valid, "torch_rng": torch.get_rng_state(),
                 "scaler": self.scaler.state_dict(), "recipe_family": self.recipe.family}
        with atomic_path(self.state_path()) as tmp:
            torch.save(state, tmp)
        save_model(self.out / "model.pt", self.model, meta=self._meta())

    def load_state(self) -> None:
        try:
            state = torch.load(self.state_path(), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt, truncated or unsafe file is a user error
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{self.state_path()}: cannot resume, unreadable train state ({msg}); "
                                  "delete it to start over") from None
        if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
            raise CheckpointError(f"{self.state_path()}: cannot resume, not an edgeflow train state")
        loaded = model_from_checkpoint(state["model"], str(self.state_path()))
        self.model.load_state_dict(loaded.state_dict())
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best_valid = float(state["best_valid"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

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

    # -- loop --------------------------------------------------------------------------------------------------
    def _lr(self) -> float:
        c = self.cfg
        k = self.step // c.lr_decay_every if c.lr_decay_every else 0
        return c.lr * (c.lr_decay ** k)

    def _loss(self, audio: torch.Tensor) -> torch.Tensor:
        mel = self.mel(audio)
        net = self.ddp if self.ddp is not None else self.model
        with torch.autocast("cuda", enabled=self.use_amp):
            z, logdet = net(audio, mel)
        z, logdet = z.float(), logdet.float()
        s = self.recipe.model.sigma_train
        n = audio.shape[1]
        nll = 0.5 * (z ** 2).sum(1) / s ** 2 + n * (math.log(s) + 0.5 * math.log(2 * math.pi)) - logdet
        return nll.mean() / n

    @torch.no_grad()
    def validate(self, segments: np.ndarray) -> float:
        self.model.eval()
        total = 0.0
        for i in range(0, len(segments), 4):
            audio = torch.from_numpy(segments[i:i + 4]).to(self.device)
            total += self.model.nll_per_dim(audio, self.mel(audio)).item() * len(audio)
        self.model.train()
        return total / len(segments)

    def train(self, steps: Optional[int] = None, resume: bool = False) -> Dict[str, Any]:
        """Run until ``steps`` (default: the recipe's). Returns a summary dict."""
        cfg = self.cfg
        total = int(steps if steps is not None else cfg.steps)
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.state_path().exists():
            self.load_state()
        elif self.rank == 0:
            atomic_write_json(self.out / "recipe.json", self.recipe.to_dict())
        sr = self.recipe.model.mel.sample_rate
        sampler = SegmentSampler.from_paths(split_wavs(self.data_dir, "train"), sr, cfg.segment_length, cfg.seed)
        valid = center_segments([load_wav(p, sr)[0] for p in split_wavs(self.data_dir, "valid")[:cfg.valid_clips]],
                                cfg.valid_segment)
        log_path = self.out / "log.csv"
        if self.rank == 0:
            self._trim_log(log_path)
        per_rank = cfg.batch_size // self.world
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        t0, t_last, s_last = time.time(), time.time(), self.step
        valid_nll = ""
        loss = None
        self.model.train()
        while self.step < total:
            for g in self.opt.param_groups:
                g["lr"] = self._lr()
            audio = torch.from_numpy(sampler.batch(self.step, per_rank, self.rank)).to(self.device)
            loss = self._loss(audio)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.step += 1
            valid_nll = ""
            if cfg.valid_every and self.step % cfg.valid_every == 0 and self.rank == 0:
                v = self.validate(valid)
                valid_nll = f"{v:.6f}"
                if v < self.best_valid:
                    self.best_valid = v
                    save_model(self.out / "best.pt", self.model, meta=self._meta())
            if self.rank == 0 and (self.step % cfg.log_every == 0 or valid_nll or self.step == total):
                now = time.time()
                sps = (self.step - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, self.step
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([self.step, f"{loss.item():.6f}", f"{float(gnorm):.4f}", f"{self._lr():.3g}",
                                            f"{sps:.4f}", f"{sps * cfg.batch_size * cfg.segment_length:.1f}",
                                            valid_nll, f"{now - t0:.1f}"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", best_valid=f"{self.best_valid:.4f}")
            if self.rank == 0 and (self.step % cfg.ckpt_every == 0 or self.step == total):
                self.save_state()
        if bar is not None:
            bar.close()
        if self.world > 1:
            torch.distributed.barrier()
        return {"steps": self.step, "final_loss": None if loss is None else float(loss.item()),
                "best_valid_nll": self.best_valid if math.isfinite(self.best_valid) else None, "seconds": time.time() - t0}

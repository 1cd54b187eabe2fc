"""Distillation: a student flow learns the teacher's synthesis, the same noise z and mel for both.

Loss per step (synthesis direction, short segments; WaveFlow runs its cached row-by-row inverse)::

    s = student.inverse(sigma * z, mel),  t = teacher.inverse(sigma * z, mel)   (t without gradients)
    loss = l1_weight * |s - t|_1 + stft_weight * MR-STFT(s, t) + nll_weight * student NLL(audio | mel)
           + mel_weight * |logmel(s) - logmel(t)|_1

With ``target="audio"`` (spectral fine-tuning) t is the recorded segment the mel came from, and the
teacher is only the starting point: the sampling path is trained directly towards the recordings'
spectra while the NLL term keeps the model a likelihood-trained flow.

Segments, mels and z of step k depend only on (seed, k). State (student, Adam, step, best student,
early-stopping counters, elapsed time) is checkpointed atomically in ``work_dir/distill_state.pt``
every ``ckpt_every`` steps, so a killed run resumes exactly where it was. Validation (fixed segments
and z) measures the student-teacher MR-STFT distance every ``valid_every`` steps; the best student is
kept and training stops after ``patience`` validations without improvement, at ``steps`` or after
``max_minutes``. The cost is printed after a timed first step. On CUDA, float16 autocast + grad scaling.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from edgeflow.compress.losses import log_mel_l1, mr_stft_loss, waveform_l1
from edgeflow.compress.settings import DistillSettings, resolve_device, segment_length  # noqa: F401 (re-exported)
from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.core.io import atomic_path

STATE_FILE = "distill_state.pt"


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Distiller:
    """Trains ``student`` (in place) to reproduce ``teacher``'s synthesis. See the module docstring.

    Args:
        teacher, student: FlowVocoders of the same family and front-end (the teacher is copied, not changed).
        data: a :class:`edgeflow.compress.data.DistillData` with segments of :func:`segment_length`.
        settings: :class:`DistillSettings`.
        work_dir: where the state file goes.
        on_checkpoint: called with the step after each checkpoint (tests use it to kill a run).
    """

    def __init__(self, teacher, student, data, settings: DistillSettings, work_dir: str | Path,
                 progress: bool = True, log: Callable[[str], None] = print,
                 on_checkpoint: Optional[Callable[[int], None]] = None):
        self.s, self.data, self.work = settings, data, Path(work_dir)
        if settings.target == "audio" and not data.has_audio:
            raise ConfigError(f"distillation target 'audio' needs recordings, but {data.source} has none")
        self.progress, self.log, self.on_checkpoint = progress, log, on_checkpoint
        self.device = resolve_device(settings.device)
        self.amp = settings.amp and self.device.type == "cuda"
        self.teacher = copy.deepcopy(teacher).to(self.device).eval().requires_grad_(False)
        for m in student.modules():
            if callable(getattr(m, "unfreeze", None)):
                m.unfreeze()                      # frozen inverse 1x1 weights would go stale while training
        self.student = student.to(self.device).train().requires_grad_(True)
        self.sigma = settings.sigma or float(teacher.config.sigma_infer)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=settings.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.fingerprint = hashlib.sha256(json.dumps({
            "settings": {k: v for k, v in settings.to_dict().items() if k in (
                "batch_size", "segment", "lr", "grad_clip", "l1_weight", "stft_weight", "nll_weight", "sigma", "seed",
                "target", "mel_weight", "stft_sc")},
            "teacher": [teacher.config.to_dict(), weights_digest(teacher)],
            "student": [student.config.to_dict(), weights_digest(student)], "data": data.source,
        }, sort_keys=True, default=str).encode()).hexdigest()
        self.step, self.best, self.best_step, self.since_best = 0, math.inf, 0, 0
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.elapsed, self.rows, self.stopped = 0.0, [], ""
        self._valid_cache = None

    # -- data ----------------------------------------------------------------------------------------------------
    def _noise(self, key: int, batch: int, length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_seed(self.s.seed, key, 11))
        return torch.randn(batch, length, generator=g).to(self.device)

    def _outputs(self, z: torch.Tensor, mel: torch.Tensor, teacher: bool):
        with torch.autocast("cuda", enabled=self.amp):
            if teacher:
                with torch.no_grad():
                    return self.teacher.inverse(z * self.sigma, mel)[0].float()
            return self.student.inverse(z * self.sigma, mel)[0].float()

    def loss(self, step: int) -> Dict[str, torch.Tensor]:
        """Loss terms of ``step`` (with gradients into the student)."""
        audio, mel = self.data.batch(step, self.s.batch_size)
        mel = mel.to(self.device)
        z = self._noise(step, mel.shape[0], mel.shape[2] * self.student.hop_length)
        if self.s.target == "audio":
            t = audio.to(self.device).float()
        else:
            t = self._outputs(z, mel, True)
        s = self._outputs(z, mel, False)
        parts = {"l1": waveform_l1(s, t), "stft": mr_stft_loss(s, t, sc=self.s.stft_sc)}
        total = self.s.l1_weight * parts["l1"] + self.s.stft_weight * parts["stft"]
        if self.s.mel_weight > 0:
            parts["mel"] = log_mel_l1(self.data.logmel.to(self.device), s, t)
            total = total + self.s.mel_weight * parts["mel"]
        if self.s.nll_weight > 0:
            with torch.autocast("cuda", enabled=self.amp):
                parts["nll"] = self.student.nll_per_dim(audio.to(self.device), mel).float()
            total = total + self.s.nll_weight * parts["nll"]
        parts["total"] = total
        return parts

    def _distance(self, s: torch.Tensor, t: torch.Tensor) -> float:
        """The spectral terms of the loss, weighted as in it (MR-STFT alone when neither is weighted)."""
        w_stft, w_mel = self.s.stft_weight, self.s.mel_weight
        if w_mel <= 0:
            return float(mr_stft_loss(s, t, sc=self.s.stft_sc))
        mel = float(log_mel_l1(self.data.logmel.to(self.device), s, t))
        if w_stft <= 0:
            return mel
        return (w_stft * float(mr_stft_loss(s, t, sc=self.s.stft_sc)) + w_mel * mel) / (w_stft + w_mel)

    @torch.no_grad()
    def validate(self) -> float:
        """Spectral distance of the student to the target (teacher or audio) on fixed validation segments:
        MR-STFT, or with ``mel_weight`` the weighted mean of the MR-STFT and log-mel L1 terms of the loss."""
        if self._valid_cache is None:
            batches = self.data.valid_batches(self.s.batch_size)
            self._valid_cache = []
            for i, (audio, mel) in enumerate(batches):
                mel = mel.to(self.device)
                z = self._noise(10 ** 6 + i, mel.shape[0], mel.shape[2] * self.student.hop_length)
                t = audio.to(self.device).float() if self.s.target == "audio" else self._outputs(z, mel, True)
                self._valid_cache.append((mel, z, t))
        self.student.eval()
        d = [self._distance(self._outputs(z, mel, False), t) for mel, z, t in self._valid_cache]
        self.student.train()
        return float(np.mean(d))

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.work / STATE_FILE

    def save_state(self, done: bool = False) -> None:
        from edgeflow.models.checkpoint import checkpoint_dict

        state = {"fingerprint": self.fingerprint, "step": self.step, "done": done, "stopped": self.stopped,
                 "student": checkpoint_dict(self.student), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict(), "best": self.best, "best_step": self.best_step,
                 "since_best": self.since_best, "best_state": self.best_state, "elapsed": self.elapsed,
                 "rows": self.rows}
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> bool:
        """Resume from the state file if it belongs to this run. Returns whether it did."""
        if not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign file: a user-facing error
            raise CheckpointError(f"{self.state_path}: unreadable distillation state ({type(exc).__name__}); "
                                  "delete it to start over") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            self.log(f"distill: {self.state_path} belongs to other settings; starting over")
            return False
        self.student.load_state_dict(state["student"]["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best, self.best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
        self.since_best, self.best_state = int(state["since_best"]), state["best_state"]
        self.elapsed, self.rows, self.stopped = float(state["elapsed"]), list(state["rows"]), state["stopped"]
        return bool(state.get("done"))

    # -- loop --------------------------------------------------------------------------------------------------
    def _check_valid(self) -> None:
        v = self.validate()
        if v < self.best - 1e-9:
            self.best, self.best_step, self.since_best = v, self.step, 0
            self.best_state = {k: t.detach().cpu().clone() for k, t in self.student.state_dict().items()}
        else:
            self.since_best += 1
        self.rows.append([self.step, None, v])

    def run(self, resume: bool = True) -> Dict[str, Any]:
        """Train to the end (steps, time cap or early stop). Returns a summary; the student holds the best weights."""
        old = torch.get_num_threads()
        if self.s.threads:
            torch.set_num_threads(self.s.threads)
        try:
            return self._run(resume)
        finally:
            torch.set_num_threads(old)

    def _run(self, resume: bool) -> Dict[str, Any]:
        s = self.s
        self.work.mkdir(parents=True, exist_ok=True)
        done = self.load_state() if resume else False
        start_step, t_run, first, est = self.step, time.time(), None, None
        t_valid = time.time()
        if not done and self.best_state is None and s.valid_every:
            self._check_valid()                                    # the distance before training
        t_valid = time.time() - t_valid
        bar = None
        if not done and self.step < s.steps:
            self.log(f"distill: steps {self.step} -> {s.steps}; timing the first step to estimate the cost ...")
        while not done and self.step < s.steps and not self.stopped:
            t0 = time.time()
            parts = self.loss(self.step)
            self.opt.zero_grad(set_to_none=True)
            if torch.isfinite(parts["total"]):
                self.scaler.scale(parts["total"]).backward()
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), s.grad_clip)
                self.scaler.step(self.opt)
                self.scaler.update()
            self.step += 1
            loss = float(parts["total"].detach())
            self.rows.append([self.step, loss, None])
            if first is None:
                first = time.time() - t0
                left = s.steps - self.step
                est = first * left + (t_valid * (left // s.valid_every) if s.valid_every else 0.0)
                cap = f", capped at {s.max_minutes:g} min" if s.max_minutes else ""
                self.log(f"distill: {self.data.source}; {s.steps} steps of {s.batch_size} x {self.data.segment} "
                         f"samples on {self.device}; first step {first:.2f} s -> about {est / 60:.1f} min more on "
                         f"this machine{cap}")
                if self.progress:                                  # the bar starts below the estimate
                    from tqdm import tqdm
                    bar = tqdm(total=s.steps, initial=self.step - 1, desc="distill", unit="step", dynamic_ncols=True)
            if s.valid_every and self.step % s.valid_every == 0:
                self._check_valid()
                if s.patience and self.since_best >= s.patience:
                    self.stopped = f"early stop: no improvement in {s.patience} validations"
            self.elapsed += time.time() - t0                      # training and validation time
            if s.max_minutes and self.elapsed > 60 * s.max_minutes and not self.stopped:
                self.stopped = f"time cap of {s.max_minutes:g} min"
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", best=f"{self.best:.4f}")
            if s.ckpt_every and self.step % s.ckpt_every == 0:
                self.save_state()
                if self.on_checkpoint is not None:
                    self.on_checkpoint(self.step)
        if bar is not None:
            bar.close()
        if not done:
            if s.valid_every and (not self.rows or self.rows[-1][2] is None):
                self._check_valid()
            self.save_state(done=True)
        if self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        self.student.cpu().eval()
        valid0 = next((r[2] for r in self.rows if r[2] is not None), None)
        return {"steps": self.step, "steps_this_run": self.step - start_step, "stopped": self.stopped or "steps done",
                "valid_distance_before": valid0, "valid_distance_best": None if math.isinf(self.best) else self.best,
                "best_step": self.best_step, "train_seconds": round(self.elapsed, 2),
                "first_step_seconds": first, "estimated_seconds": est, "device": str(self.device),
                "data": self.data.source, "wall_seconds_this_run": round(time.time() - t_run, 2)}

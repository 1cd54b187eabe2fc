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

The loop is :class:`edgeflow.train.loop.TrainLoop`; this module adds the :class:`DistillObjective`
and the distillation state file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from edgeflow.audio.losses import log_mel_l1, mr_stft_loss, waveform_l1
from edgeflow.compress.settings import DistillSettings, resolve_device, segment_length  # noqa: F401 (re-exported)
from edgeflow.core.errors import CheckpointError, ConfigError, short_reason
from edgeflow.core.io import atomic_path
from edgeflow.flows.conv1x1 import Invertible1x1Conv, InvertibleLU1x1Conv
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop

STATE_FILE = "distill_state.pt"


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class DistillObjective:
    """The distillation loss of a batch ``(audio, mel, z)`` (see the module docstring).

    Args:
        teacher: the frozen teacher (on the device), or None with ``target="audio"``.
        settings: :class:`DistillSettings` (loss weights, target, stft_sc).
        sigma: the noise scale.
        logmel: the model's log-mel front-end (on the device).
        amp: float16 autocast (CUDA).
    """

    def __init__(self, teacher, settings: DistillSettings, sigma: float, logmel: torch.nn.Module, amp: bool):
        self.teacher, self.s, self.sigma, self.logmel, self.amp = teacher, settings, sigma, logmel, amp

    def synthesis(self, model, z: torch.Tensor, mel: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """model.inverse(sigma * z, mel) as float32 audio [B, T]."""
        with torch.autocast("cuda", enabled=self.amp), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return model.inverse(z * self.sigma, mel)[0].float()

    def target(self, audio: torch.Tensor, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """What the student's synthesis is compared with: the recording or the teacher's synthesis."""
        if self.s.target == "audio":
            return audio.float()
        return self.synthesis(self.teacher, z, mel, grad=False)

    def terms(self, student, batch: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Every weighted loss term of ``batch`` and their weighted sum ``"total"``."""
        audio, mel, z = batch
        t = self.target(audio, mel, z)
        s = self.synthesis(student, z, mel)
        parts = {"l1": waveform_l1(s, t), "stft": mr_stft_loss(s, t, sc=self.s.stft_sc)}
        total = self.s.l1_weight * parts["l1"] + self.s.stft_weight * parts["stft"]
        if self.s.mel_weight > 0:
            parts["mel"] = log_mel_l1(self.logmel, s, t)
            total = total + self.s.mel_weight * parts["mel"]
        if self.s.nll_weight > 0:
            with torch.autocast("cuda", enabled=self.amp):
                parts["nll"] = student.nll_per_dim(audio, mel).float()
            total = total + self.s.nll_weight * parts["nll"]
        parts["total"] = total
        return parts

    def loss(self, student, batch):
        parts = self.terms(student, batch)
        return parts["total"], {k: float(v.detach()) for k, v in parts.items() if k != "total"}

    def distance(self, s: torch.Tensor, t: torch.Tensor) -> float:
        """The spectral terms of the loss, weighted as in it (MR-STFT alone when neither is weighted)."""
        w_stft, w_mel = self.s.stft_weight, self.s.mel_weight
        if w_mel <= 0:
            return float(mr_stft_loss(s, t, sc=self.s.stft_sc))
        mel = float(log_mel_l1(self.logmel, s, t))
        if w_stft <= 0:
            return mel
        return (w_stft * float(mr_stft_loss(s, t, sc=self.s.stft_sc)) + w_mel * mel) / (w_stft + w_mel)


class Distiller(LoopHooks):
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
            if isinstance(m, (Invertible1x1Conv, InvertibleLU1x1Conv)):
                m.unfreeze()                      # frozen inverse 1x1 weights would go stale while training
        self.student = student.to(self.device).train().requires_grad_(True)
        self.sigma = settings.sigma or float(teacher.config.sigma_infer)
        self.objective = DistillObjective(self.teacher, settings, self.sigma, data.logmel.to(self.device), self.amp)
        self.loop = TrainLoop(self.student, self.objective, self, LoopSettings(
            steps=settings.steps, lr=settings.lr, grad_clip=settings.grad_clip, valid_every=settings.valid_every,
            ckpt_every=settings.ckpt_every, patience=settings.patience, max_minutes=settings.max_minutes,
            skip_nonfinite=True, amp=self.amp, desc="distill"), progress=progress, log=log)
        self.loop.context = (f"{data.source}; {settings.steps} steps of {settings.batch_size} x {data.segment} "
                             f"samples on {self.device}; ")
        self.fingerprint = hashlib.sha256(json.dumps({
            "settings": {k: v for k, v in settings.to_dict().items() if k in (
                "batch_size", "segment", "lr", "grad_clip", "l1_weight", "stft_weight", "nll_weight", "sigma", "seed",
                "target", "mel_weight", "stft_sc")},
            "teacher": [teacher.config.to_dict(), weights_digest(teacher)],
            "student": [student.config.to_dict(), weights_digest(student)], "data": data.source,
        }, sort_keys=True, default=str).encode()).hexdigest()
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.rows: list = []
        self._valid_cache = None

    @property
    def step(self) -> int:
        return self.loop.step

    # -- data and loss -----------------------------------------------------------------------------------------
    def _noise(self, key: int, batch: int, length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_seed(self.s.seed, key, 11))
        return torch.randn(batch, length, generator=g).to(self.device)

    def batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio [B, T], mel [B, n_mels, F], z [B, T]) of ``step``, on the device."""
        audio, mel = self.data.batch(step, self.s.batch_size)
        mel = mel.to(self.device)
        z = self._noise(step, mel.shape[0], mel.shape[2] * self.student.hop_length)
        return (audio.to(self.device) if audio is not None else None), mel, z     # None: a mel-only source

    def loss(self, step: int) -> Dict[str, torch.Tensor]:
        """Loss terms of ``step`` (with gradients into the student)."""
        return self.objective.terms(self.student, self.batch(step))

    def _distance(self, s: torch.Tensor, t: torch.Tensor) -> float:
        return self.objective.distance(s.to(self.device), t.to(self.device))

    @torch.no_grad()
    def validate(self) -> float:
        """Spectral distance of the student to the target (teacher or audio) on fixed validation segments:
        MR-STFT, or with ``mel_weight`` the weighted mean of the MR-STFT and log-mel L1 terms of the loss."""
        if self._valid_cache is None:
            self._valid_cache = []
            for i, (audio, mel) in enumerate(self.data.valid_batches(self.s.batch_size)):
                mel = mel.to(self.device)
                z = self._noise(10 ** 6 + i, mel.shape[0], mel.shape[2] * self.student.hop_length)
                audio = audio.to(self.device) if audio is not None else None        # None: a mel-only source
                self._valid_cache.append((mel, z, self.objective.target(audio, mel, z)))
        self.student.eval()
        d = [self.objective.distance(self.objective.synthesis(self.student, z, mel), t)
             for mel, z, t in self._valid_cache]
        self.student.train()
        return float(np.mean(d))

    # -- loop hooks --------------------------------------------------------------------------------------------
    def on_valid(self, step: int, value: float, improved: bool) -> None:
        if improved:
            self.best_state = {k: t.detach().cpu().clone() for k, t in self.student.state_dict().items()}
        self.rows.append([step, None, value])

    def on_step(self, step: int, loss: float, logs: Dict[str, Any], grad_norm: float, valid) -> None:
        # the loss row goes before this step's validation row
        self.rows.insert(len(self.rows) - (valid is not None), [step, loss, None])

    def save(self, step: int) -> None:
        self.save_state()
        if self.on_checkpoint is not None:
            self.on_checkpoint(step)

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.work / STATE_FILE

    def save_state(self, done: bool = False) -> None:
        from edgeflow.models.checkpoint import checkpoint_dict

        loop = self.loop.state_dict()
        state = {"fingerprint": self.fingerprint, "done": done, "student": checkpoint_dict(self.student),
                 "best_state": self.best_state, "rows": self.rows, **loop}
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> bool:
        """Resume from the state file if it belongs to this run. Returns whether it did."""
        if not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated or foreign file: a user-facing error
            raise CheckpointError(f"{self.state_path}: unreadable distillation state ({short_reason(exc)}); "
                                  "delete it to start over") from None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            self.log(f"distill: {self.state_path} belongs to other settings; starting over")
            return False
        self.student.load_state_dict(state["student"]["state_dict"])
        self.loop.load_state_dict(state)
        self.best_state, self.rows = state["best_state"], list(state["rows"])
        return bool(state.get("done"))

    # -- run ---------------------------------------------------------------------------------------------------
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
        s, loop = self.s, self.loop
        self.work.mkdir(parents=True, exist_ok=True)
        done = self.load_state() if resume else False
        start_step = loop.step
        summary = {"steps_this_run": 0, "first_step_seconds": None, "estimated_seconds": None,
                   "wall_seconds_this_run": 0.0}
        if not done:
            summary = loop.run(valid_first=self.best_state is None)   # the distance before training first
            if s.valid_every and (not self.rows or self.rows[-1][2] is None):
                loop.check_valid()
            self.save_state(done=True)
        if self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        self.student.cpu().eval()
        valid0 = next((r[2] for r in self.rows if r[2] is not None), None)
        return {"steps": loop.step, "steps_this_run": loop.step - start_step, "stopped": loop.stopped or "steps done",
                "valid_distance_before": valid0, "valid_distance_best": None if math.isinf(loop.best) else loop.best,
                "best_step": loop.best_step, "train_seconds": round(loop.elapsed, 2),
                "first_step_seconds": summary["first_step_seconds"], "estimated_seconds": summary["estimated_seconds"],
                "device": str(self.device), "data": self.data.source,
                "wall_seconds_this_run": summary["wall_seconds_this_run"]}

"""Distillation of a (pruned) flow-matching vector field against the unpruned one, on the teacher's own paths.

Data: :class:`edgeflow.compress.fm_field.FieldWindows` (states the voice passed through while solving
calibration sentences, each with the next state of its solve). Step k draws ``batch`` windows and a fraction
u ~ U(0, 1) per window (a seeded function of (seed, k)), moves each window to that fraction of the way to its
next state (x and t), and regresses the student's velocity on the teacher's at that point::

    loss = mean((student(x, cond, mask, t) - teacher(x, cond, mask, t))^2 over unmasked frames)

The teacher is queried on the fly (no stored targets). Validation: the same loss on held-out windows at fixed
fractions (u = 0.5), before training and every ``valid_every`` steps; the best student is kept. Stops at
``steps`` or after ``max_minutes``. The loop is :class:`edgeflow.train.loop.TrainLoop` (progress bar with an ETA,
the cost printed after a timed first step). No resume: a run lasts minutes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from edgeflow.compress.fm_field import FieldWindows
from edgeflow.core.config import ConfigBase
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop


@dataclasses.dataclass
class FieldDistillSettings(ConfigBase):
    """Options of :func:`distill_field`: steps / max_minutes (stop at either; 0 minutes: no cap), Adam ``lr``,
    ``batch`` windows per step, ``grad_clip``, ``valid_every`` steps, ``seed`` of the draws, torch ``threads``
    (0: leave as is)."""

    steps: int = 2000
    max_minutes: float = 5.0
    lr: float = 5e-4
    batch: int = 16
    grad_clip: float = 1.0
    valid_every: int = 100
    seed: int = 0
    threads: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch < 1 or self.valid_every < 0 or self.threads < 0:
            raise ValueError("steps, valid_every and threads must be >= 0 and batch >= 1")
        if not (self.lr > 0 and self.grad_clip > 0 and self.max_minutes >= 0):
            raise ValueError("lr and grad_clip must be > 0 and max_minutes >= 0")


def velocity_mse(student: nn.Module, teacher: nn.Module, part: FieldWindows, u: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity difference over unmasked frames at fractions ``u`` [N] (gradients into student)."""
    x, cond, mask, t = part.at(u)
    with torch.no_grad():
        target = teacher(x, cond, mask, t)
    diff = (student(x, cond, mask, t) - target) * mask
    return diff.pow(2).sum() / (mask.sum() * x.shape[1]).clamp_min(1.0)


class _Objective:
    def __init__(self, loss_fn: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]):
        self.loss_fn = loss_fn

    def loss(self, model, batch):
        part, u = batch
        value = self.loss_fn(model, part, u)
        return value, {"mse": float(value.detach())}


class _Hooks(LoopHooks):
    def __init__(self, student: nn.Module, valid_fn: Callable[[nn.Module], float], train: Any,
                 s: FieldDistillSettings):
        self.student, self.valid_fn, self.train, self.s = student, valid_fn, train, s
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.losses: List[float] = []
        self.valid_rows: List[List[float]] = []

    def batch(self, step: int):
        gen = torch.Generator().manual_seed(int(self.s.seed) * 1_000_003 + int(step))
        idx = torch.randint(len(self.train), (self.s.batch,), generator=gen)
        return self.train.take(idx), torch.rand(self.s.batch, generator=gen)

    @torch.no_grad()
    def validate(self) -> float:
        return self.valid_fn(self.student)

    def on_valid(self, step: int, value: float, improved: bool) -> None:
        if improved:
            self.best_state = {k: t.detach().clone() for k, t in self.student.state_dict().items()}
        self.valid_rows.append([step, value])

    def on_step(self, step, loss, logs, grad_norm, valid) -> None:
        self.losses.append(loss)


@torch.no_grad()
def field_distance(student: nn.Module, teacher: nn.Module, windows: FieldWindows, batch: int = 16) -> float:
    """The validation value: velocity MSE on ``windows`` at u = 0.5, no gradients (student left in its mode)."""
    was = student.training
    student.eval()
    total, n = 0.0, 0
    for a in range(0, len(windows), batch):
        part = windows.take(torch.arange(a, min(a + batch, len(windows))))
        total += float(velocity_mse(student, teacher, part, torch.full((len(part),), 0.5))) * len(part)
        n += len(part)
    student.train(was)
    return total / max(n, 1)


def _mean(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if math.isfinite(x)]
    return round(sum(xs) / len(xs), 6) if xs else None


def distill_field(student: nn.Module, teacher: nn.Module, train: FieldWindows, valid: FieldWindows,
                  settings: FieldDistillSettings, progress: bool = True,
                  log: Optional[Callable[[str], None]] = print, desc: str = "distill field") -> Dict[str, Any]:
    """Train ``student`` (in place, CPU) to match ``teacher``'s velocities; it ends holding the best weights.

    Returns:
        {"steps", "stopped", "valid_before", "valid_best", "best_step", "valid_curve" [[step, value]],
         "loss_first", "loss_last" (means of the first / last 10 steps), "train_seconds"}.
    """
    teacher.eval().requires_grad_(False)
    return train_field(student, lambda m, part, u: velocity_mse(m, teacher, part, u), train,
                       lambda m: field_distance(m, teacher, valid, settings.batch), len(valid), settings, progress,
                       log, desc)


def train_field(student: nn.Module, loss_fn: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor], train: Any,
                valid_fn: Callable[[nn.Module], float], n_valid: int, settings: FieldDistillSettings,
                progress: bool = True, log: Optional[Callable[[str], None]] = print,
                desc: str = "train field") -> Dict[str, Any]:
    """The loop behind :func:`distill_field` (and :func:`edgeflow.compress.fm_reflow.reflow_field`): step k draws
    ``batch`` windows of ``train`` (``.take(idx)``) and fractions u [batch] from (seed, k) and minimizes
    ``loss_fn(student, windows, u)``; ``valid_fn(student)`` is the validation value (lower is better; the best
    weights are kept). Returns the summary :func:`distill_field` documents."""
    s = settings
    old = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        student.train().requires_grad_(True)
        hooks = _Hooks(student, valid_fn, train, s)
        loop = TrainLoop(student, _Objective(loss_fn), hooks, LoopSettings(
            steps=s.steps, lr=s.lr, grad_clip=s.grad_clip, valid_every=s.valid_every, max_minutes=s.max_minutes,
            skip_nonfinite=True, desc=desc), progress=progress, log=log)
        loop.context = f"{len(train)} windows ({n_valid} held out), batch {s.batch}; "
        if not s.valid_every:
            loop.check_valid()
        loop.run(valid_first=bool(s.valid_every))
        if not hooks.valid_rows or hooks.valid_rows[-1][0] != loop.step:
            loop.check_valid()
        if hooks.best_state is not None:
            student.load_state_dict(hooks.best_state)
        student.eval()
    finally:
        torch.set_num_threads(old)
    return {"steps": loop.step, "stopped": loop.stopped or "steps done",
            "valid_before": round(hooks.valid_rows[0][1], 6) if hooks.valid_rows else None,
            "valid_best": None if math.isinf(loop.best) else round(loop.best, 6), "best_step": loop.best_step,
            "valid_curve": [[int(a), round(b, 6)] for a, b in hooks.valid_rows],
            "loss_first": _mean(hooks.losses[:10]), "loss_last": _mean(hooks.losses[-10:]),
            "train_seconds": round(loop.elapsed, 1)}

"""Distillation of a (pruned) flow-matching vector field against the unpruned one, on the teacher's own paths.

Data: :class:`edgeflow.compress.fm_field.FieldWindows` (states the voice passed through while solving
calibration sentences, each with the next state of its solve). Step k draws ``batch`` windows and a fraction
u ~ U(0, 1) per window (a seeded function of (seed, k)), moves each window to that fraction of the way to its
next state (x and t), and regresses the student's velocity on the teacher's at that point::

    loss = mean((student(x, cond, mask, t) - teacher(x, cond, mask, t))^2 over unmasked frames)

The teacher is queried on the fly (no stored targets). Validation: the same loss on held-out windows at fixed
fractions (u = 0.5), before training and every ``valid_every`` steps; the best student is kept. Stops at
``steps`` or after ``max_minutes``. The loop is :func:`edgeflow.compress.window_loop.train_windows` (an ETA,
the cost printed after a timed first step). No resume: a run lasts minutes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from edgeflow.compress.fm_field import FieldWindows
from edgeflow.compress.window_loop import logged, train_windows
from edgeflow.core.config import ConfigBase


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


def distill_field(student: nn.Module, teacher: nn.Module, train: FieldWindows, valid: FieldWindows,
                  settings: FieldDistillSettings, progress: bool = True,
                  log: Optional[Callable[[str], None]] = print, desc: str = "distill field") -> Dict[str, Any]:
    """Train ``student`` (in place, CPU) to match ``teacher``'s velocities; it ends holding the best weights.

    Returns:
        {"steps", "stopped", "valid_before", "valid_best", "best_step", "valid_curve" [[step, value]],
         "loss_first", "loss_last" (means of the first / last 10 steps), "train_seconds", "first_step_seconds"}
        (:func:`edgeflow.compress.window_loop.train_windows`).
    """
    teacher.eval().requires_grad_(False)
    return train_windows(student, lambda m, part, u: logged(velocity_mse(m, teacher, part, u)), train,
                         lambda m: field_distance(m, teacher, valid, settings.batch), len(valid), settings, progress,
                         log, desc)


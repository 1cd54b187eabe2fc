"""One loop for the window-based trainings of a student: seeded draws of training windows, validation on
held-out windows, the best weights kept.

Used by the HiFi-GAN generator distillation (:mod:`edgeflow.compress.generator_distill`) and by the
flow-matching field's pruning distillation and reflow (:mod:`edgeflow.compress.fm_field_distill`,
:mod:`edgeflow.compress.fm_reflow`). Step k draws ``batch`` window indices, then ``batch`` fractions u in [0, 1)
(used by the field objectives, ignored by the generator's), from a generator seeded with (seed, k) only, so a run
is deterministic on one machine. The loop is :class:`edgeflow.train.loop.TrainLoop` (progress bar with an ETA,
the cost printed after a timed first step; stops at ``steps``, after ``max_minutes`` or ``patience``
validations without improvement).

Resume (``state`` a :class:`WindowState`): every ``every_minutes`` of training, and when the loop ends, the
student, its optimizer, the loop's counters (step, best, time spent), the best weights so far, the validation
curve and the caller's own state (e.g. a discriminator) are written to one file (temporary file, then rename).
A later call with the same ``key`` continues from it exactly (the batches depend on the step only), and
``max_minutes`` counts the time of every call: raise it, or ``steps``, to train on. A file with another key
(other settings, another model) is ignored and overwritten. Loaded with ``torch.load(weights_only=True)``.

Settings are any object with ``steps``, ``max_minutes``, ``lr``, ``batch``, ``grad_clip``, ``valid_every``,
``seed``, ``threads`` (0: leave torch's) and optionally ``patience``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop

#: ``loss_fn(student, windows, u) -> (loss, logs)``.
LossFn = Callable[[nn.Module, Any, torch.Tensor], Tuple[torch.Tensor, Dict[str, float]]]


def logged(value: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    """(loss, logs) of a plain loss tensor (a :data:`LossFn`'s return)."""
    return value, {"mse": float(value.detach())}


@dataclasses.dataclass
class WindowState:
    """Where and when :func:`train_windows` keeps its resume state.

    Attributes:
        path: the state file.
        key: what the state belongs to (settings and starting model); a file with another key is not resumed.
        every_minutes: training minutes between saves (the end of the loop is always saved).
        get_extra, set_extra: the caller's own state (tensors, numbers, strings, lists and dicts only) and how to
            restore it.
    """

    path: Path
    key: str
    every_minutes: float = 5.0
    get_extra: Optional[Callable[[], Dict[str, Any]]] = None
    set_extra: Optional[Callable[[Dict[str, Any]], None]] = None


class _Objective:
    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn

    def loss(self, model, batch):
        part, u = batch
        return self.loss_fn(model, part, u)


class _Hooks(LoopHooks):
    def __init__(self, student: nn.Module, valid_fn: Callable[[nn.Module], float], train: Any, settings: Any):
        self.student, self.valid_fn, self.train, self.s = student, valid_fn, train, settings
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.losses: List[float] = []
        self.terms: List[Dict[str, float]] = []
        self.valid_rows: List[List[float]] = []
        self.loop: Optional[TrainLoop] = None
        self.state: Optional[WindowState] = None
        self.saved_at = 0.0

    # -- resume state --------------------------------------------------------------------------------------------
    def save_state(self) -> None:
        from edgeflow.core.io import atomic_path

        st = self.state
        blob = {"key": st.key, "loop": self.loop.state_dict(), "model": self.student.state_dict(),
                "best_state": self.best_state, "valid_rows": self.valid_rows, "losses": self.losses,
                "terms": self.terms[-100:], "extra": st.get_extra() if st.get_extra else {}}
        with atomic_path(st.path) as tmp:
            torch.save(blob, tmp)
        self.saved_at = self.loop.elapsed

    def load_state(self, log: Optional[Callable[[str], None]]) -> bool:
        """Restore the state file if it is there and has this key. Returns whether it did."""
        st = self.state
        if not Path(st.path).is_file():
            return False
        try:
            blob = torch.load(st.path, map_location="cpu", weights_only=True)
        except Exception:                                   # not a state file (or one from another version)
            blob = None
        if not isinstance(blob, dict) or blob.get("key") != st.key:
            if log is not None:
                log(f"{st.path}: not a resume state of these settings and this model; starting over")
            return False
        self.student.load_state_dict(blob["model"])
        self.loop.load_state_dict(blob["loop"])
        cap = self.loop.s.max_minutes
        over = cap and self.loop.elapsed > 60 * cap           # else a cap raised since: go on
        self.loop.stopped = f"time cap of {cap:g} min" if over else ""
        self.best_state, self.valid_rows = blob["best_state"], [list(r) for r in blob["valid_rows"]]
        self.losses, self.terms = list(blob["losses"]), list(blob["terms"])
        if st.set_extra is not None:
            st.set_extra(blob["extra"])
        self.saved_at = self.loop.elapsed
        if log is not None:
            log(f"{st.path}: resumed at step {self.loop.step} ({self.loop.elapsed / 60:.1f} min trained)")
        return True

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
        self.terms.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        if self.state is not None and self.loop.elapsed - self.saved_at >= 60 * self.state.every_minutes:
            self.save_state()


def _mean(xs: List[float], digits: int) -> Optional[float]:
    xs = [x for x in xs if math.isfinite(x)]
    return round(sum(xs) / len(xs), digits) if xs else None


def _term_means(rows: List[Dict[str, float]], digits: int) -> Dict[str, Optional[float]]:
    """{term: mean over ``rows``} for every term logged in any of them (e.g. "mel", "stft", "adv", "disc")."""
    names = sorted({k for r in rows for k in r})
    return {k: _mean([r[k] for r in rows if k in r], digits) for k in names}


def train_windows(student: nn.Module, loss_fn: LossFn, train: Any, valid_fn: Callable[[nn.Module], float],
                  n_valid: int, settings: Any, progress: bool = True, log: Optional[Callable[[str], None]] = print,
                  desc: str = "train", optimizer: Optional[torch.optim.Optimizer] = None,
                  digits: int = 6, keep_best: bool = True, state: Optional[WindowState] = None) -> Dict[str, Any]:
    """Train ``student`` (in place, CPU) on ``train`` (``len`` and ``.take(idx)``); it ends holding the weights
    with the lowest ``valid_fn(student)`` (no gradients; also measured before the first step and after the last),
    or its last weights when ``keep_best`` is False.

    Args:
        optimizer: over ``student``'s parameters (default: Adam at ``settings.lr``).
        n_valid: held-out windows (for the progress line). digits: rounding of the returned values.
        state: where to keep resume state (None: none; see the module docstring).

    Returns:
        {"steps", "stopped", "valid_before", "valid_best", "best_step", "kept", "valid_curve" [[step, value]],
         "loss_first", "loss_last" (means of the first / last 10 steps), "terms_last" ({logged term: mean over
         the last 100 steps}), "train_seconds", "first_step_seconds", "resumed_at" (the step a resume started
         from; 0 for a fresh run)}.
    """
    s = settings
    old = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        student.train().requires_grad_(True)
        hooks = _Hooks(student, valid_fn, train, s)
        loop = TrainLoop(student, _Objective(loss_fn), hooks, LoopSettings(
            steps=s.steps, lr=s.lr, grad_clip=s.grad_clip, valid_every=s.valid_every,
            patience=getattr(s, "patience", 0), max_minutes=s.max_minutes, skip_nonfinite=True, desc=desc),
            progress=progress, log=log)
        if optimizer is not None:
            loop.opt = optimizer
        loop.context = f"{len(train)} windows ({n_valid} held out), batch {s.batch}; "
        hooks.loop, hooks.state = loop, state
        resumed = state is not None and hooks.load_state(log)
        if not s.valid_every and not resumed:
            loop.check_valid()                              # the distance before training
        summary = loop.run(valid_first=bool(s.valid_every) and not resumed)   # (with it, timed for the ETA)
        if not hooks.valid_rows or hooks.valid_rows[-1][0] != loop.step:
            loop.check_valid()                              # the last weights are a candidate too
        if state is not None:
            hooks.save_state()
        if keep_best and hooks.best_state is not None:
            student.load_state_dict(hooks.best_state)
        student.eval()
    finally:
        torch.set_num_threads(old)
    return {"steps": loop.step, "stopped": loop.stopped or "steps done",
            "valid_before": round(hooks.valid_rows[0][1], digits) if hooks.valid_rows else None,
            "valid_best": None if math.isinf(loop.best) else round(loop.best, digits), "best_step": loop.best_step,
            "kept": "best" if keep_best else "last",
            "valid_curve": [[int(a), round(b, digits)] for a, b in hooks.valid_rows],
            "loss_first": _mean(hooks.losses[:10], digits), "loss_last": _mean(hooks.losses[-10:], digits),
            "terms_last": _term_means(hooks.terms[-100:], digits),
            "train_seconds": round(loop.elapsed, 1), "first_step_seconds": summary["first_step_seconds"],
            "resumed_at": summary["steps"] - summary["steps_this_run"] if resumed else 0}

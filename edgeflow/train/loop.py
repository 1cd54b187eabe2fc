"""The one training loop: steps, Adam, gradient clipping, AMP, DDP, validation, progress with an ETA,
checkpoints and exact resume, for any objective.

What is optimized is decided by an :class:`Objective` (``loss(model, batch) -> (loss, logs)``); where
batches come from, how validation is measured and how state is stored by the :class:`LoopHooks` of
the caller. :class:`edgeflow.train.trainer.Trainer` is this loop with the likelihood objective,
:class:`edgeflow.compress.distill.Distiller` the loop with a distillation objective.

Exactness: the batch of step k must depend only on k (the hooks' ``batch(k)``), and the loop state
(:meth:`TrainLoop.state_dict`: optimizer, grad scaler, step, best validation, early-stopping counter,
elapsed time) is what a checkpoint stores, so a run resumed from step k continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Protocol, Tuple

import torch


class Objective(Protocol):
    """What a loop minimizes."""

    def loss(self, model: torch.nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """The scalar loss of ``batch`` (with gradients into ``model``) and named terms to log."""


class LoopHooks:
    """Where the loop gets its batches and hands its results. Every method but :meth:`batch` is optional."""

    def batch(self, step: int) -> Any:
        """The batch of ``step`` (a function of the step only, for exact resume)."""
        raise NotImplementedError

    def validate(self) -> Optional[float]:
        """A validation value (lower is better), or None for no validation."""
        return None

    def on_valid(self, step: int, value: float, improved: bool) -> None:
        """After each validation; ``improved``: a new best."""

    def on_step(self, step: int, loss: float, logs: Dict[str, Any], grad_norm: float,
                valid: Optional[float]) -> None:
        """After each optimizer step (``valid``: the validation of this step, if any)."""

    def save(self, step: int) -> None:
        """Write a checkpoint (the loop's :meth:`TrainLoop.state_dict` plus the caller's own state)."""


@dataclasses.dataclass
class LoopSettings:
    """Loop settings.

    Attributes:
        steps: run until this step.
        lr, lr_decay_every, lr_decay: Adam learning rate, times ``lr_decay`` every ``lr_decay_every`` steps.
        grad_clip: max gradient norm.
        valid_every, ckpt_every: intervals in steps (0: never); ``ckpt_at_end``: also checkpoint the last step
            (of the steps, or of an early stop: time cap, patience).
        patience: stop after this many validations without improvement (0: never).
        max_minutes: stop once this much training time has passed, counted across resumes (0: no cap).
        skip_nonfinite: skip the update of a step whose loss is NaN/Inf (not under DDP: ranks must agree).
        amp: float16 grad scaling (CUDA; the objective does its own autocast).
        ema: decay of an exponential moving average of the parameters, updated after every optimizer step
            (0: none; 0.998 averages over about the last 500 steps). It starts from the weights the model has
            when the loop is made, or at :meth:`TrainLoop.start_average` (call it after loading a warm start);
            :meth:`TrainLoop.averaged` swaps it in (for validation and the saved model).
        desc: the progress bar's label.
    """

    steps: int
    lr: float
    grad_clip: float
    lr_decay_every: int = 0
    lr_decay: float = 1.0
    valid_every: int = 0
    ckpt_every: int = 0
    ckpt_at_end: bool = False
    patience: int = 0
    max_minutes: float = 0.0
    skip_nonfinite: bool = False
    amp: bool = False
    ema: float = 0.0
    desc: str = "train"


class TrainLoop:
    """Optimizes ``model`` for ``objective``. See the module docstring.

    Args:
        model: the module whose parameters are trained.
        objective: an :class:`Objective`.
        hooks: a :class:`LoopHooks`.
        settings: :class:`LoopSettings`.
        net: the module the objective runs (a DistributedDataParallel wrapper of ``model``; default ``model``).
        is_main: this process validates, checkpoints and shows progress (rank 0 under DDP).
        progress: show a progress bar with an ETA.
        log: where the cost estimate after the first step goes (None: nowhere).
    """

    def __init__(self, model: torch.nn.Module, objective: Objective, hooks: LoopHooks, settings: LoopSettings,
                 net: Optional[torch.nn.Module] = None, is_main: bool = True, progress: bool = True, log=None):
        self.model, self.net = model, net if net is not None else model
        self.objective, self.hooks, self.s = objective, hooks, settings
        self.is_main, self.progress, self.log = is_main, progress and is_main, log
        self.opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.amp)
        self.step, self.best, self.best_step, self.since_best = 0, math.inf, 0, 0
        self.elapsed, self.stopped = 0.0, ""
        self.first_step_seconds: Optional[float] = None
        self.estimated_seconds: Optional[float] = None
        self.last_loss: Optional[float] = None
        self.context = ""          # printed before the cost estimate, e.g. "data X; 200 steps of 2 x 4096 samples; "
        self.ema: Optional[Dict[str, torch.Tensor]] = None
        self.ema_updates = 0
        if settings.ema:
            self.start_average()

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything the loop needs to continue exactly (tensors, numbers and strings only)."""
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                "best": self.best, "best_step": self.best_step, "since_best": self.since_best,
                "elapsed": self.elapsed, "stopped": self.stopped,
                **({"ema": dict(self.ema), "ema_updates": self.ema_updates} if self.ema is not None else {})}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (missing counters keep their defaults)."""
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best = float(state.get("best", math.inf))
        self.best_step, self.since_best = int(state.get("best_step", 0)), int(state.get("since_best", 0))
        self.elapsed, self.stopped = float(state.get("elapsed", 0.0)), str(state.get("stopped", ""))
        if self.ema is not None:
            if "ema" in state:      # a state saved without an average starts one from the restored weights
                self.ema = {n: state["ema"][n].detach().clone() for n in self.ema}
                self.ema_updates = int(state.get("ema_updates", 0))
            else:
                self.start_average()

    # -- parameter average ---------------------------------------------------------------------------------------
    def start_average(self) -> None:
        """(Re)start the parameter average from the model's current weights (no-op without ``ema``)."""
        if self.s.ema:
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            self.ema_updates = 0

    def _update_ema(self) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                self.ema[n].lerp_(p.detach(), 1.0 - self.s.ema)
        self.ema_updates += 1

    @contextmanager
    def averaged(self) -> Iterator[torch.nn.Module]:
        """The model with its averaged parameters swapped in for the ``with`` block (the trained ones are put
        back after it); the model as it is when the loop keeps no average."""
        if self.ema is None:
            yield self.model
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(self.ema[n])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    # -- one step ------------------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        s = self.s
        return s.lr * (s.lr_decay ** (step // s.lr_decay_every)) if s.lr_decay_every else s.lr

    def train_step(self) -> Tuple[float, Dict[str, Any], float]:
        """One optimizer step on the batch of the current step. Returns (loss, logs, gradient norm)."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        loss, logs = self.objective.loss(self.net, self.hooks.batch(self.step))
        self.opt.zero_grad(set_to_none=True)
        gnorm = math.nan
        if not self.s.skip_nonfinite or bool(torch.isfinite(loss)):
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip))
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self._update_ema()
        self.step += 1
        self.last_loss = float(loss.detach())
        return self.last_loss, logs, gnorm

    def check_valid(self) -> Optional[float]:
        """Validate now; track the best value and the early-stopping counter."""
        v = self.hooks.validate()
        if v is None:
            return None
        improved = v < self.best - 1e-9
        if improved:
            self.best, self.best_step, self.since_best = v, self.step, 0
        else:
            self.since_best += 1
        self.hooks.on_valid(self.step, v, improved)
        return v

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, valid_first: bool = False) -> Dict[str, Any]:
        """Run until ``settings.steps``, the time cap or an early stop. ``valid_first``: validate before
        the first step (the value before training). Returns a summary dict."""
        s, start, t_run = self.s, self.step, time.time()
        if valid_first and self.is_main and s.valid_every:
            t0 = time.time()
            self.check_valid()
            self._t_valid = time.time() - t0
        bar = None
        if self.log is not None and self.is_main and self.step < s.steps and not self.stopped:
            self.log(f"{s.desc}: steps {self.step} -> {s.steps}; timing the first step to estimate the cost ...")
        while self.step < s.steps and not self.stopped:
            t0 = time.time()
            loss, logs, gnorm = self.train_step()
            if self.first_step_seconds is None:
                self._estimate(time.time() - t0)
                bar = self._bar()
            valid = None
            if s.valid_every and self.step % s.valid_every == 0 and self.is_main:
                valid = self.check_valid()
                if s.patience and self.since_best >= s.patience:
                    self.stopped = f"early stop: no improvement in {s.patience} validations"
            self.elapsed += time.time() - t0                      # training and validation time
            if s.max_minutes and self.elapsed > 60 * s.max_minutes and not self.stopped:
                self.stopped = f"time cap of {s.max_minutes:g} min"
            self.hooks.on_step(self.step, loss, logs, gnorm, valid)
            if bar is not None:
                self._bar_total(bar, start, t_run)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", best=f"{self.best:.4f}")
            if self.is_main and ((s.ckpt_every and self.step % s.ckpt_every == 0)
                                 or (s.ckpt_at_end and (self.step == s.steps or self.stopped))):
                self.hooks.save(self.step)
        if bar is not None:
            bar.close()
        return {"steps": self.step, "steps_this_run": self.step - start, "stopped": self.stopped or "steps done",
                "first_step_seconds": self.first_step_seconds, "estimated_seconds": self.estimated_seconds,
                "wall_seconds_this_run": round(time.time() - t_run, 2)}

    def _estimate(self, first: float) -> None:
        """Time of the first step of this run -> estimated time of the rest (validations included; under a time
        cap, at most the cap's time left)."""
        left = self.s.steps - self.step
        t_valid = getattr(self, "_t_valid", 0.0)
        est = first * left + (t_valid * (left // self.s.valid_every) if self.s.valid_every else 0.0)
        if self.s.max_minutes:
            est = min(est, max(0.0, 60 * self.s.max_minutes - self.elapsed))
        self.first_step_seconds, self.estimated_seconds = first, est
        if self.log is not None and self.is_main:
            done = f", {self.elapsed / 60:.1f} of them spent before" if self.elapsed > 0 else ""
            cap = f", capped at {self.s.max_minutes:g} min{done}" if self.s.max_minutes else ""
            self.log(f"{self.s.desc}: {self.context}first step {first:.2f} s -> about {est / 60:.1f} min more on "
                     f"this machine{cap}")

    def _bar_total(self, bar, start: int, t_run: float) -> None:
        """Under a time cap that ends the run before ``steps``, the bar's total is the step the cap is expected
        to stop at (from this run's mean step time), so its ETA is the time left, not that of ``steps``."""
        s, done = self.s, self.step - start
        if not s.max_minutes or done <= 0:
            return
        left = 60 * s.max_minutes - self.elapsed
        per_step = (time.time() - t_run) / done
        bar.total = min(s.steps, self.step + max(0, int(left / max(per_step, 1e-9))))

    def _bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.s.steps, initial=self.step - 1, desc=self.s.desc, unit="step", dynamic_ncols=True)

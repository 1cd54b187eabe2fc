"""Reflow (Liu et al., 2022, "Flow straight and fast", arXiv 2209.03003): distilling a flow-matching vector field
towards few ODE steps by straightening its paths.

The teacher's ODE couples each initial noise x0 with the mel x1 its solve reaches. Training the field on straight
lines between those coupled pairs (the conditional flow-matching loss with the teacher's pairs instead of
independent noise and data)::

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,   loss = |v(x_t, cond, t) - (x1 - (1 - sigma_min) x0)|^2

makes the learned paths straighter, so an Euler solve with one or two steps lands nearer x1 than the teacher's
own field does with the same steps (step-cutting alone). The data are whole-sentence pairs cut into windows
(:class:`PairWindows`); frames within ``margin`` of a window's edge are context only (not in the loss), because
the U-Net there sees zero padding instead of the sentence. The loop is
:func:`edgeflow.compress.window_loop.train_windows` (progress with an ETA; the best weights kept).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgeflow.compress.fm_field import Windows
from edgeflow.compress.fm_field_distill import FieldDistillSettings
from edgeflow.compress.window_loop import logged, train_windows
from edgeflow.core.errors import ConfigError

#: Times at which the validation value is measured (the mean of the straight-path loss there).
VALID_TIMES = (0.0, 0.25, 0.5, 0.75)


@dataclasses.dataclass
class PairWindows(Windows):
    """Windows of coupled pairs: noise ``x0`` and the teacher's mel ``x1`` [N, n_mels, W] (normalized),
    ``cond`` [N, n_mels + 1, W], ``mask`` [N, 1, W] with the ``margin`` edge frames already zeroed (loss mask;
    the field gets ``field_mask``, the sentence's own)."""

    x0: torch.Tensor
    x1: torch.Tensor
    cond: torch.Tensor
    field_mask: torch.Tensor
    mask: torch.Tensor


def pair_windows(pairs: Sequence[Dict[str, np.ndarray]], window: int, per_pair: int, margin: int,
                 seed: int = 0) -> PairWindows:
    """Cut ``per_pair`` random windows out of every whole-sentence pair {x0, x1, cond, mask} ([1, C, F] each;
    sentences shorter than a window skipped).

    Raises:
        ConfigError: ``window`` not above twice the margin, or no sentence is a window long.
    """
    if window <= 2 * margin:
        raise ConfigError(f"reflow windows: window {window} must exceed twice the margin {margin}")
    rng = np.random.default_rng(seed)
    parts: Dict[str, list] = {k: [] for k in ("x0", "x1", "cond", "field_mask", "mask")}
    for p in pairs:
        valid = int(p["mask"][0, 0].sum())
        if valid < window:
            continue
        for a in rng.integers(0, valid - window + 1, size=per_pair):
            cut = slice(int(a), int(a) + window)
            for k in ("x0", "x1", "cond"):
                parts[k].append(p[k][0, :, cut])
            parts["field_mask"].append(p["mask"][0, :, cut])
            m = p["mask"][0, :, cut].copy()
            m[:, :margin], m[:, window - margin:] = 0.0, 0.0
            parts["mask"].append(m)
    if not parts["x0"]:
        raise ConfigError(f"reflow windows: no sentence is {window} frames long (lower the window)")
    return PairWindows(*(torch.from_numpy(np.ascontiguousarray(np.stack(parts[k]), dtype=np.float32))
                         for k in ("x0", "x1", "cond", "field_mask", "mask")))


def reflow_loss(field: nn.Module, part: PairWindows, t: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """Mean squared error of the field against the straight-path velocity at times ``t`` [N], loss-masked."""
    s = 1.0 - sigma_min
    x = (1.0 - s * t)[:, None, None] * part.x0 + t[:, None, None] * part.x1
    target = part.x1 - s * part.x0
    diff = (field(x, part.cond, part.field_mask, t) - target) * part.mask
    return diff.pow(2).sum() / (part.mask.sum() * x.shape[1]).clamp_min(1.0)


@torch.no_grad()
def reflow_distance(field: nn.Module, windows: PairWindows, sigma_min: float, batch: int = 16) -> float:
    """The validation value: :func:`reflow_loss` averaged over :data:`VALID_TIMES`, no gradients."""
    was = field.training
    field.eval()
    total, n = 0.0, 0
    for a in range(0, len(windows), batch):
        part = windows.take(torch.arange(a, min(a + batch, len(windows))))
        for t in VALID_TIMES:
            total += float(reflow_loss(field, part, torch.full((len(part),), t), sigma_min)) * len(part)
            n += len(part)
    field.train(was)
    return total / max(n, 1)


def reflow_field(student: nn.Module, train: PairWindows, valid: PairWindows, sigma_min: float,
                 settings: FieldDistillSettings, progress: bool = True,
                 log: Optional[Callable[[str], None]] = print, desc: str = "reflow field") -> Dict[str, Any]:
    """Fine-tune ``student`` (in place) on the straight paths of ``train``'s pairs (t ~ U(0, 1) per window); it
    ends holding the weights with the lowest :func:`reflow_distance` on ``valid``. Returns the loop summary
    (:func:`edgeflow.compress.fm_field_distill.distill_field`'s keys)."""
    return train_windows(student, lambda m, part, u: logged(reflow_loss(m, part, u, sigma_min)), train,
                         lambda m: reflow_distance(m, valid, sigma_min, settings.batch), len(valid), settings,
                         progress, log, desc)

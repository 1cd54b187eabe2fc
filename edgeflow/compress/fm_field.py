"""Structured pruning of a flow-matching vector field (:class:`edgeflow.models.fmtts.decoder.VectorField`).

What is cut: the width between the two convolutions of every residual block (``conv1`` rows, ``norm1``'s
gamma / beta, the time projection's rows, ``conv2``'s input columns). That width is private to its block (the
U-Net's trunk width C is shared by the skips, the residual additions and the channel LayerNorms, so cutting it
would change every norm's statistics); it carries the two 3-tap convolutions that are most of the field's cost
(2 x 3 x C x C of the roughly 6.5 x C x C multiply-adds per frame of a block). Every block keeps the same
number of channels (the model config's ``dec_inner``), each block choosing its own by importance::

    score[c] = mean over frames of |conv2's input channel c|  x  ||conv2.weight[:, c, :]||_2

measured on the field's own inputs (:class:`FieldWindows`: states recorded while the voice solves calibration
sentences). Pruning alone changes the velocity (the kept channels' LayerNorm statistics move); the
``fm_prune`` pass then distills the pruned field against the unpruned one
(:mod:`edgeflow.compress.fm_field_distill`).

Example::

    data = windows_from_feeds(feeds, window=64, per_feed=4, seed=0)
    student, info = prune_field(teacher_decoder, width=64, windows=data)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeflow.core.errors import ConfigError
from edgeflow.models.fmtts.decoder import ResBlock


class Windows:
    """Tensor fields of equal length N along dim 0 (a dataclass's fields), taken and split together."""

    def __len__(self) -> int:
        return next(iter(self._tensors())).shape[0]

    def _tensors(self):
        return (getattr(self, f.name) for f in dataclasses.fields(self))

    def take(self, idx: torch.Tensor):
        """The windows at ``idx`` (same class)."""
        return type(self)(*(t[idx] for t in self._tensors()))

    def split(self, n_valid: int):
        """(train, valid): the last ``n_valid`` windows held out (windows are in sentence order)."""
        if not 1 <= n_valid < len(self):
            raise ConfigError(f"{type(self).__name__}: cannot hold out {n_valid} of {len(self)} windows")
        idx = torch.arange(len(self))
        return self.take(idx[:-n_valid]), self.take(idx[-n_valid:])


@dataclasses.dataclass
class FieldWindows(Windows):
    """Windows of the field's inputs along solver trajectories: the state ``xa`` [N, n_mels, W] at time ``ta``
    [N] and the next recorded state of the same solve ``xb`` / ``tb`` (equal to ``xa`` / ``ta`` at a solve's last
    step), ``cond`` [N, n_mels + 1, W], ``mask`` [N, 1, W]. :meth:`at` interpolates between the two states, so
    training sees the whole path, not only the solver's grid."""

    xa: torch.Tensor
    xb: torch.Tensor
    ta: torch.Tensor
    tb: torch.Tensor
    cond: torch.Tensor
    mask: torch.Tensor

    def at(self, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, cond, mask, t) at fraction ``u`` [N] in [0, 1] of the way from (xa, ta) to (xb, tb)."""
        x = self.xa + u[:, None, None] * (self.xb - self.xa)
        return x, self.cond, self.mask, self.ta + u * (self.tb - self.ta)


def _solves(feeds: Sequence[Dict[str, np.ndarray]]) -> List[List[Dict[str, np.ndarray]]]:
    """Consecutive feeds of one solve (same cond, rising t) grouped together."""
    out: List[List[Dict[str, np.ndarray]]] = []
    for f in feeds:
        last = out[-1][-1] if out else None
        if last is not None and last["cond"].shape == f["cond"].shape and float(f["t"][0]) > float(last["t"][0]) \
                and np.array_equal(last["cond"], f["cond"]):
            out[-1].append(f)
        else:
            out.append([f])
    return out


def windows_from_feeds(feeds: Sequence[Dict[str, np.ndarray]], window: int, per_feed: int,
                       seed: int = 0) -> FieldWindows:
    """Cut ``per_feed`` random ``window``-frame windows out of every recorded field call (whole sentences, in
    solve order: see :func:`edgeflow.passes.fm_quantize.field_windows`), each paired with the same frames of the
    solve's next state. A guided solve's calls hold two rows (the condition and the zeroed one, the same state):
    each row gives its own windows, so the student learns the unconditional field that guidance needs too.
    Sentences shorter than a window are skipped.

    Raises:
        ConfigError: no feed is ``window`` frames long.
    """
    rng = np.random.default_rng(seed)
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("xa", "xb", "ta", "tb", "cond", "mask")}
    for solve in _solves(feeds):
        for i, f in enumerate(solve):
            nxt = solve[i + 1] if i + 1 < len(solve) else f
            frames = f["x"].shape[2]
            if frames < window:
                continue
            for row in range(f["x"].shape[0]):
                for a in rng.integers(0, frames - window + 1, size=per_feed):
                    cut = slice(int(a), int(a) + window)
                    parts["xa"].append(f["x"][row, :, cut])
                    parts["xb"].append(nxt["x"][row, :, cut])
                    parts["cond"].append(f["cond"][row, :, cut])
                    parts["mask"].append(f["mask"][row, :, cut])
                    parts["ta"].append(np.float32(f["t"][row]))
                    parts["tb"].append(np.float32(nxt["t"][row]))
    if not parts["xa"]:
        raise ConfigError(f"field windows: no recorded sentence is {window} frames long (lower the window)")
    return FieldWindows(*(torch.from_numpy(np.ascontiguousarray(np.stack(parts[k]), dtype=np.float32))
                          for k in ("xa", "xb", "ta", "tb", "cond", "mask")))


def res_blocks(field: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, block) of every residual block of a VectorField, in module order."""
    return [(n, m) for n, m in field.named_modules() if isinstance(m, ResBlock)]


@torch.no_grad()
def inner_scores(field: nn.Module, windows: FieldWindows, batch: int = 32) -> Dict[str, torch.Tensor]:
    """Block name -> importance [inner] of its channels between the convs (see the module docstring), on the
    windows at their recorded states (u = 0)."""
    blocks = res_blocks(field)
    sums = {n: torch.zeros(b.conv2.in_channels) for n, b in blocks}
    frames = {"n": 0.0}

    def hook(name):
        def add(_module, inp):
            sums[name].add_(inp[0].abs().sum((0, 2)))     # returns None: the input is left as it is
        return add

    hooks = [b.conv2.register_forward_pre_hook(hook(n)) for n, b in blocks]
    was = field.training
    field.eval()
    try:
        for a in range(0, len(windows), batch):
            part = windows.take(torch.arange(a, min(a + batch, len(windows))))
            x, cond, mask, t = part.at(torch.zeros(len(part)))
            field(x, cond, mask, t)
            frames["n"] += float(mask.sum())
    finally:
        for h in hooks:
            h.remove()
        field.train(was)
    return {n: sums[n] / max(frames["n"], 1.0) * b.conv2.weight.norm(dim=(0, 2)) for n, b in blocks}


def _slice_block(block: nn.Module, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` between ``block``'s convs (in place, on a copy)."""
    c1, c2, norm, lin = block.conv1, block.conv2, block.norm1, block.time
    c1.weight, c1.bias = nn.Parameter(c1.weight[keep].clone()), nn.Parameter(c1.bias[keep].clone())
    c1.out_channels = len(keep)
    c2.weight = nn.Parameter(c2.weight[:, keep].clone())
    c2.in_channels = len(keep)
    norm.gamma, norm.beta = nn.Parameter(norm.gamma[keep].clone()), nn.Parameter(norm.beta[keep].clone())
    norm.channels = len(keep)
    lin.weight, lin.bias = nn.Parameter(lin.weight[keep].clone()), nn.Parameter(lin.bias[keep].clone())
    lin.out_features = len(keep)


def prune_field(field: nn.Module, width: int, windows: FieldWindows) -> Tuple[nn.Module, Dict[str, Any]]:
    """A copy of ``field`` whose residual blocks keep their ``width`` most important inner channels (in their
    original order), and what was kept.

    Raises:
        ConfigError: ``width`` is not in [1, the current inner width].
    """
    blocks = res_blocks(field)
    current = max(b.conv2.in_channels for _, b in blocks)
    if not 1 <= width <= min(b.conv2.in_channels for _, b in blocks):
        raise ConfigError(f"fm_prune: width {width} is not in [1, {current}] (the blocks' inner width)")
    scores = inner_scores(field, windows)
    new = copy.deepcopy(field)
    kept = {}
    for (name, block), (_, src) in zip(res_blocks(new), blocks):
        keep = torch.sort(torch.topk(scores[name], width).indices).values
        _slice_block(block, keep)
        kept[name] = float(scores[name][keep].sum() / scores[name].sum().clamp_min(1e-12))
    return new, {"width_before": current, "width": width, "blocks": len(blocks),
                 "score_kept_min": round(min(kept.values()), 4),
                 "score_kept_mean": round(sum(kept.values()) / len(kept), 4)}

"""Smaller VITS prior flows: keep k of the n couplings, and/or prune the WN stacks' channels, then distil the
student flow against the teacher's on the teacher's own prior samples.

Distillation (:func:`distill_flow`): for every distillation sentence the teacher gives z_p = m_p + noise *
exp(logs_p) * noise_scale (its text encoder, its durations, the seeded noise of synthesis) and z =
teacher.flow.inverse(z_p) (:mod:`edgeflow.compress.vits_prior_data`); the student flow maps the same z_p and
is trained on the masked mean squared error to z. Batches are windows of ``window`` frames with ``margin``
frames of context each side (the loss counts the window only), a function of the step (exact, seeded);
the held-out sentences' fixed windows are the validation, and the best validated student is kept.

Measured on en_US-joe-medium (2026-12-02; 171 sentences, 150 steps of 8 x 64 frames; held-out MSE of z, the
identity map z = z_p scoring 2.47): 4 -> 2 couplings 0.41 ("spread" [0, 3]; "first" 0.42, "last" 0.46);
4 -> 1 coupling 2.77 (one mean-only coupling passes half of z_p through unchanged, so a single coupling cannot
follow the teacher: odd and single counts are allowed but not recommended); 4 couplings pruned to 96 WN
channels 0.55, 2 couplings pruned to 128 channels 0.58.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from edgeflow.compress.vits_prior_data import frame_windows, random_picks
from edgeflow.core.errors import ConfigError
from edgeflow.models.surgery import copy_conv_
from edgeflow.models.vits.flows import FlowCond, ResidualCouplingLayer
from edgeflow.models.vits.model import Vits
from edgeflow.train.loop import LoopHooks, LoopSettings, TrainLoop

Tensor = torch.Tensor
KEEP = ("first", "last", "spread")


def chosen_couplings(n: int, k: int, keep: str | Sequence[int]) -> List[int]:
    """Indices of the k couplings to keep of n: "first", "last", "spread" (evenly, ends included) or a list.

    Raises:
        ConfigError: k outside 1..n, or a bad list.
    """
    if not 1 <= k <= n:
        raise ConfigError(f"cannot keep {k} of {n} couplings (1..{n})")
    if not isinstance(keep, str):
        idx = sorted(int(i) for i in keep)
        if len(idx) != k or len(set(idx)) != k or idx[0] < 0 or idx[-1] >= n:
            raise ConfigError(f"keep list {list(keep)} is not {k} distinct couplings of 0..{n - 1}")
        return idx
    if keep == "first":
        return list(range(k))
    if keep == "last":
        return list(range(n - k, n))
    if keep == "spread":
        return sorted({int(round(i * (n - 1) / max(1, k - 1))) for i in range(k)}) if k > 1 else [0]
    raise ConfigError(f"keep must be one of {', '.join(KEEP)} or a list of indices, got {keep!r}")


def _rebuild(model: Vits, **fields: Any) -> Vits:
    new = Vits(model.config.replace(**fields))
    sd = new.state_dict()
    new.load_state_dict({k: v for k, v in model.state_dict().items() if k in sd and sd[k].shape == v.shape},
                        strict=False)
    return new


@torch.no_grad()
def keep_couplings(model: Vits, idx: Sequence[int]) -> Vits:
    """A new Vits whose prior flow is the couplings ``idx`` of ``model``'s (each with its Flip), in order."""
    new = _rebuild(model, n_flows=len(idx))
    for dst, i in enumerate(idx):
        new.flow.flows[2 * dst].load_state_dict(model.flow.flows[2 * i].state_dict())
    return new.eval()


def _wn_scores(layer: ResidualCouplingLayer) -> Dict[str, Any]:
    """Weight-only importance of a coupling's WN channels: residual (read by every in_layer), gates (read by
    res_skip) per layer, skip (read by ``post``)."""
    from edgeflow.compress.layers import read_norms

    enc = layer.enc
    res = sum(read_norms(c) for c in enc.in_layers)
    gates = [read_norms(c) for c in enc.res_skip_layers]
    return {"res": res, "gates": gates, "skip": read_norms(layer.post)}


def _top(score: Tensor, k: int) -> Tensor:
    return torch.sort(torch.topk(score, k).indices).values


@torch.no_grad()
def prune_flow(model: Vits, channels: int) -> tuple:
    """A new Vits whose prior flow's WN stacks are ``channels`` wide (residual, gate and skip channels, chosen
    per coupling by weight norms; in_layers' gate halves and res_skip's rows move together).

    Returns:
        (model, info {"from", "to", "kept": per coupling {"res", "skip", "gates"}}).
    """
    width = model.config.flow_hidden
    if not 1 <= channels <= width:
        raise ConfigError(f"cannot prune the flow's WN from {width} to {channels} channels")
    if model.config.gin_channels:
        raise ConfigError("pruning the prior flow of a multi-speaker VITS model is not supported")
    new = _rebuild(model, flow_hidden_channels=channels if channels != model.config.hidden_channels else None)
    kept = []
    for i in range(0, len(model.flow.flows), 2):
        src, dst = model.flow.flows[i], new.flow.flows[i]
        sc = _wn_scores(src)
        res, skip = _top(sc["res"], channels), _top(sc["skip"], channels)
        gates = [_top(g, channels) for g in sc["gates"]]
        copy_conv_(dst.pre, src.pre, out_idx=res)
        copy_conv_(dst.post, src.post, in_idx=skip)
        n = len(gates)
        for j in range(n):
            pair = torch.cat([gates[j], gates[j] + width])
            copy_conv_(dst.enc.in_layers[j], src.enc.in_layers[j], out_idx=pair, in_idx=res)
            rows = torch.cat([res, width + skip]) if j < n - 1 else skip
            copy_conv_(dst.enc.res_skip_layers[j], src.enc.res_skip_layers[j], out_idx=rows, in_idx=gates[j])
        kept.append({"res": res.tolist(), "skip": skip.tolist(), "gates": [g.tolist() for g in gates]})
    return new.eval(), {"from": width, "to": channels, "score": "read-weight L2", "kept": kept}


@dataclasses.dataclass
class FlowDistillSettings:
    """Distillation of a student prior flow.

    Attributes:
        steps, lr, batch, window, margin: training steps, Adam rate, windows per step, frames per window,
            context frames each side. max_minutes: time cap (0: none). valid_every: validate every so many
            steps. grad_clip: max gradient norm. seed: batches.
    """

    steps: int = 400
    lr: float = 3e-4
    batch: int = 8
    window: int = 64
    margin: int = 16
    max_minutes: float = 10.0
    valid_every: int = 25
    grad_clip: float = 5.0
    seed: int = 0


class _FlowObjective:
    def loss(self, flow, batch):
        zp, z, mask, lmask = batch
        out = flow.inverse(zp, FlowCond(mask))[0]
        err = (out - z) * lmask
        denom = lmask.sum() * z.shape[1]
        mse = (err ** 2).sum() / denom
        return mse, {"l1": float(err.detach().abs().sum() / denom)}


class _FlowHooks(LoopHooks):
    def __init__(self, flow, train, valid_batches, s: FlowDistillSettings):
        self.flow, self.train, self.valid_batches, self.s = flow, train, valid_batches, s
        self.best_state = copy.deepcopy(flow.state_dict())
        self.history: List[Dict[str, float]] = []

    def batch(self, step):
        rng = np.random.default_rng([self.s.seed, 11, step])
        return frame_windows(self.train, random_picks(self.train, self.s.batch, self.s.window, rng),
                             self.s.window, self.s.margin)

    def validate(self):
        return flow_loss(self.flow, self.valid_batches)["mse"]

    def on_valid(self, step, value, improved):
        self.history.append({"step": step, "mse": round(value, 6)})
        if improved:
            self.best_state = copy.deepcopy(self.flow.state_dict())


def valid_batches(utts, s: FlowDistillSettings) -> list:
    """Fixed held-out batches: every full window of every held-out sentence (at most 64 windows)."""
    picks = [(u, a) for u in range(len(utts)) for a in range(0, max(1, utts[u].z_p.shape[1] - s.window + 1),
                                                               s.window)][:64]
    return [frame_windows(utts, picks[i:i + s.batch], s.window, s.margin) for i in range(0, len(picks), s.batch)]


@torch.no_grad()
def flow_loss(flow, batches) -> Dict[str, float]:
    """Masked MSE and L1 of the student flow's z over batches (per element)."""
    flow.eval()
    se = ae = n = 0.0
    for zp, z, mask, lmask in batches:
        err = (flow.inverse(zp, FlowCond(mask))[0] - z) * lmask
        se, ae, n = se + float((err ** 2).sum()), ae + float(err.abs().sum()), n + float(lmask.sum()) * z.shape[1]
    return {"mse": se / max(n, 1.0), "l1": ae / max(n, 1.0)}


def distill_flow(student: Vits, train, held, s: FlowDistillSettings, log=print,
                 progress: bool = True) -> Dict[str, Any]:
    """Train ``student.flow`` (in place; the best validated weights are loaded at the end) to map the teacher's
    z_p to its z. ``train`` / ``held``: utterances with z_p and z. Returns the distillation summary."""
    torch.manual_seed(s.seed)
    flow = student.flow
    vb = valid_batches(held, s)
    before = flow_loss(flow, vb)
    if s.steps <= 0:
        return {"steps": 0, "held_out_before": before, "held_out_after": before}
    hooks = _FlowHooks(flow, train, vb, s)
    loop = TrainLoop(flow, _FlowObjective(), hooks, LoopSettings(
        steps=s.steps, lr=s.lr, grad_clip=s.grad_clip, valid_every=s.valid_every, max_minutes=s.max_minutes,
        desc="distil prior flow"), progress=progress, log=log)
    loop.context = f"{len(train)} sentences, {s.batch} x {s.window} frames per step; "
    t0 = time.time()
    flow.train()
    summary = loop.run(valid_first=True)
    flow.load_state_dict(hooks.best_state)
    flow.eval()
    after = flow_loss(flow, vb)
    return {"steps": summary["steps"], "stopped": summary["stopped"], "seconds": round(time.time() - t0, 1),
            "best_step": loop.best_step, "held_out_before": before, "held_out_after": after,
            "held_out_windows": sum(b[0].shape[0] for b in vb), "validations": hooks.history[-8:]}

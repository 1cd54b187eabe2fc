"""The WaveFlow family: receptive field, cost model, compression cuts and export hooks.

Cost (all flows run over all ``T = sample_rate`` positions per second, the folded ``h x T/h`` grid): per
flow ``2 C`` (start 1x1, 1 -> C) + ``4 C`` (end 1x1, C -> 2) and per layer ``2 k^2 C 2C`` (dilated k x k
conv, C -> 2C) + ``2 n_mels 2C`` (conditioning 1x1) + ``2 C C`` (residual 1x1) + ``2 C C`` (skip 1x1). The
cached inverse does the same work (one row at a time). Upsampler: each ConvTranspose2d(1, 1, (3, 2s),
stride (1, s)) output gets ``3 x 2`` taps, at ``n_mels x prod(factors so far) / hop`` outputs per sample.

Cuts: flows keep their weights and row orders (stored in ``row_orders``); a smaller height re-folds
the waveform (the 2-D nets' weights do not depend on h; row orders follow the same pattern); fewer
layers keep each flow's first L' layers with the end conv rescaled for the skip sum's 1/sqrt(L).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from edgeflow.core.errors import ConfigError
from edgeflow.flows.waveflow import WaveFlowNet
from edgeflow.models.family import (ExportDecl, Family, WidthGroup, checked_flows, frames, register_family,
                                    wn_radius)
from edgeflow.models.surgery import copy_conv_, load_matching, rebuild
from edgeflow.models.waveflow import UpsampleNet, WaveFlow, WaveFlowConfig, row_orders


def receptive_field(cfg: WaveFlowConfig) -> Dict[str, int]:
    """WaveFlow receptive field in frames.

    One net pass reaches ``r = (k-1)/2 * (2^L - 1)`` columns (of h samples) each side. In the inverse,
    row i depends on rows < i through the net, so the reach compounds over the h rows: ``n_flows * h * r``
    columns in the worst case (``left``/``right``), versus ``n_flows * r`` for one pass per flow
    (``net_*``, what the trained nets mostly use). The transposed-conv upsampler adds at most 2 input
    steps per layer.
    """
    h, hop = cfg.height, cfg.mel.hop_length
    r = wn_radius(cfg.kernel_size, cfg.n_layers)
    up, scale = 0.0, 1
    for s in cfg.upsample_factors:
        up += 2.0 / scale
        scale *= s
    up = int(math.ceil(up))
    strict = frames(cfg.n_flows * h * r * h + h, hop) + up
    net = frames(cfg.n_flows * r * h + h, hop) + up
    return {"left": strict, "right": strict, "net_left": net, "net_right": net}


def orders_of(model: WaveFlow) -> List[List[int]]:
    """The row order of each flow of a model."""
    return [blk.permute.perm.tolist() for blk in model.flows.blocks]


def patterns(h: int) -> List[List[int]]:
    """The row-order patterns at height h: identity, reversal, half-reversals, both."""
    ident = list(range(h))
    rev = ident[::-1]
    half = h // 2
    bip = list(range(half - 1, -1, -1)) + list(range(h - 1, half - 1, -1))
    return [ident, rev, bip, [rev[j] for j in bip]]


def pattern_of(order: List[int], height: int) -> Optional[int]:
    """Which of :func:`patterns` an order is at this height, else None."""
    for i, cand in enumerate(patterns(height)):
        if cand == list(order):
            return i
    return None


class WaveFlowFamily(Family):
    """WaveFlow (Ping et al., 2020): mel -> wav."""

    name, task = "waveflow", "vocoder"
    config_cls, model_cls = WaveFlowConfig, WaveFlow
    export = ExportDecl(receptive_field=receptive_field)
    flows_field, layers_field = "n_flows", "n_layers"
    extra_cuts = ("height",)
    width = WidthGroup(("channels",))
    size_fields = ("n_flows", "n_layers", "channels", "height")
    derived_fields = {"row_orders": ("n_flows", "height")}
    has_cached_inverse = True

    def flops_breakdown(self, c: WaveFlowConfig) -> Dict[str, float]:
        mel, sr = c.mel, c.mel.sample_rate
        ch, k, m = c.channels, c.kernel_size, mel.n_mels
        per_layer = 2 * k * k * ch * 2 * ch + 2 * m * 2 * ch + 2 * ch * ch + 2 * ch * ch
        flows = c.n_flows * (c.n_layers * per_layer + 2 * ch + 2 * ch * 2) * sr
        prod, up = 1, 0.0
        for s in c.upsample_factors:
            prod *= s
            up += 2 * 3 * (2 * s / s) * m * prod / mel.hop_length * sr
        return {"flows": float(flows), "upsampler": float(up)}

    def keep_flows(self, model: WaveFlow, idx: Sequence[int]) -> Tuple[WaveFlow, Dict[str, Any]]:
        kept = checked_flows(idx, model.config.n_flows)
        orders = [orders_of(model)[i] for i in kept]
        default = row_orders(model.config.height, len(kept))
        new = rebuild(model, n_flows=len(kept), row_orders=None if orders == default else orders)
        new.upsample.load_state_dict(model.upsample.state_dict())
        for j, i in enumerate(kept):
            new.flows.blocks[j].inner.load_state_dict(model.flows.blocks[i].inner.state_dict())
        return new, {"kept": kept}

    def cut(self, model: WaveFlow, field: str, value: Any) -> Tuple[WaveFlow, Dict[str, Any]]:
        """``height``: re-fold to a smaller h (weights reused; row orders recomputed in the same pattern)."""
        if field != "height":
            return super().cut(model, field, value)
        cfg = model.config
        if not 2 <= value <= cfg.height:
            raise ConfigError(f"reduce_flows: height must be in [2, {cfg.height}], got {value}")
        pats = [pattern_of(o, cfg.height) for o in orders_of(model)]
        orders = None
        if all(p is not None for p in pats):
            orders = [patterns(value)[p] for p in pats]
            orders = None if orders == row_orders(value, cfg.n_flows) else orders
        dil = cfg.height_dilations()
        new = rebuild(model, height=value, row_orders=orders, dilations_h=dil)
        if new.config.replace(dilations_h=None).height_dilations() == dil:
            new = rebuild(model, height=value, row_orders=orders, dilations_h=None)
        new.load_state_dict(model.state_dict())
        return new, {"height": value, "row_orders": "pattern kept" if all(
            p is not None for p in pats) else "default for the new height"}

    def drop_layers(self, model: WaveFlow, n_layers: int) -> Tuple[WaveFlow, Dict[str, Any]]:
        L = model.config.n_layers
        changes: Dict[str, Any] = {"n_layers": n_layers}
        if model.config.dilations_h is not None:
            changes["dilations_h"] = list(model.config.dilations_h[:n_layers])
        new = rebuild(model, **changes)
        load_matching(new, model)
        with torch.no_grad():
            for dst, src in zip(self.prunable_nets(new), self.prunable_nets(model)):
                copy_conv_(dst.end, src.end, scale=math.sqrt(n_layers / L))
        return new, {"n_layers": n_layers}

    def prunable_nets(self, model: WaveFlow) -> List[WaveFlowNet]:
        return [m for m in model.modules() if isinstance(m, WaveFlowNet)]

    def fuse(self, model: WaveFlow) -> WaveFlow:
        """Upsampler in phase form, each net's end conv folded into its layers' skip convs."""
        for m in list(model.modules()):
            if isinstance(m, (UpsampleNet, WaveFlowNet)):
                m.fuse()
        return model

    def set_cached(self, model: WaveFlow, cached: bool) -> None:
        model.set_cached(cached)


WAVEFLOW = register_family(WaveFlowFamily())

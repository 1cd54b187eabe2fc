"""The WaveGlow family: receptive field, cost model, compression cuts (early outputs kept) and export hooks.

Cost (``sample_rate / n_group`` positions per second; flow i has n_i channels, shrinking by
``n_early_size`` at each early output): invertible 1x1 conv ``2 n_i^2``; WN start ``2 (n_i/2) C``,
conditioning 1x1 ``2 (n_mels n_group) (2 C L)``, dilated convs ``2 k C 2C L``, residual/skip 1x1s
``2 C 2C (L - 1) + 2 C C``, end ``2 C n_i``. Upsampler ConvTranspose1d(n_mels, n_mels, 4 hop, stride hop):
``2 x 4 n_mels^2`` per audio sample.

Flow cuts keep the early-output structure (same number of early outputs, hence the same channel count in
every stage): each stage keeps some of its flows and ``n_early_every`` shrinks accordingly; flow counts
that cannot keep the structure are refused.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import WN, AffineCoupling
from edgeflow.models.family import (ExportDecl, Family, WidthGroup, checked_flows, frames, register_family,
                                    wn_radius)
from edgeflow.models.surgery import copy_conv_, load_matching, rebuild
from edgeflow.models.waveglow import WaveGlow, WaveGlowConfig


def receptive_field(cfg: WaveGlowConfig) -> Dict[str, int]:
    """WaveGlow receptive field in frames: each coupling's WN reaches ``(k-1)/2 * (2^L - 1)`` groups
    of n_group samples each side (couplings are not autoregressive, so this bound is exact), plus
    the upsampler (kernel 4*hop, stride hop: up to 4 frames back)."""
    r = wn_radius(cfg.wn_kernel_size, cfg.wn_layers)
    f = frames(cfg.n_flows * r * cfg.n_group + cfg.n_group, cfg.mel.hop_length)
    return {"left": f + 4, "right": f + 1, "net_left": f + 4, "net_right": f + 1}


def flow_pairs(model: nn.Module) -> List[Tuple[nn.Module, AffineCoupling]]:
    """WaveGlow's (1x1 conv, coupling) pairs in forward order, through the nested early-output stages."""
    out, seq = [], model.flows
    while seq is not None:
        blocks, nxt = list(seq.blocks), None
        if blocks and not isinstance(blocks[-1], AffineCoupling) and hasattr(blocks[-1], "inner"):
            nxt = blocks.pop().inner
        out += [(blocks[i], blocks[i + 1]) for i in range(0, len(blocks), 2)]
        seq = nxt
    return out


def stages(cfg: WaveGlowConfig) -> List[List[int]]:
    """Flow indices of each stage between early outputs."""
    n, e = cfg.n_flows, cfg.n_early_every
    if not 0 < e < n:
        return [list(range(n))]
    return [list(range(s, min(s + e, n))) for s in range(0, n, e)]


def plan(cfg: WaveGlowConfig, n_new: int) -> Tuple[int, List[int]]:
    """(new n_early_every, flows kept per stage) keeping the same early outputs, or a ConfigError."""
    st, e = stages(cfg), cfg.n_early_every
    if len(st) == 1:
        return e, [n_new]
    for e_new in range(1, e + 1):
        last = n_new - e_new * (len(st) - 1)
        if 1 <= last <= min(e_new, len(st[-1])):
            return e_new, [e_new] * (len(st) - 1) + [last]
    valid = [str(k) for k in range(1, cfg.n_flows + 1) if any(
        1 <= k - en * (len(st) - 1) <= min(en, len(st[-1])) for en in range(1, e + 1))]
    raise ConfigError(f"reduce_flows: {n_new} flows cannot keep the early-output structure of {cfg.n_flows} "
                      f"flows (an early output every {e}); valid counts: {', '.join(valid)}")


class WaveGlowFamily(Family):
    """WaveGlow (Prenger et al., 2019): mel -> wav."""

    name, task = "waveglow", "vocoder"
    config_cls, model_cls = WaveGlowConfig, WaveGlow
    export = ExportDecl(receptive_field=receptive_field)
    flows_field, layers_field = "n_flows", "wn_layers"
    width = WidthGroup(("wn_channels",))
    size_fields = ("n_flows", "wn_layers", "wn_channels")

    def flops_breakdown(self, c: WaveGlowConfig) -> Dict[str, float]:
        mel, sr = c.mel, c.mel.sample_rate
        ch, L, k, m = c.wn_channels, c.wn_layers, c.wn_kernel_size, mel.n_mels
        n_ch, conv1x1, wn = c.n_group, 0, 0
        for i in range(c.n_flows):
            if i > 0 and c.n_early_every > 0 and i % c.n_early_every == 0:
                n_ch -= c.n_early_size
            n_a = n_ch // 2
            conv1x1 += 2 * n_ch * n_ch
            wn += (2 * n_a * ch + 2 * m * c.n_group * 2 * ch * L + 2 * k * ch * 2 * ch * L
                   + 2 * ch * 2 * ch * (L - 1) + 2 * ch * ch + 2 * ch * 2 * (n_ch - n_a))
        pos = sr / c.n_group
        return {"wn": float(wn * pos), "conv1x1": float(conv1x1 * pos), "upsampler": float(2 * 4 * m * m * sr)}

    def flow_counts(self, config: WaveGlowConfig) -> List[int]:
        ok = []
        for k in range(1, config.n_flows + 1):
            try:
                plan(config, k)
                ok.append(k)
            except ConfigError:
                pass
        return ok

    def choose_flows(self, config: WaveGlowConfig, n_flows: int, pick: Callable[[int, int], List[int]]) -> List[int]:
        """Within each stage (the early outputs stay where they are)."""
        _, sizes = plan(config, n_flows)
        return [st[i] for st, s in zip(stages(config), sizes) for i in pick(len(st), s)]

    def keep_flows(self, model: WaveGlow, idx: Sequence[int]) -> Tuple[WaveGlow, Dict[str, Any]]:
        kept = checked_flows(idx, model.config.n_flows)
        e_new, sizes = plan(model.config, len(kept))
        per_stage = [sum(i in st for i in kept) for st in stages(model.config)]
        if per_stage != sizes:
            raise ConfigError(f"reduce_flows: flows {kept} do not keep the early-output structure "
                              f"(per stage {per_stage}, needed {sizes})")
        new = rebuild(model, n_flows=len(kept), n_early_every=e_new)
        new.upsample.load_state_dict(model.upsample.state_dict())
        old_pairs = flow_pairs(model)
        for (conv, coup), i in zip(flow_pairs(new), kept):
            conv.load_state_dict(old_pairs[i][0].state_dict())
            coup.load_state_dict(old_pairs[i][1].state_dict())
        return new, {"kept": kept, "n_early_every": e_new}

    def drop_layers(self, model: WaveGlow, n_layers: int) -> Tuple[WaveGlow, Dict[str, Any]]:
        L = model.config.wn_layers
        new = rebuild(model, wn_layers=n_layers)
        load_matching(new, model)
        with torch.no_grad():
            for dst, src in zip(self.prunable_nets(new), self.prunable_nets(model)):
                c = src.channels
                copy_conv_(dst.cond_layer, src.cond_layer, out_idx=torch.arange(2 * c * n_layers))
                last = n_layers - 1
                copy_conv_(dst.res_skip_layers[last], src.res_skip_layers[last],
                           out_idx=torch.arange(c, 2 * c) if last < L - 1 else None)
        return new, {"wn_layers": n_layers}

    def prunable_nets(self, model: WaveGlow) -> List[WN]:
        return [m for m in model.modules() if isinstance(m, WN)]


WAVEGLOW = register_family(WaveGlowFamily())

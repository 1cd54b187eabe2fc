"""Structured channel pruning of the WaveNet-like conditioning nets (WaveFlow 2-D, WaveGlow 1-D).

Each net has three channel groups, all of width C: the family's width group
(:class:`edgeflow.models.family.WidthGroup`, e.g. WaveFlow ``channels``, WaveGlow ``wn_channels``) over the
nets its ``prunable_nets`` names:

* residual channels: the stream h shared by every layer of one flow (start conv out, dilated conv in,
  residual conv out): one set per flow, pruned identically in all its layers;
* gate channels: per layer, the C outputs of ``tanh(a[:C]) * sigmoid(a[C:])``; channel c removes
  the pair (c, C + c) of the dilated conv and conditioning outputs, and input c of the res/skip convs;
* skip channels: the skip sum shared by all layers of a flow (skip conv out, end conv in).

Importance: the expected size of what a channel writes into the rest of the net,
``score(c) = E|a_c| * ||W_read[:, c]||_2``, where a_c is the channel's activation (mean |.| over a few
likelihood-direction batches of real audio) and W_read the weights of every conv that reads it
(residual: each layer's dilated conv; gate: residual + skip 1x1s; skip: the end conv). For a 1x1
reader this is exactly the mean magnitude of the change its output sees when the channel is removed.
Why this score: weight norms alone ignore activation scales (gates saturate, the mel sets magnitudes)
and the weight-norm g hides them further; a first-order Taylor score |a * dL/da| uses the NLL gradient,
which is near zero and noisy at a trained optimum (many batches needed) and measures the training
loss rather than the synthesised waveform. Forward passes only, deterministic. Without data the
activation term is 1 (weight-only L2 score).

The configs have one width for all flows, so each flow keeps the same number of channels, chosen
independently by its own scores. The result is a dense model of the same class with a smaller config.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from edgeflow.compress.layers import copy_conv_, family_of, finish_like, nets, read_norms, rebuild
from edgeflow.core.errors import ConfigError
from edgeflow.flows.waveflow import WaveFlowNet


def _parts(net) -> Dict[str, Any]:
    """Uniform view of a WaveFlowNet / WN: start, end, and per layer (residual reader, gate readers)."""
    if isinstance(net, WaveFlowNet):
        layers = list(net.layers)
        return {"start": net.start, "end": net.end, "C": layers[0].channels, "res_in": [l.conv for l in layers],
                "res_hook": layers, "gate_hook": [l.skip_conv for l in layers],
                "gate_read": [[l.res_conv, l.skip_conv] if i < len(layers) - 1 else [l.skip_conv]
                              for i, l in enumerate(layers)]}
    return {"start": net.start, "end": net.end, "C": net.channels, "res_in": list(net.in_layers),
            "res_hook": list(net.in_layers), "gate_hook": list(net.res_skip_layers),
            "gate_read": [[l] for l in net.res_skip_layers]}


@torch.no_grad()
def activation_stats(model, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> List[Dict[str, Any]]:
    """Mean |activation| per channel of every net: [{"res": [L][C], "gate": [L][C], "skip": [C]}] by flow.

    Args:
        batches: (audio [B, T], mel [B, n_mels, T / hop]) pairs run in the likelihood direction.
    """
    stats, handles = [], []

    def acc(store, key, i):
        def hook(_mod, args):
            x = args[0].detach().float()
            dims = [d for d in range(x.dim()) if d != 1]
            val = x.abs().mean(dim=dims)
            store[key][i] = val if store[key][i] is None else store[key][i] + val
        return hook

    for net in nets(model):
        p = _parts(net)
        n = len(p["res_in"])
        s = {"res": [None] * n, "gate": [None] * n, "skip": [None]}
        stats.append(s)
        for i in range(n):
            handles.append(p["res_hook"][i].register_forward_pre_hook(acc(s, "res", i)))
            handles.append(p["gate_hook"][i].register_forward_pre_hook(acc(s, "gate", i)))
        handles.append(p["end"].register_forward_pre_hook(acc(s, "skip", 0)))
    try:
        for audio, mel in batches:
            model(audio, mel)
    finally:
        for h in handles:
            h.remove()
    return stats


def channel_scores(model, batches: Optional[Sequence] = None) -> List[Dict[str, Any]]:
    """Importance of every channel (see the module docstring): per flow {"res": [C], "gate": [L x [C]], "skip": [C]}."""
    stats = activation_stats(model, batches) if batches else None
    out = []
    for k, net in enumerate(nets(model)):
        p = _parts(net)
        ones = torch.ones(p["C"])
        st = stats[k] if stats else {"res": [ones] * len(p["res_in"]), "gate": [ones] * len(p["res_in"]),
                                     "skip": [ones]}
        res = sum(st["res"][i] * read_norms(conv) for i, conv in enumerate(p["res_in"]))
        gate = [st["gate"][i] * torch.sqrt(sum(read_norms(c) ** 2 for c in readers))
                for i, readers in enumerate(p["gate_read"])]
        out.append({"res": res, "gate": gate, "skip": st["skip"][0] * read_norms(p["end"])})
    return out


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending channel order (ties keep the lower index)."""
    order = torch.argsort(-score.double(), stable=True)[:k]
    return torch.sort(order).values


def kept_channels(ratio: float, channels: int) -> int:
    """Channels left after pruning ``ratio`` of them (at least 1)."""
    return max(1, int(round(channels * (1.0 - ratio))))


def check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0 \
            or math.isnan(float(ratio)):
        raise ConfigError(f"prune: ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def width_fields(model) -> Tuple[str, ...]:
    """The config fields of the model's width group (they take the new width together)."""
    fam = family_of(model)
    if fam.width is None or not fam.width.fields:
        raise ConfigError(f"prune: the {fam.name} family declares no channel group to prune")
    return tuple(fam.width.fields)


def width_key(model) -> str:
    """The width group's first field (the one reported)."""
    return width_fields(model)[0]


@torch.no_grad()
def _copy_net(dst, src, res: torch.Tensor, skip: torch.Tensor, gates: List[torch.Tensor]) -> None:
    ps, pd = _parts(src), _parts(dst)
    c = ps["C"]
    pair = [torch.cat([g, g + c]) for g in gates]
    copy_conv_(pd["start"], ps["start"], out_idx=res)
    copy_conv_(pd["end"], ps["end"], in_idx=skip)
    if isinstance(src, WaveFlowNet):
        for ld, ls, gi, gp in zip(dst.layers, src.layers, gates, pair):
            copy_conv_(ld.conv, ls.conv, out_idx=gp, in_idx=res)
            copy_conv_(ld.cond_conv, ls.cond_conv, out_idx=gp)
            copy_conv_(ld.res_conv, ls.res_conv, out_idx=res, in_idx=gi)
            copy_conv_(ld.skip_conv, ls.skip_conv, out_idx=skip, in_idx=gi)
        return
    n = len(gates)
    cond_rows = torch.cat([i * 2 * c + gp for i, gp in enumerate(pair)])
    copy_conv_(dst.cond_layer, src.cond_layer, out_idx=cond_rows)
    for i in range(n):
        copy_conv_(dst.in_layers[i], src.in_layers[i], out_idx=pair[i], in_idx=res)
        rows = torch.cat([res, c + skip]) if i < n - 1 else skip
        copy_conv_(dst.res_skip_layers[i], src.res_skip_layers[i], out_idx=rows, in_idx=gates[i])


def prune_model(model, ratio: Optional[float] = None, channels: Optional[int] = None,
                batches: Optional[Sequence] = None) -> Tuple[Any, Dict[str, Any]]:
    """Prune the conditioning nets of a model (its family's width group) to a dense smaller model.

    Args:
        model: the model (left untouched).
        ratio: fraction of channels to remove, in [0, 1); or give ``channels`` (the width to keep).
        batches: (audio, mel) batches for the activation term of the scores; None: weight-only scores.

    Returns:
        (pruned model of the same class, info {"from", "to", "score", "kept": per flow index lists}).
        Ratio 0 (or a width equal to the current one) returns an unchanged deep copy.
    """
    fields = width_fields(model)
    width = getattr(model.config, fields[0])
    if channels is None:
        channels = kept_channels(check_ratio(0.0 if ratio is None else ratio), width)
    if not 1 <= channels <= width:
        raise ConfigError(f"prune: cannot keep {channels} of {width} channels")
    info: Dict[str, Any] = {"from": width, "to": channels, "score": "activation x read-weight L2" if batches
                            else "read-weight L2 (no data)"}
    if channels == width:
        return copy.deepcopy(model), dict(info, kept=None)
    scores = channel_scores(model, batches)
    new = rebuild(model, **{f: channels for f in fields})
    sd = new.state_dict()
    same = {k: v for k, v in model.state_dict().items() if k in sd and sd[k].shape == v.shape}
    new.load_state_dict(same, strict=False)
    kept = []
    for sc, dst, src in zip(scores, nets(new), nets(model)):
        res, skip = _top(sc["res"], channels), _top(sc["skip"], channels)
        gates = [_top(g, channels) for g in sc["gate"]]
        _copy_net(dst, src, res, skip, gates)
        kept.append({"res": res.tolist(), "skip": skip.tolist(), "gate": [g.tolist() for g in gates]})
    return finish_like(new, model), dict(info, kept=kept)

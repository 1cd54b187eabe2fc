"""Helpers shared by pruning and reduction: find the conditioning nets, rebuild a model with a new config,
and copy (sliced) convolution weights with or without weight norm.

Weight norm (``torch.nn.utils.parametrizations.weight_norm``, dim 0) stores ``w = g * v / ||v||`` with
``g`` [out, 1, ...] and the norm over every dim but the output one. Slicing output channels slices g
and v as they are (exact); slicing input channels changes ``||v||``, so g is rescaled by
``||v_sliced|| / ||v||`` per output channel: the effective weight is exactly ``w[out][:, in]``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import WN, AffineCoupling, remove_weight_norm
from edgeflow.flows.waveflow import WaveFlowNet
from edgeflow.models.base import FlowVocoder, build_model


def family_of(model) -> str:
    fam = getattr(model, "family", "")
    if fam not in ("waveflow", "waveglow"):
        raise ConfigError(f"compression supports waveflow and waveglow models, got {type(model).__name__}")
    return fam


def nets(model: nn.Module) -> List[nn.Module]:
    """The conditioning nets in flow order: WaveFlowNet (WaveFlow) or WN (WaveGlow)."""
    return [m for m in model.modules() if isinstance(m, (WaveFlowNet, WN))]


def waveglow_flows(model: nn.Module) -> List[Tuple[nn.Module, AffineCoupling]]:
    """WaveGlow's (1x1 conv, coupling) pairs in forward order, through the nested early-output stages."""
    out, seq = [], model.flows
    while seq is not None:
        blocks, nxt = list(seq.blocks), None
        if blocks and not isinstance(blocks[-1], AffineCoupling) and hasattr(blocks[-1], "inner"):
            nxt = blocks.pop().inner
        out += [(blocks[i], blocks[i + 1]) for i in range(0, len(blocks), 2)]
        seq = nxt
    return out


def has_weight_norm(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())


def is_frozen(model: nn.Module) -> bool:
    """Whether the model went through :func:`edgeflow.export.freeze.freeze_model` (inverse 1x1 buffers set)."""
    return any(getattr(m, "weight_inv", None) is not None for m in model.modules()) or (
        not has_weight_norm(model) and not any(p.requires_grad for p in model.parameters()))


def rebuild(model: FlowVocoder, **changes) -> FlowVocoder:
    """A fresh model of the same family with ``changes`` applied to the config (weights not copied),
    weight norm removed when the source has none, same dtype, CPU, eval mode."""
    try:
        cfg = model.config.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"invalid compressed config: {exc}") from None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        new = build_model(model.family, cfg)
    if not has_weight_norm(model):
        remove_weight_norm(new)
    dtype = next(model.parameters()).dtype
    return new.to(dtype).eval()


def _take(t: torch.Tensor, dim: int, idx: Optional[torch.Tensor]) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx.to(t.device))


@torch.no_grad()
def copy_conv_(dst: nn.Module, src: nn.Module, out_idx: Optional[torch.Tensor] = None,
               in_idx: Optional[torch.Tensor] = None, scale: float = 1.0) -> None:
    """Copy src's weight (rows ``out_idx``, input channels ``in_idx``; None = all) and bias into dst,
    multiplying the effective weight by ``scale``. Both must be weight-normed, or neither."""
    if parametrize.is_parametrized(src, "weight") != parametrize.is_parametrized(dst, "weight"):
        raise ValueError("copy_conv_: weight norm differs between source and destination")
    if parametrize.is_parametrized(src, "weight"):
        g, v = src.parametrizations.weight.original0, src.parametrizations.weight.original1
        v_out, g_out = _take(v, 0, out_idx), _take(g, 0, out_idx)
        v_new = _take(v_out, 1, in_idx)
        if in_idx is not None:
            g_out = g_out * torch.norm_except_dim(v_new, 2, 0) / torch.norm_except_dim(v_out, 2, 0).clamp_min(1e-30)
        dst.parametrizations.weight.original0.copy_(g_out * scale)
        dst.parametrizations.weight.original1.copy_(v_new)
    else:
        dst.weight.copy_(_take(_take(src.weight, 0, out_idx), 1, in_idx) * scale)
    if src.bias is not None:
        dst.bias.copy_(_take(src.bias, 0, out_idx))


def read_norms(conv: nn.Module) -> torch.Tensor:
    """L2 norm of the weights reading each input channel of a conv: [in_channels]."""
    w = conv.weight.detach().float()
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def finish_like(new: FlowVocoder, src: FlowVocoder) -> FlowVocoder:
    """Give ``new`` the source's state: eval mode, and frozen (for export) if the source was frozen."""
    new.eval()
    if is_frozen(src):
        from edgeflow.export.freeze import freeze_model

        freeze_model(new)
    return new

"""Model surgery shared by the families' compression methods: rebuild with a new config, copy (sliced)
convolution weights with or without weight norm.

Weight norm (``torch.nn.utils.parametrizations.weight_norm``, dim 0) stores ``w = g * v / ||v||`` with
``g`` [out, 1, ...] and the norm over every dim but the output one. Slicing output channels slices g
and v as they are (exact); slicing input channels changes ``||v||``, so g is rescaled by
``||v_sliced|| / ||v||`` per output channel: the effective weight is exactly ``w[out][:, in]``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeflow.core.errors import ConfigError
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.base import build_model
from edgeflow.models.checkpoint import has_weight_norm


def rebuild(model: nn.Module, **changes) -> nn.Module:
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


def load_matching(dst: nn.Module, src: nn.Module) -> None:
    """Load every entry of ``src``'s state dict whose name and shape ``dst`` has."""
    sd = dst.state_dict()
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in sd and sd[k].shape == v.shape},
                        strict=False)


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

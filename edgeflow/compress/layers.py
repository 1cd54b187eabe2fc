"""Helpers shared by pruning and reduction: a model's family, its prunable nets, rebuild, sliced conv copies,
and giving a new model its source's state. Family knowledge comes from the family object
(:class:`edgeflow.models.family.Family`); the weight surgery itself lives in :mod:`edgeflow.models.surgery`.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from edgeflow.core.errors import ConfigError
from edgeflow.flows.conv1x1 import Invertible1x1Conv, InvertibleLU1x1Conv
from edgeflow.models.checkpoint import has_weight_norm  # noqa: F401  (one implementation, found here too)
from edgeflow.models.family import Family, get_family
from edgeflow.models.surgery import copy_conv_, rebuild  # noqa: F401  (compress's helpers, kept importable here)


def family_of(model) -> Family:
    """The registered family of a model (ConfigError naming the type if it has none)."""
    try:
        return get_family(model)
    except ConfigError:
        raise ConfigError(f"compression needs a model of a registered family, got {type(model).__name__}") from None


def nets(model: nn.Module) -> List[nn.Module]:
    """The conditioning nets the family's width group sizes, in flow order (WaveFlowNet or WN)."""
    return family_of(model).prunable_nets(model)


def is_frozen(model: nn.Module) -> bool:
    """Whether the model went through its family's ``freeze`` (inverse 1x1 buffers set, or no weight norm and
    no trainable parameters)."""
    return any(isinstance(m, (Invertible1x1Conv, InvertibleLU1x1Conv)) and m.weight_inv is not None
               for m in model.modules()) or (
        not has_weight_norm(model) and not any(p.requires_grad for p in model.parameters()))


def read_norms(conv: nn.Module) -> torch.Tensor:
    """L2 norm of the weights reading each input channel of a conv: [in_channels]."""
    w = conv.weight.detach().float()
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def finish_like(new: nn.Module, src: nn.Module) -> nn.Module:
    """Give ``new`` the source's state: eval mode, and frozen (its family's ``freeze``) if the source was frozen."""
    new.eval()
    if is_frozen(src):
        family_of(new).freeze(new)
    return new

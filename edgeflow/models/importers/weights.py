"""Loading a flat {name: array} of plain ("baked") weights into a model with weight-norm parametrizations.

A weight-normed conv keeps ``g`` (``parametrizations.weight.original0``, the norm over every dim but 0) and
``v`` (``original1``). A baked weight W restores as v = W, g = ||W|| per slice of dim 0, which reproduces W
exactly up to float rounding (g * v / ||v||).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch

from edgeflow.core.errors import CheckpointError

G, V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"


def wn_norm(w: torch.Tensor) -> torch.Tensor:
    """||w|| over every dim but 0, keepdim (torch weight_norm with dim=0)."""
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))


def load_baked(model: torch.nn.Module, weights: Dict[str, torch.Tensor], optional: Iterable[str] = (),
               where: str = "file") -> Tuple[List[str], List[str]]:
    """Copy ``weights`` (plain names, e.g. ``flow.flows.0.enc.in_layers.0.weight``) into ``model``.

    Args:
        model: the target; weight-normed parameters are filled from the baked weight.
        weights: name -> tensor. Also accepted: ``X.weight_g`` / ``X.weight_v`` (old-style weight norm).
        optional: name prefixes the file may lack (they keep their initial values).
        where: the file, for error messages.

    Returns:
        (names of the model's tensors left at their initial values, file names not used).

    Raises:
        CheckpointError: a required tensor is missing or has the wrong shape.
    """
    target = model.state_dict()
    optional = tuple(optional)
    used, missing, new = set(), [], {}
    for name, ref in target.items():
        if name.endswith(G) or name.endswith(V):
            base = name[:-len(G)]
            if base + ".weight_g" in weights and base + ".weight_v" in weights:
                src = weights[base + (".weight_g" if name.endswith(G) else ".weight_v")]
                used.update([base + ".weight_g", base + ".weight_v"])
            elif base + ".weight" in weights:
                w = weights[base + ".weight"].to(ref.dtype)
                src = wn_norm(w) if name.endswith(G) else w
                used.add(base + ".weight")
            else:
                src = None
        else:
            src = weights.get(name)
            used.add(name)
        if src is None:
            if name.startswith(optional):
                missing.append(name)
                continue
            raise CheckpointError(f"{where}: no weights for {name} (not a model of this architecture, or truncated)")
        if tuple(src.shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(src.shape)}, the config needs "
                                  f"{tuple(ref.shape)} (config and weights do not match)")
        new[name] = src.to(ref.dtype)
    model.load_state_dict(new, strict=False)
    return missing, sorted(set(weights) - used)

"""The ``model.pt`` format: one file with family, config and weights, loadable with weights_only=True.

Layout (a plain dict of tensors, strings and numbers; nothing that runs code on load)::

    {"format": "edgeflow.model", "format_version": 1, "family": "waveflow",
     "config": {...}, "weight_norm": True, "state_dict": {...}, "history": [...], "meta": {...}}
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from edgeflow.core.errors import CheckpointError, ConfigError, not_a_file, short_reason
from edgeflow.core.io import atomic_path
from edgeflow.flows.coupling import remove_weight_norm
from edgeflow.models.base import FAMILIES, FlowVocoder, build_model

FORMAT = "edgeflow.model"
FORMAT_VERSION = 1


def has_weight_norm(model: torch.nn.Module) -> bool:
    """Whether any weight of ``model`` is parametrized (weight norm, the training-time form)."""
    from torch.nn.utils import parametrize

    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())


def checkpoint_dict(model: FlowVocoder, history: Optional[List[Dict[str, Any]]] = None,
                    meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The dict saved as model.pt (weights copied to CPU)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "config": model.config.to_dict(),
        "weight_norm": has_weight_norm(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "history": list(history or []),
        "meta": dict(meta or {}),
    }


def save_model(path: str | Path, model: FlowVocoder, history=None, meta=None) -> None:
    """Write model.pt atomically."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint_dict(model, history, meta), tmp)


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickle_runs_code(path: Path) -> bool:
    """Whether a file parses as a pickle that imports or calls objects (read with pickletools; never run)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            ops = [op.name for op, _, _ in pickletools.genops(f)]   # the whole pickle must parse
    except Exception:  # noqa: BLE001 - not a pickle at all
        return False
    return bool(_CODE_OPCODES.intersection(ops))


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """Load and validate a checkpoint dict without building the model.

    Raises:
        CheckpointError: missing, corrupt, unsafe (would run code), or not an edgeflow model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(not_a_file("model file", path))
    try:
        with warnings.catch_warnings():   # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
        if lines or (not zipfile.is_zipfile(path) and _pickle_runs_code(path)):
            why = f": {short_reason(lines[0])}" if lines else ""
            raise CheckpointError(f"{path}: refused, the file holds Python objects that would run code on load "
                                  f"(weights_only load failed{why})") from None
        raise CheckpointError(f"{path}: corrupt or not a PyTorch file (unreadable pickle data)") from None
    except Exception as exc:  # noqa: BLE001 - unpickling arbitrary bytes raises KeyError, IndexError, ...
        msg = short_reason(exc)
        if isinstance(exc, LookupError):
            msg = "unreadable pickle data"
        raise CheckpointError(f"{path}: corrupt or not a PyTorch file ({msg})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgeflow model checkpoint (foreign format; expected "
                              f"format={FORMAT!r} with family, config and state_dict)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {ckpt.get('format_version')!r} "
                              f"(this edgeflow reads {FORMAT_VERSION})")
    if ckpt.get("family") not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {ckpt.get('family')!r} "
                              f"(known: {', '.join(FAMILIES)})")
    for key in ("config", "state_dict"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key}")
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], where: str = "checkpoint") -> FlowVocoder:
    """Build the model a checkpoint dict describes and load its weights."""
    try:
        model = build_model(ckpt["family"], ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{where}: bad config: {exc}") from None
    if not ckpt.get("weight_norm", True):
        remove_weight_norm(model)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{where}: weights do not match the {ckpt['family']} config "
                              f"({short_reason(' '.join(lines[1:2]), 200)})") from None
    return model


def load_model(path: str | Path, family: Optional[str] = None) -> Tuple[FlowVocoder, Dict[str, Any]]:
    """Load model.pt safely. Returns (model in eval mode, checkpoint dict without the weights).

    Args:
        path: the model file.
        family: if given, refuse a checkpoint of another family.
    """
    ckpt = read_checkpoint(path)
    if family is not None and ckpt["family"] != family:
        raise CheckpointError(f"{path}: checkpoint is a {ckpt['family']} model, expected {family}")
    model = model_from_checkpoint(ckpt, str(path))
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.eval(), info

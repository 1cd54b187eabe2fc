"""Import NVIDIA WaveGlow checkpoints as an edgeflow :class:`~edgeflow.models.waveglow.WaveGlow`.

Two public layouts (parameter names as NVIDIA/waveglow ``glow.py`` and NVIDIA/DeepLearningExamples
``PyTorch/SpeechSynthesis/Tacotron2/waveglow/model.py`` name them):

* **original** (``waveglow_256channels*.pt``): ``{"model": glow.WaveGlow(...), ...}``, the whole model object
  pickled (zip or legacy torch format), read with the restricted unpickler of
  :mod:`edgeflow.models.importers.unpickle` (allow-listed class paths only; nothing of the file runs);
* **DeepLearningExamples**: ``{"state_dict": {...}, "config": {...}, ...}`` read with ``weights_only=True``,
  names possibly prefixed ``module.`` (DDP); a bare state dict is accepted too.

Names: ``upsample``; ``convinv.k.conv.weight`` [c, c, 1]; ``WN.k.{start, cond_layer, in_layers.i,
res_skip_layers.i, end}``, weight norm as ``weight_g`` / ``weight_v``. Older WN variants are merged:
per-layer ``cond_layers.i`` (DeepLearningExamples, ``glow_old.py``) concatenate into ``cond_layer``, and
``res_layers.i`` + ``skip_layers.i`` into ``res_skip_layers.i`` (as the repository's ``convert_model.py``).
NVIDIA's WN end conv emits (b, log_s); edgeflow's coupling reads (log_s, t): the halves are swapped. The
config is read from the weights' shapes (and checked against the file's config where it has one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from edgeflow.core.errors import CheckpointError
from edgeflow.core.io import sha256_file
from edgeflow.models.importers.unpickle import (PickledObject, RefusedGlobal, load_pickled_objects, module_tensors,
                                                read_torch_weights)
from edgeflow.models.importers.weights import load_baked
from edgeflow.models.waveglow import WaveGlow, WaveGlowConfig
from edgeflow.models.waveglow_family import flow_pairs

#: Class paths an original-layout file may pickle (placeholders are built, never these classes).
ORIGINAL_CLASSES = tuple(f"{m}.{c}" for m in ("glow", "glow_old") for c in ("WaveGlow", "WN", "Invertible1x1Conv")) + (
    "torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.ConvTranspose1d", "torch.nn.modules.container.ModuleList",
    "torch.nn.utils.weight_norm.WeightNorm")
_WHAT = "a WaveGlow checkpoint"


def _plain(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """float32 CPU tensors; weight-norm pairs win over a stale computed ``weight``; parametrization names as
    ``weight_g`` / ``weight_v``; ``W_inverse`` caches dropped."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        if torch.is_tensor(v) and not k.endswith("W_inverse"):
            out[k] = v.detach().to(torch.float32)
    for k in [k for k in out if k.endswith(".weight_g")]:
        out.pop(k[:-2], None)
    return out


def _weight(sd: Dict[str, torch.Tensor], base: str) -> torch.Tensor:
    if base + ".weight" in sd:
        return sd[base + ".weight"]
    g, v = sd[base + ".weight_g"], sd[base + ".weight_v"]
    return g * v / torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape(-1, 1, 1)


def _merge(sd: Dict[str, torch.Tensor], bases: List[str], new: str) -> None:
    """Concatenate the convs ``bases`` along their outputs into ``new`` (in place)."""
    if all(b + ".weight_g" in sd and b + ".weight_v" in sd for b in bases):
        for s in ("weight_g", "weight_v"):
            sd[f"{new}.{s}"] = torch.cat([sd[f"{b}.{s}"] for b in bases])
    else:
        sd[new + ".weight"] = torch.cat([_weight(sd, b) for b in bases])
    sd[new + ".bias"] = torch.cat([sd[b + ".bias"] for b in bases])
    for b in bases:
        for s in ("weight", "weight_g", "weight_v", "bias"):
            sd.pop(f"{b}.{s}", None)


def _indices(sd: Dict[str, Any], pattern: str) -> List[int]:
    return sorted({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m})


def canonical(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The current ``glow.py`` names (``cond_layer``, ``res_skip_layers``) from any of the public variants."""
    sd = _plain(sd)
    for k in _indices(sd, r"WN\.(\d+)\."):
        w = f"WN.{k}"
        cond = [f"{w}.cond_layers.{i}" for i in _indices(sd, rf"{w}\.cond_layers\.(\d+)\.")]
        if cond:
            _merge(sd, cond, f"{w}.cond_layer")
        skips = _indices(sd, rf"{w}\.skip_layers\.(\d+)\.")
        for i in skips:
            parts = ([f"{w}.res_layers.{i}"] if i < len(skips) - 1 else []) + [f"{w}.skip_layers.{i}"]
            _merge(sd, parts, f"{w}.res_skip_layers.{i}")
    return sd


def infer_config(sd: Dict[str, torch.Tensor], where: str) -> WaveGlowConfig:
    """A WaveGlowConfig from canonical weights' shapes (CheckpointError if they are not a WaveGlow's)."""
    from edgeflow.audio.mel import MelConfig

    flows = _indices(sd, r"convinv\.(\d+)\.conv\.weight")
    if "upsample.weight" not in sd or not flows or flows != list(range(len(flows))) \
            or "WN.0.start.bias" not in sd:
        raise CheckpointError(f"{where}: not {_WHAT} (no upsample / convinv.k.conv / WN.k weights)")
    chans = [int(sd[f"convinv.{k}.conv.weight"].shape[0]) for k in flows]
    drops = [k for k in range(1, len(chans)) if chans[k] != chans[k - 1]]
    every = drops[0] if drops else len(chans)
    up, layers = sd["upsample.weight"], _indices(sd, r"WN\.0\.in_layers\.(\d+)\.")
    try:
        cfg = WaveGlowConfig(mel=MelConfig(n_mels=int(up.shape[0]), hop_length=int(up.shape[2]) // 4),
                             n_flows=len(chans), n_group=chans[0], n_early_every=every,
                             n_early_size=chans[every - 1] - chans[every] if drops else 2, wn_layers=len(layers),
                             wn_channels=int(sd["WN.0.start.bias"].shape[0]),
                             wn_kernel_size=int(_weight(sd, "WN.0.in_layers.0").shape[2]), sigma_infer=0.6)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{where}: WaveGlow weights of an unsupported shape ({exc})") from None
    expect = [cfg.n_group - cfg.n_early_size * (k // every if every else 0) for k in range(cfg.n_flows)]
    if expect != chans or int(up.shape[2]) % 4:
        raise CheckpointError(f"{where}: WaveGlow flow widths {chans} (upsampler kernel {int(up.shape[2])}) do not "
                              f"follow early outputs of a fixed size at a fixed interval")
    return cfg


def _check_declared(cfg: WaveGlowConfig, declared: Dict[str, Any], where: str) -> None:
    """The file's own config (DeepLearningExamples ``config``, or the pickled object's attributes) must agree."""
    wn = declared.get("WN_config") or {}
    early = [("n_early_every", cfg.n_early_every), ("n_early_size", cfg.n_early_size)]
    pairs = [("n_flows", cfg.n_flows), ("n_group", cfg.n_group), ("n_mel_channels", cfg.mel.n_mels)] + (
        early if cfg.n_flows > cfg.n_early_every else [])
    pairs += [(f"WN_config.{k}", v) for k, v in (("n_layers", cfg.wn_layers), ("n_channels", cfg.wn_channels),
                                                  ("kernel_size", cfg.wn_kernel_size))]
    for key, have in pairs:
        src = wn if key.startswith("WN_config.") else declared
        value = src.get(key.split(".")[-1])
        if isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) != have:
            raise CheckpointError(f"{where}: the file's config says {key}={value}, its weights have {have} "
                                  f"(config and weights do not match)")


def edgeflow_weights(model: WaveGlow, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Canonical NVIDIA names -> the edgeflow model's names (end conv halves swapped)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {"upsample.weight": sd["upsample.weight"], "upsample.bias": sd["upsample.bias"]}
    for k, (conv, coupling) in enumerate(flow_pairs(model)):
        out[f"{names[id(conv)]}.weight"] = sd[f"convinv.{k}.conv.weight"][:, :, 0]
        net, n_b = names[id(coupling.net)], coupling.n_b
        for key, value in sd.items():
            if key.startswith(f"WN.{k}.") and not key.startswith(f"WN.{k}.end."):
                out[f"{net}.{key[len(f'WN.{k}.'):]}"] = value
        for s in ("weight", "bias"):
            end = sd[f"WN.{k}.end.{s}"]
            out[f"{net}.end.{s}"] = torch.cat([end[n_b:], end[:n_b]])    # (b, log_s) -> (log_s, t)
    return out


def _state_dict_of(ckpt: Any, where: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """(state dict, declared config, format) of a weights-only file."""
    if isinstance(ckpt, dict) and ckpt.get("format") == "edgeflow.model":
        raise CheckpointError(f"{where}: already an edgeflow model ({ckpt.get('family')}), not {_WHAT}; use it as is")
    sd, fmt = (ckpt.get("state_dict"), "deeplearningexamples") if isinstance(ckpt, dict) and \
        isinstance(ckpt.get("state_dict"), dict) else (ckpt, "waveglow-state-dict")
    if not isinstance(sd, dict) or not any(isinstance(k, str) and "convinv." in k for k in sd):
        raise CheckpointError(f"{where}: not {_WHAT} (no model object, and no state dict with convinv / WN weights)")
    sd = {re.sub(r"^(module\.)+(1\.)?", "", k): v for k, v in sd.items() if isinstance(k, str)}
    declared = ckpt.get("config") if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) else {}
    return sd, declared, fmt


def _original(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, declared attributes) of an original-layout file (whole model pickled)."""
    try:
        ckpt = load_pickled_objects(path, ORIGINAL_CLASSES)
    except RefusedGlobal as exc:
        raise CheckpointError(f"{path}: refused, the file's pickle names {exc.path}, which is not part of a "
                              f"WaveGlow model (nothing of it was run)") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises anything
        raise CheckpointError(f"{path}: not {_WHAT} (unreadable pickle: {type(exc).__name__})") from None
    model = ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if not isinstance(model, PickledObject) or not model.cls_path.endswith(".WaveGlow"):
        raise CheckpointError(f"{path}: not {_WHAT} (no pickled glow.WaveGlow under 'model')")
    sd, _ = module_tensors(model)
    attrs = {k: v for k, v in model.attrs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    wn0 = (model.attrs.get("_modules", {}).get("WN") or PickledObject()).attrs.get("_modules", {}).get("0")
    if isinstance(wn0, PickledObject):
        attrs["WN_config"] = {k: wn0.attrs.get(k) for k in ("n_layers", "n_channels")}
    return sd, attrs


def import_waveglow(path: str | Path) -> Tuple[WaveGlow, Dict[str, Any]]:
    """Import an NVIDIA WaveGlow checkpoint (original pickled model, DeepLearningExamples or bare state dict).

    Returns:
        (model in eval mode, info): info["source"] = {format, file, sha256}; info["config_from"] says
        where the config came from.

    Raises:
        CheckpointError: a missing, foreign, corrupt or unsafe file; weights of an unsupported shape.
    """
    path = Path(path)
    ckpt, needs_objects = read_torch_weights(path, _WHAT)
    if needs_objects:
        sd, declared = _original(path)
        fmt = "nvidia-waveglow-pickle"
    else:
        sd, declared, fmt = _state_dict_of(ckpt, str(path))
    sd = canonical(sd)
    cfg = infer_config(sd, str(path))
    _check_declared(cfg, declared, str(path))
    model = WaveGlow(cfg)
    try:
        missing, unused = load_baked(model, edgeflow_weights(model, sd), where=str(path))
    except KeyError as exc:
        raise CheckpointError(f"{path}: WaveGlow weights incomplete (no {exc.args[0]})") from None
    if unused:
        raise CheckpointError(f"{path}: unexpected WaveGlow weights {unused[:3]} (not this architecture)")
    info = {"source": {"format": fmt, "file": path.name, "sha256": sha256_file(path)},
            "config_from": "weight shapes" + (" (checked against the file's config)" if declared else "")}
    return model.eval(), info


def nvidia_state_dict(model: WaveGlow) -> Dict[str, torch.Tensor]:
    """The model's weights under the current ``glow.py`` names (weight norm as weight_g / weight_v)."""
    from edgeflow.models.importers.weights import G, V

    names = {id(m): n for n, m in model.named_modules()}
    full = model.state_dict()
    out = {"upsample.weight": full["upsample.weight"], "upsample.bias": full["upsample.bias"]}
    for k, (conv, coupling) in enumerate(flow_pairs(model)):
        out[f"convinv.{k}.conv.weight"] = conv.weight_matrix().detach()[:, :, None]
        net, n_b = names[id(coupling.net)] + ".", coupling.n_b
        for key, value in full.items():
            if key.startswith(net):
                out[f"WN.{k}." + key[len(net):].replace(G, ".weight_g").replace(V, ".weight_v")] = value
        for s in ("weight", "bias"):
            end = full[f"{net}end.{s}"]
            out[f"WN.{k}.end.{s}"] = torch.cat([end[end.shape[0] - n_b:], end[:end.shape[0] - n_b]])
    return {k: v.detach().cpu().clone() for k, v in out.items()}

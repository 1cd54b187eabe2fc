"""The VITS family declaration (task "tts"): cost model, size fields, export hooks.

The export graph is not the vocoder one ((mel, z, sigma) -> audio), so ``export`` is None here and
:mod:`edgeflow.export.vits` writes the two-graph VITS bundle.

Cost model (FLOPs = 2 x multiply-adds of every conv / matmul, per second of audio): frame-rate parts at
``sample_rate / hop`` frames per second; phoneme-rate parts (text encoder, duration flow) at
:data:`PHONEMES_PER_SECOND` phoneme ids per second (Piper ids: each phoneme followed by a pad ``_``) and an
attention span of :data:`ATTENTION_SPAN` ids (whole-sentence attention).
"""

from __future__ import annotations

from typing import Any, Dict, List

from edgeflow.models.family import Family, register_family, FAMILIES
from edgeflow.models.vits.config import VitsConfig
from edgeflow.models.vits.model import Vits
from edgeflow.models.hifigan import decoder_flops_per_frame  # noqa: F401  (re-exported)

#: Phoneme ids per second of speech: 39-41 measured on en_US-joe-medium at its default scales (2026-12-02).
PHONEMES_PER_SECOND = 40.0
#: Ids one attention row spans (a sentence of about 3 s).
ATTENTION_SPAN = 120


def flops_breakdown(cfg: VitsConfig) -> Dict[str, float]:
    """FLOPs per second of audio by part: text_encoder, duration, flow, decoder."""
    frames, ph = cfg.sample_rate / cfg.hop_length, PHONEMES_PER_SECOND
    h, c, f, k = cfg.hidden_channels, cfg.inter_channels, cfg.filter_channels, cfg.kernel_size
    enc = cfg.n_layers * (8.0 * h * h + 4.0 * h * ATTENTION_SPAN + 4.0 * h * f * k) + 4.0 * h * c
    dds = 3 * (2.0 * h * 3 + 2.0 * h * h)
    dur = 4.0 * h * h + dds + (cfg.sdp_flows - 1) * (2.0 * h + dds + 2.0 * h * 29) if cfg.use_sdp else \
        2.0 * 3 * cfg.dp_filter_channels * (h + cfg.dp_filter_channels)
    hf, L = cfg.flow_hidden, cfg.flow_layers
    wn = 2.0 * hf * 2 * hf * cfg.flow_kernel * L + 2.0 * hf * 2 * hf * (L - 1) + 2.0 * hf * hf
    flow = cfg.n_flows * (2.0 * (c // 2) * hf * 2 + wn)
    return {"text_encoder": enc * ph, "duration": dur * ph, "flow": flow * frames,
            "decoder": decoder_flops_per_frame(cfg.decoder) * frames}


class VitsFamily(Family):
    """VITS (Kim et al., 2021) as Piper trains it: phoneme ids -> wav."""

    name, task = "vits", "tts"
    config_cls, model_cls = VitsConfig, Vits
    export = None
    flows_field, layers_field = "n_flows", "flow_layers"
    size_fields = ("inter_channels", "hidden_channels", "filter_channels", "n_layers", "n_flows", "flow_layers")
    free_fields = ("noise_scale", "length_scale", "noise_w")

    def flops_breakdown(self, config: Any) -> Dict[str, float]:
        return flops_breakdown(config)

    def channel_groups(self, config: Any) -> List[Dict[str, Any]]:
        """The decoder's channel groups (``tts_prune`` cuts them), module names under ``dec.``."""
        from edgeflow.models.hifigan import channel_groups

        return [dict(g, writers=[f"dec.{m}" for m in g["writers"]], readers=[f"dec.{m}" for m in g["readers"]])
                for g in channel_groups(config.decoder)]


def register() -> VitsFamily:
    """Register the family once (idempotent); returns it."""
    if "vits" in FAMILIES:
        return FAMILIES.get("vits")
    return register_family(VitsFamily())

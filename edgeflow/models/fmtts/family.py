"""The fmtts family declaration (task "tts") and its cost model.

Cost model (FLOPs = 2 x multiply-adds of every conv / linear / matmul, per second of audio):

* text encoder: VITS's formula (:func:`edgeflow.models.vits.family.flops_breakdown`'s) at
  :data:`PHONEMES_PER_SECOND` ids per second;
* prosody: the flow's and the L2 predictor's conditioning nets and couplings at the phoneme rate;
* decoder: one evaluation of the vector field, counted by forward hooks on its convs and linears over one
  second of frames (plus, for the DiT, its attention products: 2 x 2 x F x F x D per block, as the banded
  attention computes the whole F x F score matrix), times the number of function evaluations ``nfe`` (doubled
  with classifier-free guidance).

The RTF estimate of a part is its FLOPs per second divided by the target's peak (e.g. 187 GFLOP/s here).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from edgeflow.models.family import FAMILIES, Family, register_family
from edgeflow.models.fmtts.config import FmTtsConfig
from edgeflow.models.fmtts.model import FmTts
from edgeflow.models.vits.family import ATTENTION_SPAN, PHONEMES_PER_SECOND


def count_flops(module: nn.Module, *inputs: Any) -> float:
    """FLOPs (2 x MACs) of the Conv1d and Linear layers in one forward of ``module(*inputs)``."""
    total = [0.0]

    def hook(m, _inp, out):
        if isinstance(m, nn.Conv1d):
            total[0] += 2.0 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0]
        elif isinstance(m, nn.Linear):
            total[0] += 2.0 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def flops_breakdown(cfg: FmTtsConfig, nfe: int | None = None) -> Dict[str, float]:
    """FLOPs per second of audio by part: text_encoder, prosody, decoder (all ``nfe`` evaluations)."""
    nfe = cfg.nfe if nfe is None else nfe
    h, f, k = cfg.hidden, cfg.filter_channels, cfg.kernel_size
    enc = cfg.n_layers * (8.0 * h * h + 4.0 * h * ATTENTION_SPAN + 4.0 * h * f * k) + 4.0 * h * cfg.n_mels
    p, pl = cfg.prosody_channels, cfg.prosody_layers
    cond = 2.0 * 3 * p * (h + (pl - 1) * p)
    w = cfg.prosody_wn_channels
    coupling = 2.0 * (w + p * 2 * w * cfg.prosody_wn_layers + w * 2 * w * cfg.prosody_wn_layers + w * 2)
    prosody = 2 * cond + cfg.prosody_flows * coupling + 2.0 * p * 2
    frames = cfg.mel.sample_rate / cfg.mel.hop_length
    n = int(round(frames / cfg.frame_multiple)) * cfg.frame_multiple
    c = cfg.n_mels
    dec = FmTts(cfg).decoder.eval()
    per_eval = count_flops(dec, torch.zeros(1, c, n), torch.zeros(1, c + 1, n), torch.ones(1, 1, n),
                           torch.zeros(1)) * frames / n
    if cfg.decoder == "dit":
        per_eval += cfg.dit_layers * 4.0 * n * n * cfg.dec_channels * frames / n
    evals = nfe * (2 if cfg.guidance else 1)
    return {"text_encoder": enc * PHONEMES_PER_SECOND, "prosody": prosody * PHONEMES_PER_SECOND,
            "decoder": per_eval * evals}


class FmTtsFamily(Family):
    """Flow-matching TTS (Matcha-TTS structure, OT-CFM decoder, prosody flow): phoneme ids -> log-mel."""

    name, task = "fmtts", "tts"
    config_cls, model_cls = FmTtsConfig, FmTts
    export = None
    size_fields = ("hidden", "filter_channels", "n_layers", "dec_channels", "dec_levels", "dec_blocks",
                   "dit_layers", "prosody_channels", "prosody_flows")
    free_fields = ("nfe", "solver", "sway", "temperature", "guidance", "prosody", "tau", "length_scale")

    def flops_breakdown(self, config: Any) -> Dict[str, float]:
        return flops_breakdown(config)


def register() -> FmTtsFamily:
    """Register the family once (idempotent); returns it."""
    if "fmtts" in FAMILIES:
        return FAMILIES.get("fmtts")
    return register_family(FmTtsFamily())

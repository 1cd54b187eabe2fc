"""A HiFi-GAN generator's waveform-rate stages replaced by an inverse-STFT head (iSTFTNet, Kaneko et al. 2022).

The last upsampling stages of a HiFi-GAN generator run at the audio rate with the fewest channels, and they are
what INT8 cannot take (their outputs are the waveform's fine structure; bench/results/tts_optimize.md). iSTFTNet
drops them: the generator stops ``stages`` stages early and its ``conv_post`` writes, per step of the remaining
rate, the log-magnitude and phase of ``n_fft // 2 + 1`` bins; an inverse STFT of hop ``prod(dropped rates)`` turns
them into audio (:class:`edgeflow.models.hifigan.Generator` with ``istft_hop``). The kept stages start from the
source generator's weights; the new ``conv_post`` starts near silence and is learned by distillation
(:mod:`edgeflow.compress.generator_distill`).

Example::

    student, info = istft_generator(voice.dec, stages=1)     # joe-medium: [8, 8, 4] -> [8, 8] + iSTFT hop 4
    distill_generator(student, train, valid, logmel, settings)
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch
from torch import nn

from edgeflow.compress.generator_refit import assign_weight
from edgeflow.core.errors import ConfigError
from edgeflow.models.hifigan import Generator, decoder_flops_per_frame

#: Initial log-magnitude of the new head (exp(-4) = 0.018 per bin: near silence, so distillation starts from a
#: quiet output rather than a loud random one).
INIT_LOG_MAGNITUDE = -4.0


def istft_config(cfg, stages: int = 1, n_fft_ratio: int = 4):
    """The GeneratorConfig of ``cfg`` without its last ``stages`` stages and with an inverse-STFT head of hop
    ``prod(dropped rates)`` and FFT size ``n_fft_ratio`` times that (same total hop).

    Raises:
        ConfigError: the source already has a head, ``stages`` is not in [1, number of stages), or
            ``n_fft_ratio`` < 2.
    """
    n, nk = len(cfg.upsample_rates), len(cfg.resblock_kernel_sizes)
    if cfg.istft_hop:
        raise ConfigError("istft: the generator already ends in an inverse-STFT head")
    if not 1 <= int(stages) < n:
        raise ConfigError(f"istft: stages must be in [1, {n - 1}] for a generator of {n} upsampling stages, "
                          f"got {stages}")
    if int(n_fft_ratio) < 2:
        raise ConfigError(f"istft: n_fft_ratio must be >= 2, got {n_fft_ratio}")
    keep = n - int(stages)
    hop = math.prod(cfg.upsample_rates[keep:])
    inner = None if cfg.inner_channels is None else [list(b) for b in cfg.inner_channels[:keep * nk]]
    return cfg.replace(upsample_rates=list(cfg.upsample_rates[:keep]),
                       upsample_kernel_sizes=list(cfg.upsample_kernel_sizes[:keep]),
                       channels=cfg.widths()[:keep + 1], inner_channels=inner,
                       istft_hop=hop, istft_n_fft=int(n_fft_ratio) * hop)


@torch.no_grad()
def istft_generator(gen: Generator, stages: int = 1, n_fft_ratio: int = 4) -> Tuple[Generator, Dict[str, Any]]:
    """A new generator: ``gen``'s first stages (weights copied) and an inverse-STFT head (``gen`` unchanged).

    Args:
        gen: the source generator (weight norm present or folded; ConvTranspose upsamplers, not polyphase).
        stages: upsampling stages dropped from the output end.
        n_fft_ratio: the head's FFT size over its hop.

    Returns:
        (generator, info {"upsample_rates": [before, after], "istft": {"hop", "n_fft"},
        "gflop_per_frame": [before, after]}).
    """
    cfg = istft_config(gen.config, stages, n_fft_ratio)
    new = Generator(cfg)
    p = next(gen.parameters())
    new.to(device=p.device, dtype=p.dtype)
    src = dict(gen.named_modules())
    for name, dst in new.named_modules():
        if name == "conv_post" or not isinstance(dst, (nn.Conv1d, nn.ConvTranspose1d)):
            continue
        s = src[name]
        assign_weight(dst, s, s.weight.detach(), None if s.bias is None else s.bias.detach())
    post, bins = new.conv_post, cfg.istft_n_fft // 2 + 1
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(tuple(post.weight.shape), generator=g).to(p) * 0.01
    bias = torch.zeros(post.bias.shape, dtype=p.dtype, device=p.device)
    bias[:bins] = INIT_LOG_MAGNITUDE
    assign_weight(post, post, weight, bias)
    new.train(gen.training)
    info = {"upsample_rates": [list(gen.config.upsample_rates), list(cfg.upsample_rates)],
            "istft": {"hop": cfg.istft_hop, "n_fft": cfg.istft_n_fft},
            "gflop_per_frame": [round(decoder_flops_per_frame(gen.config) / 1e9, 6),
                                round(decoder_flops_per_frame(cfg) / 1e9, 6)]}
    return new, info

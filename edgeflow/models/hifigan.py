"""HiFi-GAN generator (Kong et al., 2020): VITS's decoder, and a stand-alone mel vocoder family.

Parameter names follow the reference implementation (``conv_pre``, ``ups.i``, ``resblocks.j.convs1/convs2``
(type "1") or ``resblocks.j.convs`` (type "2"), ``conv_post``), so its checkpoints and VITS/Piper decoders map
one to one. The upsampling and residual convs carry weight norm (torch parametrizations, dim 0) until
:func:`edgeflow.flows.coupling.remove_weight_norm` folds it.

Presets: :data:`V1` / :data:`V2` / :data:`V3` (the paper's), and Piper's decoders (``medium``: V3's layout
from 192 prior channels; ``high``: V1's).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from edgeflow.audio.mel import MelConfig
from edgeflow.core.config import ConfigBase
from edgeflow.models.base import MelConditioned
from edgeflow.models.hifigan_shape import channel_groups, decoder_flops_per_frame  # noqa: F401 (API)

LRELU_SLOPE = 0.1
#: The inverse-STFT head's log-magnitude clamp (exp(4.6) = 100: far above a full-scale bin at n_fft <= 64).
ISTFT_MAX_LOG_MAGNITUDE = 4.6


@dataclasses.dataclass
class GeneratorConfig(ConfigBase):
    """HiFi-GAN generator hyper-parameters.

    Attributes:
        in_channels: input channels (n_mels for a vocoder, inter_channels for VITS).
        resblock: "1" (three dilated conv pairs) or "2" (dilated convs, lighter).
        resblock_kernel_sizes, resblock_dilation_sizes: the multi-receptive-field fusion blocks.
        upsample_rates, upsample_kernel_sizes: transposed-conv strides and kernels (product = hop).
        upsample_initial_channel: channels after conv_pre (halved at each upsampling); the unpruned layout
            when ``channels`` is set.
        gin_channels: speaker conditioning channels (0: none).
        pre_post_weight_norm: weight norm on conv_pre / conv_post too (the reference vocoder; VITS: no).
        post_bias: conv_post has a bias (the reference vocoder; VITS: no).
        channels: widths of the residual streams after conv_pre and after each upsampling stage
            (``len(upsample_rates) + 1`` values); None: ``upsample_initial_channel`` halved at each stage.
            A structurally pruned generator (:mod:`edgeflow.compress.generator`) sets it.
        inner_channels: resblock "1" only: per residual block (stage-major order) the inner width of each
            (dilated conv, conv) pair; None: the stage's width.
        istft_hop: 0: conv_post writes the waveform (one channel, tanh). > 0: an inverse-STFT head
            (iSTFTNet, Kaneko et al. 2022): conv_post writes each step's log-magnitude and phase of
            ``istft_n_fft // 2 + 1`` bins and an inverse STFT of hop ``istft_hop`` makes the audio, so the
            generator's hop is ``prod(upsample_rates) * istft_hop`` and the waveform-rate stages are gone.
        istft_n_fft: the head's FFT size (a multiple of istft_hop, at least twice it; 0: 4 x istft_hop).
    """

    in_channels: int = 80
    resblock: str = "1"
    resblock_kernel_sizes: List[int] = dataclasses.field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: List[List[int]] = dataclasses.field(
        default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    upsample_rates: List[int] = dataclasses.field(default_factory=lambda: [8, 8, 2, 2])
    upsample_kernel_sizes: List[int] = dataclasses.field(default_factory=lambda: [16, 16, 4, 4])
    upsample_initial_channel: int = 512
    gin_channels: int = 0
    pre_post_weight_norm: bool = True
    post_bias: bool = True
    channels: Optional[List[int]] = None
    inner_channels: Optional[List[List[int]]] = None
    istft_hop: int = 0
    istft_n_fft: int = 0

    def __post_init__(self):
        if self.resblock not in ("1", "2"):
            raise ValueError("resblock must be '1' or '2'")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if any((k - u) % 2 for k, u in zip(self.upsample_kernel_sizes, self.upsample_rates)):
            raise ValueError("each upsample kernel minus its rate must be even (exact length)")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError("upsample_initial_channel must halve evenly at every upsampling")
        n, nb = len(self.upsample_rates), len(self.upsample_rates) * len(self.resblock_kernel_sizes)
        if self.channels is not None:
            self.channels = [int(c) for c in self.channels]
            if len(self.channels) != n + 1 or min(self.channels) < 1:
                raise ValueError(f"channels must be {n + 1} widths >= 1 (conv_pre, then each stage)")
        if self.inner_channels is not None:
            self.inner_channels = [[int(c) for c in b] for b in self.inner_channels]
            if self.resblock != "1":
                raise ValueError("inner_channels applies to resblock '1' only")
            if len(self.inner_channels) != nb or any(
                    len(b) != len(self.resblock_dilation_sizes[i % len(self.resblock_kernel_sizes)]) or min(b) < 1
                    for i, b in enumerate(self.inner_channels)):
                raise ValueError(f"inner_channels must hold {nb} blocks of one width >= 1 per dilation")
        self.istft_hop, self.istft_n_fft = int(self.istft_hop), int(self.istft_n_fft)
        if self.istft_hop < 0 or (self.istft_hop == 0 and self.istft_n_fft):
            raise ValueError("istft_hop must be >= 0 (istft_n_fft needs istft_hop > 0)")
        if self.istft_hop and not self.istft_n_fft:
            self.istft_n_fft = 4 * self.istft_hop
        if self.istft_hop and (self.istft_n_fft % self.istft_hop or self.istft_n_fft < 2 * self.istft_hop):
            raise ValueError("istft_n_fft must be a multiple of istft_hop, at least twice it")

    def widths(self) -> List[int]:
        """Residual stream widths: [after conv_pre, after stage 0, ..., after the last stage]."""
        if self.channels is not None:
            return list(self.channels)
        return [self.upsample_initial_channel // 2 ** i for i in range(len(self.upsample_rates) + 1)]

    def inner_widths(self, block: int) -> List[int]:
        """Resblock "1" block ``block`` (stage-major index): the inner width of each of its pairs."""
        if self.inner_channels is not None:
            return list(self.inner_channels[block])
        stage, nk = block // len(self.resblock_kernel_sizes), len(self.resblock_kernel_sizes)
        return [self.widths()[stage + 1]] * len(self.resblock_dilation_sizes[block % nk])

    @property
    def hop_length(self) -> int:
        n = max(1, self.istft_hop)
        for r in self.upsample_rates:
            n *= r
        return n

    @property
    def post_channels(self) -> int:
        """conv_post's output channels: 1 (the waveform) or the head's log-magnitude and phase per bin."""
        return self.istft_n_fft + 2 if self.istft_hop else 1


def _preset(**kw) -> GeneratorConfig:
    return GeneratorConfig(**kw)


V1 = _preset()
V2 = _preset(upsample_initial_channel=128)
V3 = _preset(resblock="2", resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]],
             upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=256)
PRESETS = {"v1": V1, "v2": V2, "v3": V3}


def _pad(k: int, d: int) -> int:
    return (k * d - d) // 2


class ResBlock1(nn.Module):
    """Pairs (dilated conv, conv) with leaky ReLUs, residual after each pair."""

    def __init__(self, ch: int, k: int, dilations: List[int], inner: Optional[List[int]] = None):
        super().__init__()
        inner = list(inner) if inner is not None else [ch] * len(dilations)
        self.convs1 = nn.ModuleList(weight_norm(nn.Conv1d(ch, c, k, dilation=d, padding=_pad(k, d)))
                                    for d, c in zip(dilations, inner))
        self.convs2 = nn.ModuleList(weight_norm(nn.Conv1d(c, ch, k, padding=_pad(k, 1))) for c in inner)
        for c in list(self.convs1) + list(self.convs2):
            nn.init.normal_(c.parametrizations.weight.original1, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Dilated convs with leaky ReLUs, residual after each."""

    def __init__(self, ch: int, k: int, dilations: List[int], inner: Optional[List[int]] = None):
        super().__init__()
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, k, dilation=d, padding=_pad(k, d)))
                                   for d in dilations)
        for c in self.convs:
            nn.init.normal_(c.parametrizations.weight.original1, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """[B, in_channels, F] -> audio [B, 1, F * hop] in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        wn = weight_norm if cfg.pre_post_weight_norm else (lambda m: m)
        ch = cfg.widths()
        self.conv_pre = wn(nn.Conv1d(cfg.in_channels, ch[0], 7, 1, padding=3))
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            up = nn.ConvTranspose1d(ch[i], ch[i + 1], k, u, padding=(k - u) // 2)
            nn.init.normal_(up.weight, 0.0, 0.01)
            self.ups.append(weight_norm(up))
            for k_r, d_r in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                inner = cfg.inner_widths(len(self.resblocks)) if cfg.resblock == "1" else None
                self.resblocks.append(block(ch[i + 1], k_r, list(d_r), inner))
        self.conv_post = wn(nn.Conv1d(ch[-1], cfg.post_channels, 7, 1, padding=3, bias=cfg.post_bias or
                                      bool(cfg.istft_hop)))
        if cfg.istft_hop:
            from edgeflow.models.vocos import ISTFT

            self.istft = ISTFT(cfg.istft_n_fft, cfg.istft_hop)
        if cfg.gin_channels:
            self.cond = nn.Conv1d(cfg.gin_channels, ch[0], 1)

    def forward(self, x: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None and hasattr(self, "cond"):
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for b in blocks[1:]:
                xs = xs + b(x)
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        if not self.config.istft_hop:
            return torch.tanh(x)
        log_mag, phase = x.chunk(2, dim=1)
        mag = torch.exp(log_mag.clamp(max=ISTFT_MAX_LOG_MAGNITUDE))
        return self.istft(mag * torch.cos(phase), mag * torch.sin(phase)).clamp(-1.0, 1.0)[:, None]


@dataclasses.dataclass
class HiFiGANConfig(ConfigBase):
    """Stand-alone HiFi-GAN vocoder: the mel front-end it expects and its generator."""

    mel: MelConfig = dataclasses.field(default_factory=MelConfig)
    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)

    def __post_init__(self):
        if self.generator.hop_length != self.mel.hop_length:
            raise ValueError("product of generator.upsample_rates must equal mel.hop_length")
        if self.generator.in_channels != self.mel.n_mels:
            raise ValueError("generator.in_channels must equal mel.n_mels")


class HiFiGAN(MelConditioned, nn.Module):
    """HiFi-GAN mel vocoder: :meth:`synthesize` maps mel [B, n_mels, F] to audio [B, F * hop]."""

    family = "hifigan"

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config.generator)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop]."""
        return self.generator(mel)[:, 0]

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor, **_ignored) -> torch.Tensor:
        """Audio [B, F * hop] (deterministic: HiFi-GAN draws no noise; sigma/seed are ignored)."""
        return self.forward(mel)


def receptive_field(config: HiFiGANConfig) -> Dict[str, int]:
    """Frames each side one output sample depends on: conv_pre (3 frames), each transposed conv
    (k / u + 1 input steps), each stage's widest resblock (sum of its dilated radii) and conv_post (3 samples),
    each in its stage's resolution; rounded up, plus one frame."""
    g = config.generator
    radius, scale = 3.0, 1
    pairs = 2 if g.resblock == "1" else 1
    res = max(sum((k - 1) // 2 * d + (pairs - 1) * (k - 1) // 2 for d in ds)
              for k, ds in zip(g.resblock_kernel_sizes, g.resblock_dilation_sizes))
    for u, k in zip(g.upsample_rates, g.upsample_kernel_sizes):
        radius += (k / u + 1) / scale
        scale *= u
        radius += res / scale
    radius += g.istft_n_fft / max(1, g.istft_hop) / scale
    n = int(math.ceil(radius + 3 / scale)) + 1
    return {"left": n, "right": n, "net_left": n, "net_right": n}


def mel_to_audio(model: nn.Module) -> nn.Module:
    """The exported module: the model itself (forward: mel [B, n_mels, T] -> audio [B, T*hop]; no noise)."""
    return model


def _family():
    """The "hifigan" Family (task "vocoder"): export (mel -> audio, no z/sigma inputs), cost model, and the
    ``fuse`` export hook (ConvTranspose upsamplers in phase form) and the generator's channel groups."""
    from edgeflow.models.family import ExportDecl, Family

    class HiFiGANFamily(Family):
        name, task = "hifigan", "vocoder"
        config_cls, model_cls = HiFiGANConfig, HiFiGAN
        export = ExportDecl(receptive_field=receptive_field, input_names=("mel",), wrapper=mel_to_audio)
        free_fields = ()

        def fuse(self, model):
            """Every ConvTranspose1d upsampler as one Conv1d over a polyphase split
            (:mod:`edgeflow.models.polyphase`), in place: the graph has no ConvTranspose, so INT8 quantizes
            the upsamplers too; audio equal to float32 rounding. The model must be frozen (weight norm folded)."""
            from edgeflow.models.polyphase import to_phase_form

            to_phase_form(model)
            return model

        def channel_groups(self, config):
            """The generator's channel groups that move together (:func:`channel_groups`), pruned by
            :func:`edgeflow.compress.generator.prune_generator`. ``width`` stays None: the ``prune`` pass
            prunes the flow families' WN nets, not these."""
            return channel_groups(config.generator)

        def flops_breakdown(self, config):
            return {"generator": decoder_flops_per_frame(config.generator) * config.mel.sample_rate
                    / config.mel.hop_length}

    return HiFiGANFamily()


def register():
    """Register the "hifigan" family once (idempotent); returns it."""
    from edgeflow.models.family import FAMILIES, register_family

    if "hifigan" in FAMILIES:
        return FAMILIES.get("hifigan")
    return register_family(_family())


register()

"""VITS hyper-parameters, Piper's presets, and reading them from a Piper voice json or a Lightning checkpoint.

Piper's qualities (piper_train ``--quality`` and its voices' ``audio.quality``):

=========  ===========  =====================  ========================================
preset     sample rate  text / prior channels  decoder
=========  ===========  =====================  ========================================
x_low      16000        96 / 96, filter 384    resblock "2", rates 8-8-4, 256 channels
low        16000        192 / 192, filter 768  same
medium     22050        192 / 192, filter 768  same (HiFi-GAN V3 layout)
high       22050        192 / 192, filter 768  resblock "1", rates 8-8-2-2, 512 channels (V1)
=========  ===========  =====================  ========================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import ConfigError
from edgeflow.models.hifigan import V1, V3, GeneratorConfig

QUALITIES = ("x_low", "low", "medium", "high")


def _vits_decoder(layout: GeneratorConfig, in_channels: int) -> GeneratorConfig:
    return layout.replace(in_channels=in_channels, pre_post_weight_norm=False, post_bias=False)


@dataclasses.dataclass
class VitsConfig(ConfigBase):
    """VITS (Kim et al., 2021) as Piper trains it.

    Attributes:
        num_symbols: phoneme vocabulary size. n_speakers, gin_channels: speakers (gin 0 when single).
        inter_channels: prior / latent channels C. hidden_channels, filter_channels, n_heads, n_layers,
            kernel_size, p_dropout: the text encoder's transformer.
        use_sdp: stochastic duration predictor (else the deterministic one, ``dp_filter_channels`` wide).
        sdp_flows, flow_*: duration spline couplings; prior coupling flow (n_flows couplings of WN stacks).
        flow_hidden_channels: the prior flow's WN width (None: ``hidden_channels``, as in VITS; set by
            structured pruning of the flow).
        posterior_layers, posterior_kernel: the posterior encoder's WN (training only).
        decoder: the HiFi-GAN generator (in_channels = inter_channels, hop = hop_length).
        sample_rate, filter_length, hop_length, win_length, mel_channels, mel_fmin, mel_fmax: audio front-end.
        segment_size: training decoder window in samples.
        quality: the Piper preset name this came from ("" if custom).
        phoneme_id_map, phoneme_type, espeak_voice: the text front-end the model was trained with.
        noise_scale, length_scale, noise_w: default synthesis scales.
    """

    num_symbols: int = 256
    n_speakers: int = 1
    gin_channels: int = 0
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    use_sdp: bool = True
    sdp_flows: int = 4
    dp_filter_channels: int = 256
    n_flows: int = 4
    flow_layers: int = 4
    flow_kernel: int = 5
    flow_dilation: int = 1
    flow_hidden_channels: Optional[int] = None
    posterior_layers: int = 16
    posterior_kernel: int = 5
    decoder: GeneratorConfig = dataclasses.field(default_factory=lambda: _vits_decoder(V3, 192))
    sample_rate: int = 22050
    filter_length: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    mel_channels: int = 80
    mel_fmin: float = 0.0
    mel_fmax: Optional[float] = None
    segment_size: int = 8192
    quality: str = "medium"
    phoneme_id_map: Optional[Dict[str, List[int]]] = None
    phoneme_type: str = "espeak"
    espeak_voice: str = "en-us"
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8

    def __post_init__(self):
        if isinstance(self.decoder, dict):
            self.decoder = GeneratorConfig.from_dict(self.decoder)
        if min(self.num_symbols, self.n_speakers, self.inter_channels, self.hidden_channels, self.n_heads,
               self.n_layers, self.n_flows, self.flow_layers) < 1:
            raise ValueError("sizes must be >= 1")
        if self.flow_hidden_channels is not None and (isinstance(self.flow_hidden_channels, bool) or
                                                      not isinstance(self.flow_hidden_channels, int) or
                                                      self.flow_hidden_channels < 1):
            raise ValueError("flow_hidden_channels must be an integer >= 1 (or null: hidden_channels)")
        if self.n_speakers > 1 and self.gin_channels < 1:
            raise ValueError("a multi-speaker model needs gin_channels >= 1")
        if self.hidden_channels % self.n_heads:
            raise ValueError("hidden_channels must be divisible by n_heads")
        if self.inter_channels % 2:
            raise ValueError("inter_channels must be even (coupling halves)")
        if self.decoder.in_channels != self.inter_channels:
            raise ValueError("decoder.in_channels must equal inter_channels")
        if self.decoder.hop_length != self.hop_length:
            raise ValueError("product of decoder.upsample_rates must equal hop_length")
        if self.decoder.gin_channels != self.gin_channels:
            raise ValueError("decoder.gin_channels must equal gin_channels")
        if self.phoneme_id_map is not None:
            bad = [k for k, v in self.phoneme_id_map.items()
                   if not isinstance(v, list) or not all(isinstance(i, int) and 0 <= i < self.num_symbols
                                                         for i in v)]
            if bad:
                raise ValueError(f"phoneme_id_map has ids outside [0, num_symbols) for {bad[:3]}")
        for name in ("noise_scale", "length_scale", "noise_w"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0")

    @property
    def spec_channels(self) -> int:
        return self.filter_length // 2 + 1

    @property
    def flow_hidden(self) -> int:
        """The prior flow's WN width."""
        return self.flow_hidden_channels or self.hidden_channels


def preset(quality: str, **overrides: Any) -> VitsConfig:
    """A Piper preset ("x_low", "low", "medium", "high"; "x-low" accepted) with fields overridden."""
    q = quality.replace("-", "_")
    if q not in QUALITIES:
        raise ConfigError(f"unknown VITS quality {quality!r} (known: {', '.join(QUALITIES)})")
    width = 96 if q == "x_low" else 192
    base: Dict[str, Any] = dict(quality=q, inter_channels=width, hidden_channels=width,
                                filter_channels=384 if q == "x_low" else 768,
                                sample_rate=16000 if q in ("x_low", "low") else 22050)
    layout = V1 if q == "high" else V3
    gin = overrides.get("gin_channels", 512 if overrides.get("n_speakers", 1) > 1 else 0)
    base["decoder"] = _vits_decoder(layout, overrides.get("inter_channels", width)).replace(gin_channels=gin)
    base["gin_channels"] = gin
    base.update(overrides)
    try:
        return VitsConfig(**base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"VitsConfig: {exc}") from None


def from_piper_json(voice: Dict[str, Any]) -> VitsConfig:
    """The config of a Piper voice json (``*.onnx.json``): preset by ``audio.quality``, vocabulary, speakers,
    sample rate, phoneme map, espeak voice and inference scales.

    Raises:
        ConfigError: the json is not a Piper voice config.
    """
    try:
        audio, inf = voice["audio"], voice.get("inference", {})
        quality = str(audio.get("quality", "medium"))
        kw = dict(num_symbols=int(voice["num_symbols"]), n_speakers=int(voice.get("num_speakers", 1)),
                  sample_rate=int(audio["sample_rate"]), phoneme_id_map=voice["phoneme_id_map"],
                  phoneme_type=str(voice.get("phoneme_type", "espeak")),
                  espeak_voice=str(voice.get("espeak", {}).get("voice", "en-us")),
                  noise_scale=float(inf.get("noise_scale", 0.667)), length_scale=float(inf.get("length_scale", 1.0)),
                  noise_w=float(inf.get("noise_w", 0.8)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"not a Piper voice config (missing or bad {exc})") from None
    if not isinstance(kw["phoneme_id_map"], dict):
        raise ConfigError("not a Piper voice config (phoneme_id_map is not a mapping)")
    return preset(quality if quality.replace("-", "_") in QUALITIES else "medium", **kw)


_HPARAM_FIELDS = ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size",
                  "p_dropout", "use_sdp", "gin_channels", "sample_rate", "filter_length", "hop_length",
                  "win_length", "mel_fmin", "mel_fmax", "segment_size",
                  # not Piper's (it fixes these); written by edgeflow for configs that differ
                  "posterior_layers", "posterior_kernel", "flow_layers", "flow_kernel", "flow_dilation", "n_flows",
                  "sdp_flows", "dp_filter_channels", "flow_hidden_channels")


def from_hparams(hp: Dict[str, Any]) -> VitsConfig:
    """The config of a Piper Lightning checkpoint's ``hyper_parameters`` (VitsModel's __init__ arguments)."""
    try:
        kw: Dict[str, Any] = {k: hp[k] for k in _HPARAM_FIELDS if k in hp}
        kw["num_symbols"] = int(hp["num_symbols"])
        kw["n_speakers"] = int(hp.get("num_speakers", 1))
        if "mel_channels" in hp:
            kw["mel_channels"] = int(hp["mel_channels"])
        inter = int(kw.get("inter_channels", 192))
        if kw["n_speakers"] > 1 and not kw.get("gin_channels"):
            kw["gin_channels"] = 512
        dec = GeneratorConfig(in_channels=inter, resblock=str(hp.get("resblock", "2")),
                              resblock_kernel_sizes=[int(k) for k in hp.get("resblock_kernel_sizes", (3, 5, 7))],
                              resblock_dilation_sizes=[[int(d) for d in ds] for ds in
                                                       hp.get("resblock_dilation_sizes", ((1, 2), (2, 6), (3, 12)))],
                              upsample_rates=[int(r) for r in hp.get("upsample_rates", (8, 8, 4))],
                              upsample_kernel_sizes=[int(k) for k in hp.get("upsample_kernel_sizes", (16, 16, 8))],
                              upsample_initial_channel=int(hp.get("upsample_initial_channel", 256)),
                              gin_channels=int(kw.get("gin_channels", 0)), pre_post_weight_norm=False,
                              post_bias=False)
        return VitsConfig(quality="", decoder=dec, **kw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint hyper_parameters do not describe a Piper VITS model ({exc})") from None

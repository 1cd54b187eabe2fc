"""Configuration of the flow-matching TTS family (``fmtts``)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from edgeflow.audio.mel import MelConfig
from edgeflow.core.config import ConfigBase
from edgeflow.core.ode import METHODS, SWAY_MAX, SWAY_MIN

PROSODY_KINDS = ("flow", "l2")
DECODERS = ("unet", "dit")


@dataclasses.dataclass
class FmTtsConfig(ConfigBase):
    """A Matcha-TTS-style acoustic model: phoneme ids -> 80-band log-mel (HiFi-GAN convention).

    Attributes:
        num_symbols, phoneme_id_map, espeak_voice: the VITS / Piper espeak-ng front-end.
        mel: the mel front-end the decoder predicts (defaults: HiFi-GAN's 22.05 kHz, n_fft 1024, hop 256,
            80 bands, 0-8000 Hz, log clamp 1e-5), so an imported HiFi-GAN voices the output.
        hidden, filter_channels, n_heads, n_layers, kernel_size, p_dropout: the text encoder (VITS's).
        decoder: the vector field: "unet" (:mod:`~edgeflow.models.fmtts.decoder`) or "dit"
            (:mod:`~edgeflow.models.fmtts.decoder_dit`); ``dec_channels`` is either one's width.
        dec_channels, dec_levels, dec_blocks: the U-Net vector field: width, number of 2x downsamplings,
            residual blocks per level.
        dit_layers, dit_heads, dit_ff_mult, dit_text_blocks, dit_window: the DiT field: transformer blocks,
            attention heads, MLP width / width, ConvNeXt blocks over the conditioning, attention reach in frames
            (0: the whole utterance).
        dec_inner: the width between the two convs of every residual block (0: dec_channels; the ``fm_prune``
            pass narrows it).
        prosody_channels, prosody_layers: the conditioning nets of the prosody models (conv stacks over the
            detached encoder states).
        prosody_flows, prosody_wn_channels, prosody_wn_layers: the phone-level prosody flow (affine couplings
            over (log-duration, log-f0) with per-phone WN nets).
        sigma_min: OT-CFM's sigma_min.
        cfg_dropout: fraction of training items whose conditioning is dropped (classifier-free guidance).
        segment_frames: frames of the decoder's training window (0: whole utterances).
        nfe, solver, sway, temperature, guidance: default sampling settings (the ODE's number of function
            evaluations, "euler" / "midpoint", the sway coefficient, the scale of the initial noise, the
            guidance scale).
        prosody, tau, length_scale: default prosody model ("flow" or "l2"), its temperature, a duration scale.
    """

    num_symbols: int = 256
    phoneme_id_map: Optional[Dict[str, List[int]]] = None
    espeak_voice: str = "en-us"
    mel: MelConfig = dataclasses.field(default_factory=MelConfig)
    hidden: int = 128
    filter_channels: int = 512
    n_heads: int = 2
    n_layers: int = 4
    kernel_size: int = 3
    p_dropout: float = 0.1
    dec_channels: int = 128
    dec_levels: int = 2
    dec_blocks: int = 2
    dec_inner: int = 0
    decoder: str = "unet"
    dit_layers: int = 4
    dit_heads: int = 2
    dit_ff_mult: int = 2
    dit_text_blocks: int = 2
    dit_window: int = 64
    prosody_channels: int = 128
    prosody_layers: int = 2
    prosody_flows: int = 4
    prosody_wn_channels: int = 64
    prosody_wn_layers: int = 2
    sigma_min: float = 1e-4
    cfg_dropout: float = 0.1
    segment_frames: int = 172
    nfe: int = 4
    solver: str = "euler"
    sway: float = -1.0
    temperature: float = 0.667
    guidance: float = 0.0
    prosody: str = "flow"
    tau: float = 0.667
    length_scale: float = 1.0

    def __post_init__(self):
        counts = ("num_symbols", "hidden", "filter_channels", "n_heads", "n_layers", "kernel_size", "dec_channels",
                  "dec_blocks", "prosody_channels", "prosody_layers", "prosody_flows", "prosody_wn_channels",
                  "prosody_wn_layers", "nfe", "dit_layers", "dit_heads", "dit_ff_mult")
        low = [n for n in counts if not isinstance(getattr(self, n), int) or getattr(self, n) < 1]
        if low:
            raise ValueError(f"need positive integers: {', '.join(low)}")
        if not isinstance(self.dec_inner, int) or self.dec_inner < 0:
            raise ValueError(f"dec_inner must be an integer >= 0 (0: dec_channels), got {self.dec_inner!r}")
        if self.hidden % self.n_heads or self.dec_channels % 8 or self.dec_channels % self.dit_heads:
            raise ValueError("hidden must be divisible by n_heads and dec_channels by 8 and by dit_heads")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if any(not isinstance(getattr(self, n), int) or getattr(self, n) < 0 for n in ("dit_text_blocks",
                                                                                     "dit_window")):
            raise ValueError("dit_text_blocks and dit_window must be integers >= 0")
        if not (0 <= self.dec_levels <= 4 and self.segment_frames >= 0 and 0 < self.sigma_min < 0.1
                and 0 <= self.cfg_dropout < 1 and 0 <= self.p_dropout < 1):
            raise ValueError("need 0 <= dec_levels <= 4, segment_frames >= 0, 0 < sigma_min < 0.1 and "
                             "dropouts in [0, 1)")
        if self.solver not in METHODS or self.prosody not in PROSODY_KINDS:
            raise ValueError(f"solver must be one of {METHODS} and prosody one of {PROSODY_KINDS}")
        if not (SWAY_MIN <= self.sway <= SWAY_MAX and self.temperature >= 0 and self.tau >= 0
                and self.length_scale > 0):
            raise ValueError("need sway in the monotone range, temperature, tau >= 0 and length_scale > 0")
        if isinstance(self.mel, dict):
            self.mel = MelConfig.from_dict(self.mel)
        if self.phoneme_id_map is not None:
            bad = [k for k, v in self.phoneme_id_map.items()
                   if not v or any(not 0 <= int(i) < self.num_symbols for i in v)]
            if bad:
                raise ValueError(f"phoneme_id_map has ids outside [0, num_symbols) for {bad[:3]}")

    @property
    def n_mels(self) -> int:
        return self.mel.n_mels

    @property
    def frame_multiple(self) -> int:
        """The field needs frame counts divisible by this (the U-Net: 2 ** dec_levels; the DiT: 1)."""
        return 2 ** self.dec_levels if self.decoder == "unet" else 1

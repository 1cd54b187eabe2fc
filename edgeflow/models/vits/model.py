"""The VITS generator: text encoder, duration flow, prior coupling flow, HiFi-GAN decoder, posterior encoder.

Synthesis runs in two stages (the same split as the exported bundle, see :mod:`edgeflow.export.vits`):

1. :meth:`Vits.encode_text`: phoneme ids -> prior mean / log-std per frame (text encoder, durations from
   the duration flow at temperature ``noise_w``, scaled by ``length_scale``, ceil'd, expanded);
2. :meth:`Vits.decode_frames`: z_p = m + noise * exp(logs) * noise_scale, inverse prior flow, decoder.

All noise is explicit: tensors, or drawn from a seed by :func:`duration_noise` / :func:`prior_noise`
(numpy, the same draws the torch-free runtime makes).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from edgeflow.core.errors import InputError
from edgeflow.core.noise import noise as block_noise
from edgeflow.models.hifigan import Generator
from edgeflow.models.vits.config import VitsConfig
from edgeflow.models.vits.duration import DurationPredictor, StochasticDurationPredictor
from edgeflow.models.vits.flows import FlowCond, PriorFlow
from edgeflow.models.vits.modules import WN, generate_path, sequence_mask
from edgeflow.models.vits.text_encoder import TextEncoder

Tensor = torch.Tensor


def duration_noise(seed: int, n_phonemes: int) -> np.ndarray:
    """Standard normal float32 [1, 2, N]: the duration flow's noise for a seed."""
    return np.random.default_rng([int(seed), 0, 1]).standard_normal(2 * n_phonemes, dtype=np.float32) \
        .reshape(1, 2, n_phonemes)


def prior_noise(seed: int, start_frame: int, n_frames: int, channels: int) -> np.ndarray:
    """Standard normal float32 [1, C, n_frames] for frames [start, start + n): per-frame blocks of
    :func:`edgeflow.core.noise.noise`, so streamed frames get the same noise as whole synthesis."""
    z = block_noise(seed, start_frame, n_frames, channels)
    return np.ascontiguousarray(z.reshape(1, n_frames, channels).transpose(0, 2, 1))


class PosteriorEncoder(nn.Module):
    """Linear spectrogram [B, spec, F] -> latent z [B, C, F] (training only): 1x1, WN, 1x1 to (m, logs)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, gin_channels: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden, 1)
        self.enc = WN(hidden, kernel_size, dilation_rate, n_layers, gin_channels)
        self.proj = nn.Conv1d(hidden, out_channels * 2, 1)

    def forward(self, y: Tensor, lengths: Tensor, noise: Tensor, g: Optional[Tensor] = None):
        """Returns (z, m, logs, mask); ``noise`` [B, C, F] is the reparameterisation noise."""
        mask = sequence_mask(lengths, y.shape[2]).unsqueeze(1).to(y.dtype)
        stats = self.proj(self.enc(self.pre(y) * mask, mask, g=g)) * mask
        m, logs = stats[:, :self.out_channels], stats[:, self.out_channels:]
        return (m + noise * torch.exp(logs)) * mask, m, logs, mask


class Vits(nn.Module):
    """VITS generator (Piper's ``SynthesizerTrn``; parameter names match its state dict)."""

    family = "vits"

    def __init__(self, config: VitsConfig):
        super().__init__()
        c = self.config = config
        self.enc_p = TextEncoder(c.num_symbols, c.inter_channels, c.hidden_channels, c.filter_channels,
                                 c.n_heads, c.n_layers, c.kernel_size, c.p_dropout)
        self.dec = Generator(c.decoder)
        self.enc_q = PosteriorEncoder(c.spec_channels, c.inter_channels, c.hidden_channels, c.posterior_kernel,
                                      1, c.posterior_layers, c.gin_channels)
        self.flow = PriorFlow(c.inter_channels, c.flow_hidden, c.flow_kernel, c.flow_dilation, c.flow_layers,
                              c.n_flows, c.gin_channels)
        if c.use_sdp:
            self.dp = StochasticDurationPredictor(c.hidden_channels, 3, 0.5, c.sdp_flows, c.gin_channels)
        else:
            self.dp = DurationPredictor(c.hidden_channels, c.dp_filter_channels, 3, 0.5, c.gin_channels)
        if c.n_speakers > 1:
            self.emb_g = nn.Embedding(c.n_speakers, c.gin_channels)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def speaker(self, sid: Optional[Tensor]) -> Optional[Tensor]:
        """Speaker embedding [B, gin, 1] (None for a single-speaker model)."""
        if self.config.n_speakers <= 1:
            return None
        if sid is None:
            raise InputError("this is a multi-speaker model: give a speaker id")
        return self.emb_g(sid).unsqueeze(-1)

    def encode_text(self, ids: Tensor, lengths: Tensor, noise_w_z: Tensor, length_scale: Tensor | float,
                    noise_w: Tensor | float, g: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stage 1. ids [B, N] int64, lengths [B], noise_w_z [B, 2, N] standard normal.

        Returns:
            (m_p [B, C, F], logs_p [B, C, F], durations [B, N] int64 frames per phoneme, y_mask [B, 1, F]).
        """
        h, m_p, logs_p, x_mask = self.enc_p(ids, lengths)
        if self.config.use_sdp:
            logw = self.dp.sample_logw(h, x_mask, noise_w_z * noise_w, g=g)
        else:
            logw = self.dp(h, x_mask, g=g)
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * length_scale)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
        y_mask = sequence_mask(y_lengths, y_lengths.max()).unsqueeze(1).to(x_mask.dtype)
        attn = generate_path(w_ceil, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1)).squeeze(1)
        m_f = torch.matmul(attn, m_p.transpose(1, 2)).transpose(1, 2)
        logs_f = torch.matmul(attn, logs_p.transpose(1, 2)).transpose(1, 2)
        return m_f, logs_f, w_ceil[:, 0].long(), y_mask

    def decode_frames(self, m_p: Tensor, logs_p: Tensor, noise_z: Tensor, noise_scale: Tensor | float,
                      y_mask: Optional[Tensor] = None, g: Optional[Tensor] = None) -> Tensor:
        """Stage 2. m_p, logs_p, noise_z [B, C, F] -> audio [B, 1, F * hop]."""
        if y_mask is None:
            y_mask = torch.ones_like(m_p[:, :1])
        z_p = m_p + noise_z * torch.exp(logs_p) * noise_scale
        z, _ = self.flow.inverse(z_p, FlowCond(y_mask, g))
        return self.dec(z * y_mask, g=g)

    @torch.no_grad()
    def synthesize(self, phoneme_ids: Sequence[int] | Tensor, noise_scale: Optional[float] = None,
                   length_scale: Optional[float] = None, noise_w: Optional[float] = None,
                   noise_w_z: Optional[Tensor] = None, noise_z: Optional[Tensor] = None, seed: int = 0,
                   sid: Optional[int] = None, return_durations: bool = False):
        """Audio float32 [T] for one utterance of phoneme ids.

        Args:
            phoneme_ids: N ids (list or [N] / [1, N] tensor).
            noise_scale, length_scale, noise_w: scales (None: the config's defaults).
            noise_w_z: duration noise [1, 2, N]; None: :func:`duration_noise` (seed).
            noise_z: prior noise [1, C, >= F] (sliced to F); None: :func:`prior_noise` (seed).
            seed: seed of the noise not given explicitly.
            sid: speaker id (multi-speaker models).
            return_durations: also return the frames per phoneme [N].
        """
        c = self.config
        ns = c.noise_scale if noise_scale is None else float(noise_scale)
        ls = c.length_scale if length_scale is None else float(length_scale)
        nw = c.noise_w if noise_w is None else float(noise_w)
        for name, v in (("noise_scale", ns), ("length_scale", ls), ("noise_w", nw)):
            if not np.isfinite(v) or v < 0 or (name == "length_scale" and v == 0):
                raise InputError(f"{name} must be a finite number {'> 0' if name == 'length_scale' else '>= 0'}, "
                                 f"got {v}")
        ids = torch.as_tensor(phoneme_ids, dtype=torch.long).reshape(1, -1)
        n = ids.shape[1]
        if n == 0:
            raise InputError("no phoneme ids to synthesize")
        if int(ids.min()) < 0 or int(ids.max()) >= c.num_symbols:
            raise InputError(f"phoneme ids must lie in [0, {c.num_symbols})")
        dev = next(self.parameters()).device
        ids = ids.to(dev)
        if noise_w_z is None:
            noise_w_z = torch.from_numpy(duration_noise(seed, n))
        elif tuple(noise_w_z.shape) != (1, 2, n):
            raise InputError(f"noise_w_z must be [1, 2, {n}], got {tuple(noise_w_z.shape)}")
        g = self.speaker(None if sid is None else torch.tensor([sid], device=dev))
        m, logs, dur, y_mask = self.encode_text(ids, torch.tensor([n], device=dev), noise_w_z.to(dev), ls, nw, g)
        frames = m.shape[2]
        if noise_z is None:
            noise_z = torch.from_numpy(prior_noise(seed, 0, frames, c.inter_channels))
        elif noise_z.dim() != 3 or tuple(noise_z.shape[:2]) != (1, c.inter_channels) or noise_z.shape[2] < frames:
            raise InputError(f"noise_z must be [1, {c.inter_channels}, >= {frames}] (the durations need {frames} "
                             f"frames), got {tuple(noise_z.shape)}")
        audio = self.decode_frames(m, logs, noise_z[:, :, :frames].to(dev), ns, y_mask, g)[0, 0]
        return (audio, dur[0]) if return_durations else audio

    def inference_parameters(self) -> int:
        """Parameters synthesis uses (no posterior encoder, no duration posterior flows, no ``dp.flows.1``;
        weight norm counted as its folded weight)."""
        skip = ("enc_q.", "dp.post_", "dp.flows.1.")
        n = 0
        for name, p in self.named_parameters():
            if name.startswith(skip) or name.endswith(".original0"):
                continue
            n += p.numel()
        return n

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters by part (enc_p, dp, flow, dec, enc_q, emb_g)."""
        return {name: sum(p.numel() for p in mod.parameters()) for name, mod in self.named_children()}

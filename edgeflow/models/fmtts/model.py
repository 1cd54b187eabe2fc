"""The flow-matching TTS model (Matcha-TTS structure, Mehta et al. 2024; F5-TTS sampling, Chen et al. 2024).

phoneme ids -> VITS text encoder -> (h, mu_x [n_mels per phone, normalized-mel space])
            -> prosody model on h: per-phone (log-duration, log-f0)  (flow sampled at tau, or the L2 baseline)
            -> expand mu_x and the phone log-f0 to frames with the durations -> cond [n_mels + 1, F]
            -> ODE from noise to the normalized log-mel through the vector field (U-Net or DiT) (edgeflow.core.ode)
            -> log-mel in the HiFi-GAN convention (``config.mel``).

Feature statistics (the mel's global mean and std, the prosody features' means and stds) are persistent
buffers, set once from the training data before the first step, so they travel with model.pt.
Training losses live in :mod:`edgeflow.train.fmtts`; this module holds the networks and sampling.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from edgeflow.core.noise import noise
from edgeflow.core.ode import guided, solve
from edgeflow.models.fmtts.config import PROSODY_KINDS, FmTtsConfig
from edgeflow.models.fmtts.decoder import VectorField
from edgeflow.models.fmtts.decoder_dit import DiTField
from edgeflow.models.fmtts.prosody import N_FEATURES, L2Prosody, ProsodyFlow
from edgeflow.models.vits.modules import generate_path, sequence_mask
from edgeflow.models.vits.text_encoder import TextEncoder

Tensor = torch.Tensor
#: the prosody noise uses seed + this (the mel noise uses the seed itself), so the two never coincide.
PROSODY_SEED_OFFSET = 1_000_003


def pad_frames(n: int, multiple: int) -> int:
    """n rounded up to a multiple."""
    return int(math.ceil(n / multiple) * multiple)


def seeded_normal(seed: int, batch: int, channels: int, length: int) -> Tensor:
    """[batch, channels, length] standard normal from :func:`edgeflow.core.noise.noise` (blocks of positions, so
    a prefix of the positions is the same for any length)."""
    z = noise(seed, 0, length, channels, batch).reshape(batch, length, channels)
    return torch.from_numpy(np.ascontiguousarray(z.transpose(0, 2, 1)))


def make_field(c: FmTtsConfig) -> nn.Module:
    """The config's vector field (``decoder``: "unet" or "dit"), fresh."""
    if c.decoder == "dit":
        return DiTField(c.n_mels, c.n_mels + 1, c.dec_channels, c.dit_layers, c.dit_heads, c.dit_ff_mult,
                        c.dit_text_blocks, c.dit_window)
    return VectorField(c.n_mels, c.n_mels + 1, c.dec_channels, c.dec_levels, c.dec_blocks, c.dec_inner)


class FmTts(nn.Module):
    """Flow-matching acoustic model. See the module docstring; ``config``: :class:`FmTtsConfig`."""

    family = "fmtts"

    def __init__(self, config: FmTtsConfig):
        super().__init__()
        self.config = c = config
        self.encoder = TextEncoder(c.num_symbols, c.n_mels, c.hidden, c.filter_channels, c.n_heads, c.n_layers,
                                   c.kernel_size, c.p_dropout)
        self.prosody_flow = ProsodyFlow(c.hidden, c.prosody_channels, c.prosody_layers, c.prosody_flows,
                                        c.prosody_wn_channels, c.prosody_wn_layers, c.p_dropout)
        self.prosody_l2 = L2Prosody(c.hidden, c.prosody_channels, c.prosody_layers, c.p_dropout)
        self.decoder = make_field(c)
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))
        self.register_buffer("prosody_mean", torch.tensor([1.5, 5.0]))
        self.register_buffer("prosody_std", torch.ones(N_FEATURES))

    # -- statistics --------------------------------------------------------------------------------------------
    def set_stats(self, mel_mean: float, mel_std: float, prosody_mean, prosody_std) -> None:
        """Store the feature statistics (before training)."""
        self.mel_mean.fill_(float(mel_mean))
        self.mel_std.fill_(float(mel_std))
        self.prosody_mean.copy_(torch.as_tensor(prosody_mean, dtype=torch.float32))
        self.prosody_std.copy_(torch.as_tensor(prosody_std, dtype=torch.float32))

    def normalize_mel(self, mel: Tensor) -> Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalize_mel(self, y: Tensor) -> Tensor:
        return y * self.mel_std + self.mel_mean

    def normalize_prosody(self, x: Tensor) -> Tensor:
        """[B, 2, N] raw (log frames, log Hz) -> normalized."""
        return (x - self.prosody_mean.view(1, -1, 1)) / self.prosody_std.view(1, -1, 1)

    def denormalize_prosody(self, x: Tensor) -> Tensor:
        return x * self.prosody_std.view(1, -1, 1) + self.prosody_mean.view(1, -1, 1)

    # -- parts -------------------------------------------------------------------------------------------------
    def encode(self, ids: Tensor, lengths: Tensor):
        """ids [B, N], lengths [B] -> (h [B, H, N], mu_x [B, n_mels, N], mask [B, 1, N])."""
        h, mu_x, _, mask = self.encoder(ids, lengths)
        return h, mu_x, mask

    @staticmethod
    def expand(mu_x: Tensor, f0n: Tensor, attn: Tensor) -> Tensor:
        """cond [B, n_mels + 1, F] from mu_x [B, n_mels, N], normalized phone log-f0 [B, 1, N], attn [B, N, F]."""
        return torch.cat([torch.matmul(mu_x, attn), torch.matmul(f0n, attn)], 1)

    def predict_prosody(self, h: Tensor, mask: Tensor, kind: str, tau: float, z: Tensor) -> Tensor:
        """Normalized phone features [B, 2, N] from the flow (noise z at temperature tau) or the L2 predictor."""
        if kind not in PROSODY_KINDS:
            raise ValueError(f"prosody must be one of {PROSODY_KINDS}, got {kind!r}")
        if kind == "l2":
            return self.prosody_l2(h, mask)
        return self.prosody_flow.sample(h, mask, z, tau)

    def durations(self, feats: Tensor, mask: Tensor, length_scale: float) -> Tensor:
        """Integer frames per phone [B, N] (>= 1 on valid phones) from normalized features [B, 2, N].

        Rounded, not ceiled as in Glow-TTS / Matcha: the targets are logs of integer frame counts (MAS), so a
        sample a hair above log 1 must stay one frame, not become two (ceil lengthens every phone by half a
        frame on average)."""
        logd = self.denormalize_prosody(feats)[:, 0]
        return torch.round(torch.exp(logd) * length_scale).clamp_min(1.0) * mask[:, 0]

    # -- sampling ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, ids: Tensor, lengths: Optional[Tensor] = None, seed: int = 0,
                   **overrides: Any) -> Dict[str, Tensor]:
        """Log-mel from phoneme ids (call ``eval()`` first: dropout is active in training mode).

        Args:
            ids: [B, N] int64. lengths: [B] (default: all N).
            seed: all noise (prosody z and the ODE's initial state) comes from it (:mod:`edgeflow.core.noise`).
            overrides: any of nfe, solver, sway, temperature, guidance, prosody, tau, length_scale (defaults:
                the config's).

        Returns:
            {"mel": [B, n_mels, F] log-mel (frames past mel_lens are padding), "mel_lens": [B],
             "durations": [B, N] frames, "features": [B, 2, N] raw (log frames, log Hz)}.
        """
        c = self.config
        unknown = set(overrides) - {"nfe", "solver", "sway", "temperature", "guidance", "prosody", "tau",
                                    "length_scale"}
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        o = {k: overrides.get(k, getattr(c, k)) for k in ("nfe", "solver", "sway", "temperature", "guidance",
                                                           "prosody", "tau", "length_scale")}
        b, n = ids.shape
        lengths = torch.full((b,), n, dtype=torch.long) if lengths is None else lengths
        h, mu_x, x_mask = self.encode(ids, lengths)
        z_p = seeded_normal(seed + PROSODY_SEED_OFFSET, b, N_FEATURES, n).to(h)
        feats = self.predict_prosody(h, x_mask, o["prosody"], o["tau"], z_p) * x_mask
        dur = self.durations(feats, x_mask, o["length_scale"])
        mel_lens = dur.sum(1).long()
        frames = pad_frames(int(mel_lens.max()), c.frame_multiple)
        y_mask = sequence_mask(mel_lens, frames).unsqueeze(1).to(h.dtype)
        attn = generate_path(dur.unsqueeze(1), x_mask.unsqueeze(2) * y_mask.unsqueeze(-1))[:, 0].transpose(1, 2)
        cond = self.expand(mu_x, feats[:, 1:2], attn)
        x0 = seeded_normal(seed, b, c.n_mels, frames).to(h) * o["temperature"]
        y = self.sample_ode(x0, cond, y_mask, o["nfe"], o["solver"], o["sway"], o["guidance"])
        return {"mel": self.denormalize_mel(y) * y_mask, "mel_lens": mel_lens, "durations": dur,
                "features": self.denormalize_prosody(feats) * x_mask}

    def sample_ode(self, x0: Tensor, cond: Tensor, mask: Tensor, nfe: int, solver: str, sway: float,
                   guidance: float = 0.0) -> Tensor:
        """Integrate the vector field from x0 [B, n_mels, F] (t = 0) to t = 1 with :func:`edgeflow.core.ode.solve`."""
        b = x0.shape[0]

        def field(x: Tensor, t: float) -> Tensor:
            return self.decoder(x, cond, mask, x.new_full((b,), t))

        def uncond(x: Tensor, t: float) -> Tensor:
            return self.decoder(x, torch.zeros_like(cond), mask, x.new_full((b,), t))

        return solve(guided(field, uncond, guidance), x0, nfe, solver, sway) * mask

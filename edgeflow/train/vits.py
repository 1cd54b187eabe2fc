"""The VITS objective (Kim et al., 2021) on the one training loop (:mod:`edgeflow.train.loop`).

Generator loss (VITS's ``train.py``, Piper's ``VitsModel``)::

    c_mel * L1(logmel(y_hat), logmel(y))          on the decoder's random segment (the project's LogMel)
  + c_kl  * KL(q(z | spec) -> flow -> z_p || N(m_p, exp(logs_p)) expanded by the MAS alignment)
  +         duration-flow NLL of the MAS durations (stochastic duration predictor; squared log error if
            the deterministic one), per phoneme
  +         least-squares adversarial loss + c_fm * feature matching (L1 of the discriminator's feature maps)

GAN step inside the loop: the loop owns one optimizer (the generator's). :class:`VitsObjective` owns the
discriminator and its optimizer and steps them inside :meth:`VitsObjective.loss`, on the generator's
output detached, before returning the generator loss (the same order as VITS: discriminator update on
y_hat.detach(), then the generator update). The discriminator is frozen (``requires_grad`` off) while
the generator's adversarial terms are built, so the loop's backward does not touch it. Its state
(:meth:`VitsObjective.state_dict`) is checkpointed by the trainer's hooks. The discriminator's learning
rate follows the loop's schedule through ``batch["lr"]``.

Modes (``VitsTrainConfig.finetune``): ``""`` trains everything; ``"decoder"`` trains only the HiFi-GAN
decoder, for voices without a posterior encoder (an imported Piper ONNX): see :class:`VitsTrainNet`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgeflow.models.alignment import maximum_path
from edgeflow.models.vits.discriminators import VitsDiscriminator
from edgeflow.models.vits.flows import FlowCond
from edgeflow.models.vits.modules import generate_path, sequence_mask
from edgeflow.train.recipe import TrainConfig

Tensor = torch.Tensor
FINETUNE_MODES = ("", "decoder")


@dataclasses.dataclass
class VitsTrainConfig(TrainConfig):
    """Training settings of a VITS recipe: :class:`TrainConfig` plus the VITS loss weights.

    ``batch_size`` counts utterances; the decoder window is the model's ``segment_size`` (``segment_length``
    and ``valid_segment`` are unused). ``valid_clips``: validation utterances (mel L1 of the decoder window).

    Attributes:
        c_mel, c_kl, c_fm: weights of the mel L1, KL and feature-matching terms (VITS: 45, 1, 2).
        disc_width: channel scale of the discriminator (1.0: the published sizes).
        finetune: "" (train everything) or "decoder" (only the decoder; see the module docstring).
        init: a VITS model.pt to start from (its config replaces the recipe's model); "" for none.
        max_seconds: utterances longer than this are left out (memory).
    """

    batch_size: int = 16
    lr: float = 2e-4
    grad_clip: float = 1000.0
    c_mel: float = 45.0
    c_kl: float = 1.0
    c_fm: float = 2.0
    disc_width: float = 1.0
    finetune: str = ""
    init: str = ""
    max_seconds: float = 15.0

    def __post_init__(self):
        super().__post_init__()
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        if not (self.c_mel >= 0 and self.c_kl >= 0 and self.c_fm >= 0 and 0 < self.disc_width <= 4
                and self.max_seconds > 0):
            raise ValueError("need c_mel, c_kl, c_fm >= 0, 0 < disc_width <= 4 and max_seconds > 0")


def linear_spectrogram(audio: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    """Magnitude STFT [B, n_fft // 2 + 1, T // hop] of audio [B, T] (the posterior encoder's input;
    VITS's ``spectrogram_torch``: reflect padding (n_fft - hop) / 2, Hann window, no centering)."""
    pad = (n_fft - hop) // 2
    x = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win, device=audio.device,
                      dtype=audio.dtype), center=False, return_complex=True)
    return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-6)


def prior_log_likelihood(z_p: Tensor, m_p: Tensor, logs_p: Tensor) -> Tensor:
    """log N(z_p[:, :, t] | m_p[:, :, i], exp(logs_p[:, :, i])) summed over channels: [B, N, F]
    (z_p [B, C, F]; m_p, logs_p [B, C, N]), the score MAS maximises."""
    s = torch.exp(-2 * logs_p)
    c1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, 1).unsqueeze(-1)
    c2 = torch.matmul(s.transpose(1, 2), -0.5 * z_p ** 2)
    c3 = torch.matmul((m_p * s).transpose(1, 2), z_p)
    c4 = torch.sum(-0.5 * m_p ** 2 * s, 1).unsqueeze(-1)
    return c1 + c2 + c3 + c4


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, mask: Tensor) -> Tensor:
    """VITS's KL term (per valid frame and channel): z_p, logs_q [B, C, F], m_p, logs_p [B, C, F], mask [B, 1, F]."""
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask.expand_as(kl))


def slice_segments(x: Tensor, starts: Tensor, size: int) -> Tensor:
    """x [B, C, T] -> [B, C, size] from per-item starts [B] (zeros past the end)."""
    x = F.pad(x, (0, size))
    idx = starts.view(-1, 1, 1) + torch.arange(size, device=x.device).view(1, 1, -1)
    return torch.gather(x, 2, idx.expand(x.shape[0], x.shape[1], size))


def scaled_durations(logw: Tensor, x_mask: Tensor, frames: Tensor) -> Tensor:
    """Predicted durations exp(logw) [B, 1, N] rescaled so item b's sum is frames[b] (integer, by rounding the
    cumulative sum, so a token may get 0 frames)."""
    w = torch.exp(logw) * x_mask
    cum = torch.cumsum(w, -1) * (frames.view(-1, 1, 1) / w.sum(-1, keepdim=True).clamp_min(1e-6))
    cum = torch.round(cum)
    return torch.diff(cum, dim=-1, prepend=torch.zeros_like(cum[..., :1])) * x_mask


class VitsTrainNet(nn.Module):
    """The training forward of a :class:`edgeflow.models.vits.Vits` (a module so DDP can wrap it).

    Full mode: text encoder -> prior (m_p, logs_p); posterior encoder on the linear spectrogram -> z;
    prior flow z -> z_p; MAS on log N(z_p | m_p, logs_p) -> durations; duration NLL; KL; decoder on a
    segment of z.

    Decoder mode (``finetune="decoder"``): no posterior, so the latent comes from the prior, as at
    synthesis: durations predicted by the duration model (noise 0) and rescaled to the clip's frame count,
    z_p = m_p + noise * exp(logs_p) * noise_scale, z = flow^-1(z_p); only the decoder learns to map that z
    to the recorded audio. Limit: the alignment is the model's prediction, not the audio's, so timing
    differences between the recording and the model's rhythm are not learnt (they blur the mel target);
    it adapts timbre and recording conditions, not prosody or pronunciation.
    """

    def __init__(self, vits: nn.Module, finetune: str = ""):
        super().__init__()
        self.vits, self.finetune = vits, finetune

    def forward(self, batch: Dict[str, Any], spec: Tensor, seg_frames: int) -> Dict[str, Tensor]:
        """batch: see :func:`edgeflow.train.vits_trainer.collate`; spec [B, spec, F] linear spectrogram.

        Returns:
            {y_hat [B, 1, seg_frames * hop], kl (scalar), dur (scalar), durations [B, N] frames per id}.
        """
        if self.finetune == "decoder":
            return self._decoder_only(batch, seg_frames)
        v, b = self.vits, batch
        g = v.speaker(b.get("sid"))
        h, m_p, logs_p, x_mask = v.enc_p(b["ids"], b["id_lens"])
        z, m_q, logs_q, y_mask = v.enc_q(spec, b["frame_lens"], b["noise_q"][:, :, :spec.shape[2]], g)
        z_p, _ = v.flow(z, FlowCond(y_mask, g))
        with torch.no_grad():
            attn = maximum_path(prior_log_likelihood(z_p, m_p, logs_p),
                                x_mask.transpose(1, 2) * y_mask)                      # [B, N, F]
        w = attn.sum(2).unsqueeze(1)
        dur = v.dp.nll(h, x_mask, w, b["noise_dur"], g).sum() / x_mask.sum()
        m_f, logs_f = torch.matmul(m_p, attn), torch.matmul(logs_p, attn)
        kl = kl_loss(z_p, logs_q, m_f, logs_f, y_mask)
        y_hat = v.dec(slice_segments(z, b["seg_start"], seg_frames), g=g)
        return {"y_hat": y_hat, "kl": kl, "dur": dur, "durations": w[:, 0]}

    def _decoder_only(self, b: Dict[str, Any], seg_frames: int) -> Dict[str, Tensor]:
        v = self.vits
        g = v.speaker(b.get("sid"))
        with torch.no_grad():
            h, m_p, logs_p, x_mask = v.enc_p(b["ids"], b["id_lens"])
            if v.config.use_sdp:
                logw = v.dp.sample_logw(h, x_mask, torch.zeros_like(b["noise_dur"]), g=g)
            else:
                logw = v.dp(h, x_mask, g=g)
            w = scaled_durations(logw, x_mask, b["frame_lens"].to(logw.dtype))
            n_frames = b["noise_q"].shape[2]
            y_mask = sequence_mask(b["frame_lens"], n_frames).unsqueeze(1).to(m_p.dtype)
            attn = generate_path(w, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1)).squeeze(1)   # [B, F, N]
            m_f = torch.matmul(attn, m_p.transpose(1, 2)).transpose(1, 2)
            logs_f = torch.matmul(attn, logs_p.transpose(1, 2)).transpose(1, 2)
            z_p = (m_f + b["noise_q"] * torch.exp(logs_f) * v.config.noise_scale) * y_mask
            z, _ = v.flow.inverse(z_p, FlowCond(y_mask, g))
        y_hat = v.dec(slice_segments(z * y_mask, b["seg_start"], seg_frames), g=g)
        zero = y_hat.new_zeros(())
        return {"y_hat": y_hat, "kl": zero, "dur": zero, "durations": w[:, 0]}


def discriminator_loss(real: List[Tensor], fake: List[Tensor]) -> Tensor:
    """Least-squares GAN: sum over discriminators of mean((1 - D(y))^2) + mean(D(y_hat)^2)."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(g ** 2) for r, g in zip(real, fake))


def generator_loss(fake: List[Tensor]) -> Tensor:
    """Least-squares GAN: sum over discriminators of mean((1 - D(y_hat))^2)."""
    return sum(torch.mean((1 - g) ** 2) for g in fake)


def feature_loss(fmap_r: List[List[Tensor]], fmap_g: List[List[Tensor]]) -> Tensor:
    """Feature matching: sum of mean |real - fake| over every feature map (real ones detached)."""
    return sum(torch.mean(torch.abs(r.detach() - g)) for dr, dg in zip(fmap_r, fmap_g) for r, g in zip(dr, dg))


class VitsObjective:
    """Generator loss for the loop; owns and steps the discriminator (see the module docstring).

    Args:
        vits: the generator (its config gives the audio front-end and segment size).
        cfg: :class:`VitsTrainConfig`.
        mel: :class:`edgeflow.audio.mel_torch.LogMel` matching the model's audio settings.
        device: where the discriminator lives.
        disc_net: the module to run for the discriminator update (a DDP wrapper; default the discriminator).
    """

    def __init__(self, vits: nn.Module, cfg: VitsTrainConfig, mel: nn.Module, device: torch.device,
                 disc: Optional[nn.Module] = None):
        c = vits.config
        self.cfg, self.mel, self.vcfg = cfg, mel, c
        self.seg_frames = c.segment_size // c.hop_length
        self.disc = disc if disc is not None else VitsDiscriminator(width=cfg.disc_width).to(device)
        self.disc_net: nn.Module = self.disc
        self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.8, 0.99), eps=1e-9)

    def state_dict(self) -> Dict[str, Any]:
        return {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_opt"])

    def spectrogram(self, audio: Tensor) -> Tensor:
        c = self.vcfg
        return linear_spectrogram(audio, c.filter_length, c.hop_length, c.win_length)

    def generator_terms(self, net: nn.Module, batch: Dict[str, Any]) -> Tuple[Dict[str, Tensor], Tensor, Tensor]:
        """(terms {y_hat, kl, dur, mel}, real segment y [B, 1, S], generated y_hat [B, 1, S])."""
        audio = batch["audio"]
        with torch.no_grad():
            spec = self.spectrogram(audio)
        out = net(batch, spec, self.seg_frames)
        y = slice_segments(audio.unsqueeze(1), batch["seg_start"] * self.vcfg.hop_length, self.vcfg.segment_size)
        y_hat = out["y_hat"]
        out["mel"] = F.l1_loss(self.mel(y_hat.squeeze(1)), self.mel(y.squeeze(1)))
        return out, y, y_hat

    def loss(self, net: nn.Module, batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, float]]:
        """Discriminator step, then the generator loss (scalar) and its terms."""
        out, y, y_hat = self.generator_terms(net, batch)
        for grp in self.disc_opt.param_groups:
            grp["lr"] = batch.get("lr", self.cfg.lr)
        real, fake, _, _ = self.disc_net(y, y_hat.detach())
        loss_d = discriminator_loss(real, fake)
        self.disc_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        self.disc_opt.step()
        params = list(self.disc.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            _, fake, fmap_r, fmap_g = self.disc(y, y_hat)
        finally:
            for p in params:
                p.requires_grad_(True)
        gen, fm = generator_loss(fake), feature_loss(fmap_r, fmap_g)
        c = self.cfg
        total = c.c_mel * out["mel"] + c.c_kl * out["kl"] + out["dur"] + gen + c.c_fm * fm
        logs = {"mel": float(out["mel"].detach()), "kl": float(out["kl"].detach()), "dur": float(out["dur"].detach()),
                "gen": float(gen.detach()), "fm": float(fm.detach()), "disc": float(loss_d.detach())}
        return total, logs

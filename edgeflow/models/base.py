"""Flow vocoder base: mel [B, n_mels, F] conditions an invertible map audio [B, T] <-> z [B, T].

Every family is a :class:`edgeflow.models.family.Family` registered in :data:`FAMILIES`.
Both directions follow the contract of :class:`edgeflow.flows.base.InvertibleModule`, with
``cond`` being the mel spectrogram; T must equal F * hop_length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import torch

from edgeflow.audio.mel import MelConfig
from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import InputError
from edgeflow.flows.base import InvertibleModule
from edgeflow.models.family import FAMILIES, get_family  # noqa: F401  (FAMILIES: the old name)

LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass
class VocoderConfig(ConfigBase):
    """Fields every vocoder config has; families add their own."""

    mel: MelConfig = dataclasses.field(default_factory=MelConfig)
    sigma_train: float = 1.0
    sigma_infer: float = 0.8


class MelConditioned:
    """What every mel-conditioned vocoder answers from ``self.config.mel`` (flow or GAN alike)."""

    config: Any

    @property
    def hop_length(self) -> int:
        return self.config.mel.hop_length

    @property
    def n_mels(self) -> int:
        return self.config.mel.n_mels

    @property
    def length_multiple(self) -> int:
        """Audio lengths the vocoder accepts are multiples of this (in samples: one hop)."""
        return self.hop_length


class FlowVocoder(MelConditioned, InvertibleModule):
    """Base of the flow vocoders. Subclasses implement :meth:`forward` / :meth:`inverse`."""

    family: str = ""

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config

    def check_mel(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise InputError(f"mel must be [B, {self.n_mels}, frames], got {tuple(mel.shape)}")
        if mel.shape[2] == 0:
            raise InputError("mel has zero frames")
        if not torch.isfinite(mel).all():
            raise InputError("mel contains NaN or Inf")

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor, sigma: Optional[float] = None) -> torch.Tensor:
        """Exact log p(audio | mel) per batch item [B] in nats, with z ~ N(0, sigma^2 I)."""
        sigma = self.config.sigma_train if sigma is None else sigma
        return latent_log_likelihood(*self(audio, mel), sigma)

    def nll_per_dim(self, audio: torch.Tensor, mel: torch.Tensor, sigma: Optional[float] = None) -> torch.Tensor:
        """Mean negative log-likelihood per sample (nats/dim), the training loss."""
        sigma = self.config.sigma_train if sigma is None else sigma
        return latent_nll_per_dim(*self(audio, mel), sigma)

    def noise(self, mel: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Standard normal z [B, F * hop] from an explicit seed (:func:`edgeflow.core.noise.noise`,
        the same noise the runtime draws)."""
        from edgeflow.core.noise import noise

        z = noise(seed, 0, mel.shape[2], self.hop_length, batch=mel.shape[0])
        return torch.from_numpy(z).to(device=mel.device, dtype=mel.dtype)

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor, sigma: Optional[float] = None, z: Optional[torch.Tensor] = None,
                   seed: int = 0) -> torch.Tensor:
        """Audio [B, F * hop] from mel [B, n_mels, F]: inverse(sigma * z). z defaults to seeded noise."""
        self.check_mel(mel)
        sigma = self.config.sigma_infer if sigma is None else sigma
        if z is None:
            z = self.noise(mel, seed)
        audio, _ = self.inverse(z * sigma, mel)
        return audio


def latent_log_likelihood(z: torch.Tensor, logdet: torch.Tensor, sigma: float) -> torch.Tensor:
    """log p(x) per batch item [B] in nats of a flow's output: z [B, ...] ~ N(0, sigma^2 I), logdet [B]
    (log|det dz/dx|). The one place the Gaussian likelihood formula lives."""
    n = z[0].numel()
    log_pz = -0.5 * (z.flatten(1) ** 2).sum(1) / sigma ** 2 - n * (math.log(sigma) + 0.5 * LOG_2PI)
    return log_pz + logdet


def latent_nll_per_dim(z: torch.Tensor, logdet: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean negative log-likelihood per sample (nats/dim, a scalar) of a flow's output (z [B, T], logdet [B]).

    The training loss; takes the flow's outputs, so a trainer can run the flow through a DDP wrapper."""
    return -latent_log_likelihood(z, logdet, sigma).mean() / z[0].numel()


def config_from_dict(family: str, data: Dict[str, Any]) -> VocoderConfig:
    """Build a family's config from a dict (unknown keys refused)."""
    return get_family(family).config_from_dict(data)


def build_model(family: str, config: VocoderConfig | Dict[str, Any] | None = None) -> FlowVocoder:
    """Instantiate a model of ``family`` from its config (object, dict, or None for defaults)."""
    return get_family(family).build(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_lengths(audio: torch.Tensor, mel: torch.Tensor, hop: int) -> Tuple[int, int]:
    if audio.dim() != 2:
        raise InputError(f"audio must be [B, T], got {tuple(audio.shape)}")
    if audio.shape[1] != mel.shape[2] * hop:
        raise InputError(f"audio length {audio.shape[1]} != mel frames {mel.shape[2]} x hop {hop}")
    return audio.shape[0], audio.shape[1]

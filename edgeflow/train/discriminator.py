"""A multi-resolution spectrogram discriminator and the least-squares GAN losses, for adversarial distillation.

The public HiFi-GAN checkpoints ship the generator only, so a pruned generator distilled with spectral losses
alone keeps the buzz of an under-trained GAN generator (bench/results/vocoders.md). This module gives the
distillation a discriminator trained from scratch beside the student, with the **teacher's** audio as "real":

- :class:`SpectrogramDiscriminator`: UnivNet's multi-resolution discriminator (arXiv 2106.07889, MRD): a 2-D
  convolution stack over one STFT magnitude [B, 1, frames, bins]; cheap on a CPU next to HiFi-GAN's
  multi-period discriminator, and it sees the harmonic / noise structure the buzz lives in.
- :class:`MultiResolutionDiscriminator`: one of those per resolution (UnivNet's three by default).
- HiFi-GAN's least-squares losses (arXiv 2010.05646, eqs. 1-2) and feature matching (eq. 3): the VITS
  trainer's (:mod:`edgeflow.train.vits`), averaged over the sub-discriminators instead of summed, so the
  weights do not depend on their number.

Example::

    disc = MultiResolutionDiscriminator()
    real, fake = disc(teacher_audio), disc(student_audio.detach())     # [B, T] each
    d_loss = discriminator_loss(real, fake)
    fake = disc(student_audio)
    g_adv, g_fm = generator_adv_loss(fake), feature_matching_loss(disc(teacher_audio), fake)
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from edgeflow.audio.losses import stft_magnitude
from edgeflow.train import vits as gan

#: (n_fft, hop, win) of UnivNet's MRD.
MRD_RESOLUTIONS: Tuple[Tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
_SLOPE = 0.2

#: One sub-discriminator's output: (score map [B, 1, frames, bins'], feature maps of every hidden layer).
Output = Tuple[torch.Tensor, List[torch.Tensor]]


class SpectrogramDiscriminator(nn.Module):
    """A 2-D convolution stack over the STFT magnitude of one resolution (UnivNet's MRD layout).

    Args:
        resolution: (n_fft, hop, win) of the STFT.
        channels: width of the hidden convolutions (UnivNet: 32).
    """

    def __init__(self, resolution: Tuple[int, int, int], channels: int = 32):
        super().__init__()
        self.resolution = tuple(int(r) for r in resolution)
        c = int(channels)
        layers = [nn.Conv2d(1, c, (3, 9), padding=(1, 4))]
        layers += [nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4)) for _ in range(3)]
        layers += [nn.Conv2d(c, c, (3, 3), padding=(1, 1))]
        self.convs = nn.ModuleList(weight_norm(conv) for conv in layers)
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> Output:
        """Score a waveform.

        Args:
            audio: [B, T].

        Returns:
            (score [B, 1, frames, bins'], [feature map [B, C, frames, bins_k] per hidden layer]).
        """
        n_fft, hop, win = self.resolution
        x = stft_magnitude(audio.float(), n_fft, hop, win).transpose(1, 2).unsqueeze(1)   # [B, 1, frames, bins]
        feats = []
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), _SLOPE)
            feats.append(x)
        return self.post(x), feats


class MultiResolutionDiscriminator(nn.Module):
    """Sub-discriminators over several STFT resolutions.

    Args:
        resolutions: (n_fft, hop, win) per sub-discriminator; those longer than the audio are skipped at call
            time (at least one must fit).
        channels: hidden width of each.
    """

    def __init__(self, resolutions: Sequence[Tuple[int, int, int]] = MRD_RESOLUTIONS, channels: int = 32):
        super().__init__()
        if not resolutions or channels < 1:
            raise ValueError("a discriminator needs at least one resolution and channels >= 1")
        self.subs = nn.ModuleList(SpectrogramDiscriminator(r, channels) for r in resolutions)

    def forward(self, audio: torch.Tensor) -> List[Output]:
        """[one :data:`Output` per sub-discriminator whose FFT fits ``audio`` [B, T]]."""
        outs = [sub(audio) for sub in self.subs if sub.resolution[0] <= audio.shape[-1]]
        if not outs:
            raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than every discriminator's FFT")
        return outs


def discriminator_loss(real: List[Output], fake: List[Output]) -> torch.Tensor:
    """Least squares, real -> 1 and fake -> 0: mean over sub-discriminators of E(1 - D(r))^2 + E D(f)^2
    (:func:`edgeflow.train.vits.discriminator_loss`, which sums, divided by their number)."""
    return gan.discriminator_loss([r for r, _ in real], [f for f, _ in fake]) / len(real)


def generator_adv_loss(fake: List[Output]) -> torch.Tensor:
    """Least squares for the generator: mean over sub-discriminators of E(1 - D(G(s)))^2."""
    return gan.generator_loss([f for f, _ in fake]) / len(fake)


def feature_matching_loss(real: List[Output], fake: List[Output]) -> torch.Tensor:
    """Mean over sub-discriminators and their layers of the L1 distance between the feature maps of the real
    (teacher) and the generated audio; the real maps are taken as constants."""
    return gan.feature_loss([rs for _, rs in real], [fs for _, fs in fake]) / sum(len(fs) for _, fs in fake)

"""HiFi-GAN's ConvTranspose1d upsamplers as one Conv1d over a polyphase split: moved to
:mod:`edgeflow.models.polyphase` (the "hifigan" family's ``fuse`` hook uses it too); re-exported here."""

from edgeflow.models.polyphase import PolyphaseConvTranspose1d, to_phase_form

__all__ = ["PolyphaseConvTranspose1d", "to_phase_form"]

"""Flow-matching TTS family ``fmtts``: VITS text encoder, prosody flow, OT-CFM U-Net mel decoder.

Importing this package registers the family (:func:`edgeflow.models.fmtts.family.register`).
"""

from edgeflow.models.fmtts.config import FmTtsConfig  # noqa: F401
from edgeflow.models.fmtts.model import FmTts  # noqa: F401
from edgeflow.models.fmtts.family import FmTtsFamily, flops_breakdown, register

FAMILY = register()

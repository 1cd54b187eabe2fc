"""Model families. Each is a :class:`~edgeflow.models.family.Family` registered in :data:`FAMILIES`
(one module per family: config + model class, and the family object declaring the rest)."""

from edgeflow.models.family import FAMILIES, Family, get_family, register_family  # noqa: F401
from edgeflow.models.base import FlowVocoder, build_model, config_from_dict  # noqa: F401
from edgeflow.models import waveflow_family as _waveflow  # noqa: F401  (registers "waveflow")
from edgeflow.models import waveglow_family as _waveglow  # noqa: F401  (registers "waveglow")
from edgeflow.models import vits as _vits  # noqa: F401  (registers "vits" and "hifigan")
from edgeflow.models import fmtts as _fmtts  # noqa: F401  (registers "fmtts")
from edgeflow.models import vocos as _vocos  # noqa: F401  (registers "vocos")

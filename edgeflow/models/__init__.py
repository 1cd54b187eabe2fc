"""Model families. Each: a config dataclass + model class, registered in :data:`FAMILIES`."""

from edgeflow.models.base import FAMILIES, FlowVocoder, build_model, config_from_dict  # noqa: F401
from edgeflow.models import waveflow as _waveflow  # noqa: F401  (registers "waveflow")
from edgeflow.models import waveglow as _waveglow  # noqa: F401  (registers "waveglow")

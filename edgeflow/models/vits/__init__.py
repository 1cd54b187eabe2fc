"""VITS (Kim et al., 2021), the flow TTS model of Piper voices.

Layout:
    config.py        VitsConfig, Piper presets (x_low / low / medium / high), from a voice json / checkpoint
    modules.py       LayerNorm, DDSConv, WN, masks and the monotonic path
    text_encoder.py  relative-position transformer text encoder
    flows.py         flow layers on the invertible contract: coupling, spline coupling, Flip, affine, log
    duration.py      stochastic (spline flow) and deterministic duration predictors
    model.py         Vits: posterior encoder, two-stage synthesis with explicit noise
    discriminators.py  multi-period + multi-scale discriminators (training)
    family.py        the "vits" Family (registered on import of this package)
"""

from edgeflow.models.vits.config import VitsConfig, from_hparams, from_piper_json, preset  # noqa: F401
from edgeflow.models.vits.model import Vits, duration_noise, prior_noise  # noqa: F401
from edgeflow.models.vits.family import VitsFamily, register as _register

__all__ = ["Vits", "VitsConfig", "VitsFamily", "duration_noise", "from_hparams", "from_piper_json", "preset",
           "prior_noise"]

_register()

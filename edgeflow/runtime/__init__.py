"""Torch-free runtime: bundle loading and checks, the Synthesizer, streaming, providers, the TTS Voice.

Nothing under ``edgeflow.runtime`` imports torch (directly or through other edgeflow modules):
only numpy, onnxruntime, soundfile, scipy, ``edgeflow.core`` and ``edgeflow.audio`` (numpy parts).
"""

from edgeflow.runtime.bundle import FORMAT, FORMAT_VERSION, read_manifest  # noqa: F401
from edgeflow.runtime.synthesizer import Synthesizer, check_mel, resolve_providers  # noqa: F401
from edgeflow.runtime.voice import Voice  # noqa: F401
from edgeflow.runtime.fm_voice import FmVoice  # noqa: F401  (registers the fmtts loader with Voice.load)

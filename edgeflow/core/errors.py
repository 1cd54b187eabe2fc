"""User-facing errors.

Every kind of *user* error (bad input, bad file, bad option) has its own exception type
deriving from :class:`EdgeflowError`. The CLI turns these into a one-line message and
exit code 2. Anything else is a bug and keeps its traceback.
"""


class EdgeflowError(Exception):
    """Base class of errors caused by user input. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(EdgeflowError):
    """A config, recipe, target or option that does not parse or is inconsistent."""


class CheckpointError(EdgeflowError):
    """A model file that is corrupt, foreign, of another family, or unsafe to load."""


class AudioError(EdgeflowError):
    """An audio file that cannot be read, or audio/mel data that is unusable (NaN, empty, ...)."""


class InputError(EdgeflowError):
    """Array input of the wrong shape, dtype or value range."""


class CorpusError(EdgeflowError):
    """A corpus folder that is missing files, has no audio, or whose metadata does not parse."""


class BundleError(EdgeflowError):
    """A bundle that is incomplete, tampered with, or of an unknown format version."""


class DependencyError(EdgeflowError):
    """An optional dependency (TensorRT, a Debian voice, ...) that is needed but not installed."""

"""User-facing errors.

Every kind of *user* error (bad input, bad file, bad option) has its own exception type
deriving from :class:`EdgeflowError`. The CLI turns these into a one-line message and
exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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


class OutputError(EdgeflowError, OSError):
    """An output path that cannot be written: a read-only folder, a path component that is a file, a full disk.

    Also an :class:`OSError` (with ``errno``, ``strerror`` and ``filename`` of the cause), so code that
    handles ``OSError`` around a write keeps working.
    """

    def __init__(self, message: str, cause: OSError | None = None):
        if cause is not None and cause.errno is not None:
            OSError.__init__(self, cause.errno, cause.strerror, cause.filename)
        else:
            OSError.__init__(self, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


#: Longest reason :func:`short_reason` quotes from an underlying error.
REASON_CHARS = 160


def short_reason(exc: BaseException | str, limit: int = REASON_CHARS) -> str:
    """The first non-empty line of an exception's message (or of a text), cut to ``limit`` characters,
    for quoting a library's error inside a one-line user error; the exception's type name if it has no
    message."""
    text = exc if isinstance(exc, str) else str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "" if isinstance(exc, str) else type(exc).__name__
    line = lines[0]
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."


def not_a_file(what: str, path: object) -> str:
    """The one-line reason a path given as ``what`` (e.g. "model file") cannot be read as a file:
    ``"<what> <path> is a folder, not a file"`` or ``"<what> not found: <path>"``."""
    import os

    return f"{what} {path} is a folder, not a file" if os.path.isdir(path) else f"{what} not found: {path}"

"""Passes: a config dataclass plus a registered handler, applied in place to an :class:`Artifact`.

A pass is one module of this package ending with its :func:`register_pass` call. Importing the package
imports every module in it (``pkgutil``), which registers them all; the pipeline looks passes up by name
only, so adding a pass edits no list.
"""

import importlib
import pkgutil

from edgeflow.passes.base import PASSES, Artifact, PassConfig, PassContext, apply_pass, register_pass  # noqa: F401


def _import_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

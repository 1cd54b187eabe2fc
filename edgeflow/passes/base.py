"""The pass framework (after torchao's ``quantize_(model, config)`` and ModelOpt's modes).

A pass is a config dataclass registered with :func:`register_pass` together with its handler
``handler(artifact, cfg, ctx) -> dict``. :func:`apply_pass` runs the handler on the artifact in
place and appends a history record ``{name, config, version, metrics_before, metrics_after,
seconds, status}``. The pipeline (``edgeflow.pipeline``) adds the quality gate and rollback.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edgeflow import __version__
from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import ConfigError
from edgeflow.core.registry import Registry

#: name -> (config class, handler)
PASSES: Registry = Registry("pass")


@dataclasses.dataclass
class PassConfig(ConfigBase):
    """Base of every pass config."""


def register_pass(name: str):
    """Class decorator registering a pass config; the handler is attached with ``@Config.handler``.

    Example::

        @register_pass("freeze")
        @dataclasses.dataclass
        class FreezeConfig(PassConfig):
            ...

        @FreezeConfig.handler
        def _freeze(artifact, cfg, ctx): ...
    """

    def deco(cfg_cls):
        entry = {"config": cfg_cls, "handler": None}
        PASSES.register(name)(entry)
        cfg_cls.pass_name = name

        def handler(fn: Callable) -> Callable:
            entry["handler"] = fn
            return fn

        cfg_cls.handler = staticmethod(handler)
        return cfg_cls

    return deco


@dataclasses.dataclass
class Artifact:
    """What passes transform: a torch model until export, then also a bundle.

    Attributes:
        model: the current torch FlowVocoder (None once only a bundle remains meaningful).
        reference: the unoptimized model, for "vs original" metrics and distillation teachers.
        bundle_dir: the exported bundle directory, once the export pass ran.
        history: records of every pass applied (written into the bundle manifest).
        info: free-form facts passes leave for later ones (e.g. precision, calibration set).
    """

    model: Any = None
    reference: Any = None
    bundle_dir: Optional[Path] = None
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def snapshot(self) -> "Artifact":
        """A copy to roll back to: the model is deep-copied, the bundle directory is the caller's concern."""
        return Artifact(model=copy.deepcopy(self.model), reference=self.reference, bundle_dir=self.bundle_dir,
                        history=copy.deepcopy(self.history), info=copy.deepcopy(self.info))


@dataclasses.dataclass
class PassContext:
    """What a pass may need besides its config: where to write, evaluation data, target, progress."""

    work_dir: Path
    target: Dict[str, Any] = dataclasses.field(default_factory=dict)
    eval_mels: List[Any] = dataclasses.field(default_factory=list)
    eval_audio: List[Any] = dataclasses.field(default_factory=list)
    data_dir: Optional[Path] = None
    calib_dir: Optional[Path] = None
    progress: bool = True
    seed: int = 0
    evaluate: Optional[Callable[["Artifact"], Dict[str, float]]] = None


def make_config(name: str, options: Optional[Dict[str, Any]] = None) -> PassConfig:
    """The config object of pass ``name`` from a dict of options (unknown keys refused)."""
    entry = PASSES.get(name)
    return entry["config"].from_dict(dict(options or {}))


def apply_pass(artifact: Artifact, cfg: PassConfig, ctx: PassContext,
               metrics_before: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Run one pass in place and append its record to ``artifact.history``. Returns the record."""
    name = getattr(type(cfg), "pass_name", None)
    if name is None:
        raise ConfigError(f"{type(cfg).__name__} is not a registered pass config")
    handler = PASSES.get(name)["handler"]
    if handler is None:
        raise ConfigError(f"pass {name!r} has no handler")
    t0 = time.time()
    details = handler(artifact, cfg, ctx) or {}
    record = {"name": name, "config": cfg.to_dict(), "version": __version__, "seconds": round(time.time() - t0, 3),
              "metrics_before": dict(metrics_before or {}), "metrics_after": {}, "status": "applied",
              "details": details}
    artifact.history.append(record)
    return record

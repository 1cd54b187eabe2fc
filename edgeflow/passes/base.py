"""The pass framework (after torchao's ``quantize_(model, config)`` and ModelOpt's modes).

A pass is a config dataclass registered with :func:`register_pass` together with its handler
``handler(artifact, cfg, ctx) -> dict`` (required). :func:`apply_pass` runs the handler on the artifact in
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

#: name -> :class:`PassEntry`
PASSES: Registry = Registry("pass")


@dataclasses.dataclass
class PassConfig(ConfigBase):
    """Base of every pass config. ``pass_name`` and ``changes_output`` are set by :func:`register_pass`."""

    #: whether the pass can change the synthesised audio (False: the pipeline keeps the metrics it had
    #: instead of evaluating again, e.g. ``freeze``).
    changes_output = True

    def inputs(self) -> Dict[str, str]:
        """Inputs this pass reads besides the artifact, which the pipeline checks before the first pass:
        ``"calibration"`` (a calibration set) and/or ``"training_data"`` (distillation data), each mapped to
        the path the options name ("" = the run's default). The base pass reads none."""
        return {}

    def refusal(self, family: Any) -> Optional[str]:
        """Why this pass cannot apply to a model of ``family`` (a :class:`edgeflow.models.family.Family`), or
        None; the pipeline asks every pass of a recipe before the first one runs. The base pass applies to all."""
        return None


@dataclasses.dataclass(frozen=True)
class PassEntry:
    """A registered pass: its config class, its handler ``handler(artifact, cfg, ctx) -> dict``, and whether it
    can change the synthesised audio."""

    name: str
    config: type
    handler: Callable[..., Optional[Dict[str, Any]]]
    changes_output: bool = True


def register_pass(name: str, config: type, handler: Callable, *, changes_output: bool = True) -> type:
    """Register pass ``name``: its config dataclass and its handler, both required. Returns the config class.

    A pass is one module of :mod:`edgeflow.passes` ending with its registration (the package imports all its
    modules, so nothing else is edited to add one)::

        @dataclasses.dataclass
        class FreezeConfig(PassConfig):
            ...

        def _freeze(artifact, cfg, ctx): ...

        register_pass("freeze", FreezeConfig, _freeze, changes_output=False)

    Raises:
        ValueError: no name, a config that is not a PassConfig dataclass, no callable handler, or a name
            registered twice.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("register_pass needs a pass name")
    if not (isinstance(config, type) and issubclass(config, PassConfig) and dataclasses.is_dataclass(config)):
        raise ValueError(f"pass {name!r}: the config must be a PassConfig dataclass, got {config!r}")
    if not callable(handler):
        raise ValueError(f"pass {name!r}: a pass needs a handler (got {handler!r})")
    PASSES.register(name)(PassEntry(name, config, handler, bool(changes_output)))
    config.pass_name = name
    config.changes_output = bool(changes_output)
    return config


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
    return PASSES.get(name).config.from_dict(dict(options or {}))


def apply_pass(artifact: Artifact, cfg: PassConfig, ctx: PassContext,
               metrics_before: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Run one pass in place and append its record to ``artifact.history``. Returns the record."""
    name = getattr(type(cfg), "pass_name", None)
    if name is None:
        raise ConfigError(f"{type(cfg).__name__} is not a registered pass config")
    t0 = time.time()
    details = PASSES.get(name).handler(artifact, cfg, ctx) or {}
    record = {"name": name, "config": cfg.to_dict(), "version": __version__, "seconds": round(time.time() - t0, 3),
              "metrics_before": dict(metrics_before or {}), "metrics_after": {}, "status": "applied",
              "details": details}
    artifact.history.append(record)
    return record

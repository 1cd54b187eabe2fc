"""Built-in passes: ``freeze`` (export prerequisites), ``export`` (ONNX bundle), ``validate`` (parity + quality)."""

from __future__ import annotations

import dataclasses
import shutil

from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


@dataclasses.dataclass
class FreezeConfig(PassConfig):
    """Remove weight norm and precompute inverse 1x1-conv weights (float64) as buffers."""


def _freeze(artifact: Artifact, cfg: FreezeConfig, ctx: PassContext):
    from edgeflow.export.freeze import freeze_model

    if artifact.model is None:
        raise ConfigError("freeze: the artifact has no torch model")
    freeze_model(artifact.model)
    artifact.info["frozen"] = True                # the pipeline re-freezes a model it restores from disk
    return {"frozen": True}


register_pass("freeze", FreezeConfig, _freeze, changes_output=False)


@dataclasses.dataclass
class ExportConfig(PassConfig):
    """Export the synthesis direction to an ONNX bundle (parity-checked against PyTorch).

    Attributes:
        precision: "float32" (INT8 / FP16 bundles come from the ``quantize`` pass).
        cached: WaveFlow: the cached row-by-row inverse in the graph (False: the plain h^2 graph).
    """

    precision: str = "float32"
    cached: bool = True

    def __post_init__(self):
        if self.precision != "float32":
            raise ValueError("export writes float32; use the quantize pass for int8/float16")


def _export(artifact: Artifact, cfg: ExportConfig, ctx: PassContext):
    from edgeflow.validate.export import export_bundle

    if artifact.model is None:
        raise ConfigError("export: the artifact has no torch model")
    out = ctx.work_dir / f"bundle-{len(artifact.history):02d}-export"
    if out.exists():
        shutil.rmtree(out)
    manifest = export_bundle(artifact.model, out, history=artifact.history, cached=cfg.cached)
    artifact.bundle_dir = out
    artifact.info["precision"] = "float32"
    return {"bundle": out.name, "validation": manifest.get("validation")}


register_pass("export", ExportConfig, _export)


@dataclasses.dataclass
class ValidateConfig(PassConfig):
    """Check the current bundle: manifest and hashes, parity already recorded, quality on eval clips."""


def _validate(artifact: Artifact, cfg: ValidateConfig, ctx: PassContext):
    from edgeflow.runtime.bundle import read_manifest

    if artifact.bundle_dir is None:
        raise ConfigError("validate: no bundle yet (run the export pass first)")
    manifest = read_manifest(artifact.bundle_dir)
    metrics = ctx.evaluate(artifact) if ctx.evaluate else {}
    return {"manifest_ok": True, "export_parity": manifest.get("validation"), "quality": metrics}


register_pass("validate", ValidateConfig, _validate, changes_output=False)

"""Pass ``distill``: a teacher trains a smaller (or the same) student; the student replaces the model.

Teacher: ``reference`` (the unoptimized model; default), ``current`` (the model before this pass), or
the path of a model.pt of the same family. Student: the current model's config with ``student``
overrides (e.g. ``{"channels": 16, "n_flows": 4}``), initialised from the current model where it can
be (see :mod:`edgeflow.compress.student`); with no overrides, the current model itself (fine-tuning
after prune / reduce_flows), narrowed first if it exceeds the target's ``max_bundle_mb`` (``fit_target``).
Training options are those of :class:`edgeflow.compress.settings.DistillSettings` (steps, max_minutes, ...).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

from edgeflow.compress.data import NoTrainingData
from edgeflow.compress.distill import Distiller
from edgeflow.compress.settings import DistillSettings, segment_length
from edgeflow.core.errors import CheckpointError, ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass


def check_pair(teacher, model) -> None:
    """Teacher and student must be the same family with the same audio front-end."""
    if teacher.family != model.family:
        raise CheckpointError(f"distill: the teacher is a {teacher.family} model, the model being optimized is "
                              f"{model.family}")
    if teacher.config.mel != model.config.mel:
        raise ConfigError("distill: teacher and student use different mel front-ends")


def distill_refusal(family) -> Optional[str]:
    """Why distillation cannot train a model of ``family`` (it trains a flow's synthesis direction), or None."""
    if not callable(getattr(family.model_cls, "inverse", None)):
        return (f"distillation trains a flow's synthesis direction (inverse) and the {family.name} family has "
                f"none")
    return None


def load_data(artifact: Artifact, ctx: PassContext, settings: DistillSettings, *models):
    """The distillation data for these models (see :func:`edgeflow.compress.data.resolve_source`)."""
    from edgeflow.compress.data import load_source, resolve_source

    kind, path = resolve_source(settings.data, ctx.data_dir, artifact.info.get("train_data"), ctx.calib_dir)
    if kind == "calibration" and settings.nll_weight > 0:
        raise ConfigError("distill: nll_weight > 0 needs audio, but the data is a calibration set (mels only); "
                          "pass a corpus as data or set nll_weight to 0")
    return load_source(kind, path, models[0].config.mel, segment_length(settings, *models), settings.seed,
                       settings.valid_segments)


def skipped(name: str, exc: Exception) -> Dict[str, Any]:
    """Details of a pass that left the model unchanged for want of training data (said in the log too)."""
    print(f"    {name}: skipped, model unchanged ({exc})")
    return {"skipped": str(exc)}


def score_batches(data, n: int, batch_size: int):
    """Fixed (audio, mel) batches for pruning scores, or None when the data has no audio."""
    if data is None or not data.has_audio or n <= 0:
        return None
    return [data.batch(10 ** 7 + i, batch_size) for i in range(n)]


def run_distill(artifact: Artifact, ctx: PassContext, settings: DistillSettings, teacher, student, data=None,
                tag: str = "distill") -> Dict[str, Any]:
    """Train ``student`` in place against ``teacher``; work files in ``ctx.work_dir/<tag>-NN``. Returns the summary."""
    check_pair(teacher, student)
    if data is None:
        data = load_data(artifact, ctx, settings, teacher, student)
    work = Path(ctx.work_dir) / f"{tag}-{len(artifact.history):02d}"
    return Distiller(teacher, student, data, settings, work, progress=ctx.progress).run(resume=True)


def teacher_of(artifact: Artifact, which: str):
    """The teacher model named by a pass option (see the module docstring)."""
    if which == "reference":
        return artifact.reference if artifact.reference is not None else artifact.model
    if which == "current":
        return artifact.model
    from edgeflow.models.checkpoint import load_model

    return load_model(which, family=artifact.model.family)[0]


def size_facts(model) -> Dict[str, Any]:
    """Parameters and analytic GFLOPs per second of audio (the family's cost model)."""
    from edgeflow.models.base import count_parameters
    from edgeflow.models.family import get_family

    flops = sum(get_family(model).flops_breakdown(model.config).values())
    return {"parameters": count_parameters(model), "gflops_per_audio_second": round(flops / 1e9, 3)}


@dataclasses.dataclass
class DistillConfig(PassConfig, DistillSettings):
    """Distillation pass options: DistillSettings plus teacher, student overrides, layers_fraction, init,
    fit_target. ``layers_fraction`` (0: unused) keeps that fraction of each flow's layers (the family's
    ``layers_field``: WaveFlow ``n_layers``, WaveGlow ``wn_layers``; rounded, at least 1), so one recipe fits
    models of any depth."""

    teacher: str = "reference"
    student: Dict[str, Any] = dataclasses.field(default_factory=dict)
    layers_fraction: float = 0.0
    init: str = "teacher"
    fit_target: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.layers_fraction < 1:
            raise ValueError(f"layers_fraction must be in [0, 1), got {self.layers_fraction}")
        if self.init not in ("teacher", "fresh"):
            raise ValueError(f"init must be 'teacher' or 'fresh', got {self.init!r}")
        if not isinstance(self.student, dict):
            raise ValueError("student must be a mapping of config fields")

    def inputs(self):
        return {"training_data": self.data}

    def refusal(self, family) -> Optional[str]:
        if self.layers_fraction and family.layers_field is None:
            return f"layers_fraction needs a layer stack and the {family.name} family has none"
        return distill_refusal(family)


def settings_of(cfg) -> DistillSettings:
    names = {f.name for f in dataclasses.fields(DistillSettings)}
    return DistillSettings.from_dict({k: v for k, v in cfg.to_dict().items() if k in names})


def _distill(artifact: Artifact, cfg: DistillConfig, ctx: PassContext):
    import torch

    from edgeflow.compress.layers import finish_like
    from edgeflow.compress.student import fit_target, make_student, student_config
    from edgeflow.models.base import build_model, count_parameters
    from edgeflow.models.family import get_family

    model = artifact.model
    if model is None:
        raise ConfigError("distill: the artifact has no torch model")
    teacher = teacher_of(artifact, cfg.teacher)
    check_pair(teacher, model)
    overrides = dict(cfg.student)
    if cfg.layers_fraction:
        key = get_family(model).layers_field
        if key is None:
            raise ConfigError(f"distill: layers_fraction needs a layer stack; the {model.family} family has none")
        if key in overrides:
            raise ConfigError(f"distill: give either layers_fraction or student.{key}, not both")
        overrides[key] = max(1, round(cfg.layers_fraction * getattr(model.config, key)))
    overrides = overrides or (fit_target(model, ctx.target) if cfg.fit_target else {})
    scfg = student_config(model, overrides, "teacher" if model.config == teacher.config else "current model")
    with torch.random.fork_rng():
        probe = build_model(model.family, scfg)                  # sizes and length multiple only
    if count_parameters(probe) > count_parameters(teacher):
        raise ConfigError(f"distill: the student has more parameters than the teacher "
                          f"({count_parameters(probe)} > {count_parameters(teacher)})")
    settings = settings_of(cfg)
    try:
        data = load_data(artifact, ctx, settings, teacher, model, probe)
    except NoTrainingData as exc:
        return skipped("distill", exc)
    student, init = make_student(model, overrides, cfg.init, cfg.seed, score_batches(data, 2, settings.batch_size))
    before = size_facts(model)
    summary = run_distill(artifact, ctx, settings, teacher, student, data)
    artifact.model = finish_like(student, model)
    return {"student": overrides, "init": init, "before": before, "after": size_facts(student), "training": summary}


register_pass("distill", DistillConfig, _distill)

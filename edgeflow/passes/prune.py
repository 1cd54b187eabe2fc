"""Pass ``prune``: structured channel pruning of the conditioning nets (see :mod:`edgeflow.compress.prune`),
optionally followed by distillation against the unpruned reference (``finetune``: DistillSettings options).

The gate runs after each pass, so a pruned model that should recover by distillation before being
judged carries its fine-tuning here; a later ``distill`` pass can train it further.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from edgeflow.compress.data import NoTrainingData
from edgeflow.compress.prune import check_ratio, prune_model, width_key
from edgeflow.compress.settings import DistillSettings
from edgeflow.core.errors import ConfigError
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.distill import (distill_refusal, load_data, run_distill, score_batches, size_facts, skipped,
                                     teacher_of)

SCORES = ("activation", "weight")


@dataclasses.dataclass
class PruneConfig(PassConfig):
    """Options.

    Attributes:
        ratio: fraction of residual / gate / skip channels removed, in [0, 1) (0 changes nothing).
        score: "activation" (E|a| x read-weight L2 on a few training batches; weight-only when there is
            no training audio) or "weight" (read-weight L2 only).
        score_batches: batches for the activation statistics.
        finetune: DistillSettings options for distillation after pruning ({}: none).
        teacher: the finetune teacher ("reference", "current" = the unpruned model, or a model.pt).
    """

    ratio: float = 0.25
    score: str = "activation"
    score_batches: int = 4
    finetune: Dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: str = "reference"

    def __post_init__(self):
        check_ratio(self.ratio)
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not isinstance(self.finetune, dict):
            raise ValueError("finetune must be a mapping of distillation options")
        DistillSettings.from_dict(self.finetune)

    def inputs(self):
        return {"training_data": self.finetune.get("data", "")} if self.finetune and self.ratio > 0 else {}

    def refusal(self, family) -> Optional[str]:
        if self.ratio > 0 and family.width is None:
            return f"the {family.name} family declares no prunable channel groups"
        return distill_refusal(family) if self.finetune and self.ratio > 0 else None


def _data_or_none(artifact, ctx, settings, model, need: bool):
    try:
        return load_data(artifact, ctx, settings, model)
    except NoTrainingData:
        if need:
            raise
        return None


def _prune(artifact: Artifact, cfg: PruneConfig, ctx: PassContext):
    model = artifact.model
    if model is None:
        raise ConfigError("prune: the artifact has no torch model")
    settings = DistillSettings.from_dict(cfg.finetune)
    teacher = teacher_of(artifact, cfg.teacher) if cfg.teacher != "current" else model
    data = None
    if cfg.ratio > 0 and (cfg.score == "activation" or cfg.finetune):
        try:
            data = _data_or_none(artifact, ctx, settings, model, need=bool(cfg.finetune))
        except NoTrainingData as exc:      # pruning without its fine-tuning would only break the budget
            return skipped("prune", exc)
    batches = score_batches(data, cfg.score_batches, settings.batch_size) if cfg.score == "activation" else None
    new, info = prune_model(model, cfg.ratio, batches=batches)
    details: Dict[str, Any] = {"ratio": cfg.ratio, width_key(model): f"{info['from']} -> {info['to']}",
                               "score": info["score"], "before": size_facts(model), "after": size_facts(new)}
    if cfg.finetune and cfg.ratio > 0:
        if data is not None and data.segment % new.length_multiple:
            data = None
        details["finetune"] = run_distill(artifact, ctx, settings, teacher, new, data, tag="prune-distill")
        from edgeflow.compress.layers import finish_like
        new = finish_like(new, model)
    artifact.model = new
    return details


register_pass("prune", PruneConfig, _prune)

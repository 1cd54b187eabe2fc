"""Pass ``reduce_flows``: fewer flows and/or a smaller WaveFlow height (see :mod:`edgeflow.compress.reduce`),
optionally followed by distillation against the reference (``finetune``: DistillSettings options).

``evaluate_counts`` scores the reduced model (before fine-tuning) at several flow counts with the
pipeline's evaluation, recorded as ``details["quality_by_flow_count"]`` so the report shows quality
against flow count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from edgeflow.compress.data import NoTrainingData
from edgeflow.compress.reduce import KEEP_MODES, count_for_fraction, cut, flow_counts, keep_flows
from edgeflow.compress.settings import DistillSettings
from edgeflow.core.errors import ConfigError
from edgeflow.models.family import get_family
from edgeflow.passes.base import Artifact, PassConfig, PassContext, register_pass
from edgeflow.passes.distill import distill_refusal, load_data, run_distill, size_facts, skipped, teacher_of


@dataclasses.dataclass
class ReduceFlowsConfig(PassConfig):
    """Options.

    Attributes:
        n_flows: flows to keep (0: all, or as ``fraction`` says).
        fraction: keep this fraction of the flows instead (rounded to the nearest count the model's
            structure allows; 0: unused), so that one recipe fits models of any size.
        height: WaveFlow height h to re-fold to (0: unchanged).
        keep: which flows: "spread" (evenly, default), "last" or "first" (WaveGlow: within each stage).
        evaluate_counts: flow counts to score before fine-tuning (quality against flow count); counts
            the model cannot take (above its flow count, or breaking WaveGlow's structure) are skipped.
        finetune: DistillSettings options for distillation afterwards ({}: none).
        teacher: the finetune teacher ("reference", "current" or a model.pt).
    """

    n_flows: int = 0
    fraction: float = 0.0
    height: int = 0
    keep: str = "spread"
    evaluate_counts: List[int] = dataclasses.field(default_factory=list)
    finetune: Dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: str = "reference"

    def __post_init__(self):
        if self.n_flows < 0 or self.height < 0:
            raise ValueError("n_flows and height must be >= 0 (0: unchanged)")
        if not 0 <= self.fraction < 1 or (self.fraction and self.n_flows):
            raise ValueError("fraction must be in [0, 1) and not given together with n_flows")
        if self.n_flows == 0 and self.height == 0 and self.fraction == 0:
            raise ValueError("nothing to reduce: set n_flows (or fraction) and/or height")
        if self.keep not in KEEP_MODES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_MODES)}, got {self.keep!r}")
        if not isinstance(self.finetune, dict):
            raise ValueError("finetune must be a mapping of distillation options")
        DistillSettings.from_dict(self.finetune)

    def inputs(self):
        return {"training_data": self.finetune.get("data", "")} if self.finetune else {}

    def refusal(self, family) -> Optional[str]:
        if (self.n_flows or self.fraction) and family.flows_field is None:
            return f"the {family.name} family has no flow stack to cut"
        if self.height and "height" not in family.extra_cuts:
            return f"the {family.name} family has no height to reduce"
        return distill_refusal(family) if self.finetune else None


def flow_count(model) -> int:
    """The model's flow count (its family's ``flows_field``)."""
    fam = get_family(model)
    if fam.flows_field is None:
        raise ConfigError(f"reduce_flows: the {fam.name} family has no flow stack to cut")
    return getattr(model.config, fam.flows_field)


def reduce_model(model, n_flows: int, height: int, keep: str):
    """(reduced model, info): keep_flows then set_height, 0 meaning unchanged."""
    info: Dict[str, Any] = {}
    if n_flows:                              # keep_flows returns the model itself when nothing changes
        model, info["flows"] = keep_flows(model, n_flows, keep)
    if height:                               # a family cut (WaveFlow); others refuse it, naming what they cut
        model, info["height"] = cut(model, "height", height)
    return model, info


def _reduce(artifact: Artifact, cfg: ReduceFlowsConfig, ctx: PassContext):
    model = artifact.model
    if model is None:
        raise ConfigError("reduce_flows: the artifact has no torch model")
    settings = DistillSettings.from_dict(cfg.finetune)
    data = None
    if cfg.finetune:
        try:                                 # reducing without its fine-tuning would only break the budget
            data = load_data(artifact, ctx, settings, model)
        except NoTrainingData as exc:
            return skipped("reduce_flows", exc)
    n0 = flow_count(model)
    n_flows = count_for_fraction(model, cfg.fraction) if cfg.fraction else cfg.n_flows
    by_count, valid = {}, set(flow_counts(model))
    for k in sorted(set(int(c) for c in cfg.evaluate_counts) | ({n_flows} if cfg.evaluate_counts else set())):
        if k not in valid or ctx.evaluate is None:
            continue
        m, _ = reduce_model(model, k, cfg.height, cfg.keep)
        by_count[str(k)] = dict(ctx.evaluate(Artifact(model=m, reference=artifact.reference)),
                                **size_facts(m))
    new, info = reduce_model(model, n_flows, cfg.height, cfg.keep)
    if new is model:
        import copy
        new = copy.deepcopy(model)
    details: Dict[str, Any] = {"n_flows": f"{n0} -> {flow_count(new)}", "reduce": info,
                               "before": size_facts(model), "after": size_facts(new)}
    if by_count:
        details["quality_by_flow_count"] = by_count
    if cfg.finetune:
        teacher = teacher_of(artifact, cfg.teacher) if cfg.teacher != "current" else model
        if data.segment % new.length_multiple:
            data = None                      # a new height needs other segment lengths: reload
        details["finetune"] = run_distill(artifact, ctx, settings, teacher, new, data, tag="reduce-distill")
        from edgeflow.compress.layers import finish_like
        new = finish_like(new, model)
    artifact.model = new
    return details


register_pass("reduce_flows", ReduceFlowsConfig, _reduce)

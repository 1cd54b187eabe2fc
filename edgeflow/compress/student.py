"""Students for distillation: a teacher config with overrides, size checks, fitting a target's limits.

A student is initialised from the teacher where its config allows it, through the family's declared cuts
(fewer flows -> :func:`keep_flows`, the family's other cuts such as WaveFlow's height -> :func:`cut`, fewer
layers -> :func:`drop_layers`, a narrower width group -> :func:`prune_model`), which starts distillation
close to the teacher; other changes (kernel size, front-end, ...) need ``init="fresh"`` (random init, seeded).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from edgeflow.compress.layers import family_of, finish_like
from edgeflow.compress.prune import prune_model, width_fields
from edgeflow.compress.reduce import cut, drop_layers, keep_flows
from edgeflow.core.errors import ConfigError
from edgeflow.models.base import count_parameters



def student_config(teacher, overrides: Dict[str, Any], what: str = "teacher"):
    """The teacher's config with ``overrides`` merged in (nested ``mel`` dicts too). Refuses unknown keys
    and students bigger than the teacher (ConfigError, one line; ``what`` names the teacher in it)."""
    fam = family_of(teacher)
    if not isinstance(overrides, dict):
        raise ConfigError(f"distill: student must be a mapping of config fields, got {type(overrides).__name__}")
    data = teacher.config.to_dict()
    for k, v in overrides.items():
        data[k] = dict(data[k], **v) if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    for derived, sources in fam.derived_fields.items():   # e.g. WaveFlow's row orders: keep_flows sets them
        if derived not in overrides and any(k in overrides for k in sources):
            data[derived] = None
    try:
        cfg = type(teacher.config).from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"distill: invalid student config: {exc}") from None
    bigger = [f"{k} {getattr(cfg, k)} > {getattr(teacher.config, k)}" for k in fam.size_fields
              if getattr(cfg, k) > getattr(teacher.config, k)]
    if bigger:
        raise ConfigError(f"distill: the student is bigger than the {what} ({', '.join(bigger)})")
    with torch.random.fork_rng():
        n_student = count_parameters(fam.build(cfg))
    if n_student > count_parameters(teacher):
        raise ConfigError(f"distill: the student has more parameters than the {what} "
                          f"({n_student} > {count_parameters(teacher)})")
    return cfg


def make_student(teacher, overrides: Dict[str, Any], init: str = "teacher", seed: int = 0,
                 batches: Optional[Sequence] = None) -> Tuple[Any, Dict[str, Any]]:
    """Build the student described by ``overrides`` (see the module docstring).

    Args:
        teacher: the model to start from (left untouched).
        overrides: config fields to change, e.g. {"channels": 16, "n_flows": 4}.
        init: "teacher" (carry weights over where possible) or "fresh" (seeded random init).
        batches: (audio, mel) batches for the pruning scores (None: weight-only scores).

    Returns:
        (student model, info of the steps taken).
    """
    if init not in ("teacher", "fresh"):
        raise ConfigError(f"distill: init must be 'teacher' or 'fresh', got {init!r}")
    cfg = student_config(teacher, overrides)
    fam = family_of(teacher)
    if init == "fresh":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            student = fam.build(cfg)
        return finish_like(student.to(next(teacher.parameters()).dtype), teacher), {"init": "fresh"}
    tc = teacher.config
    other = [k for k in overrides if k not in fam.size_fields + fam.free_fields
             and getattr(cfg, k) != getattr(tc, k)]
    if other:
        raise ConfigError(f"distill: cannot carry the teacher's weights over a change of {', '.join(other)}; "
                          f"set init='fresh'")
    cuttable = {fam.flows_field, fam.layers_field, *fam.extra_cuts, *(fam.width.fields if fam.width else ())}
    uncut = [k for k in fam.size_fields if k not in cuttable and getattr(cfg, k) != getattr(tc, k)]
    if uncut:
        raise ConfigError(f"distill: the {fam.name} family cannot carry the teacher's weights over a change of "
                          f"{', '.join(uncut)}; set init='fresh'")
    import copy

    model, steps = copy.deepcopy(teacher), []

    def smaller(k):
        return k is not None and getattr(cfg, k) < getattr(tc, k)

    if smaller(fam.flows_field):
        model, info = keep_flows(model, getattr(cfg, fam.flows_field))
        steps.append({"keep_flows": info})
    for field in fam.extra_cuts:
        if smaller(field):
            model, info = cut(model, field, getattr(cfg, field))
            steps.append({f"set_{field}": info})
    if smaller(fam.layers_field):
        model, info = drop_layers(model, getattr(cfg, fam.layers_field))
        steps.append({"drop_layers": info})
    if fam.width is not None and smaller(fam.width.fields[0]):
        model, info = prune_model(model, channels=getattr(cfg, fam.width.fields[0]), batches=batches)
        steps.append({"prune": {k: v for k, v in info.items() if k != "kept"}})
    free = {k: getattr(cfg, k) for k in fam.free_fields if getattr(cfg, k) != getattr(model.config, k)}
    if free:
        model.config = model.config.replace(**free)
    return model, {"init": "teacher", "steps": steps}


def fit_target(teacher, target: Dict[str, Any], bytes_per_param: int = 4) -> Dict[str, Any]:
    """Student overrides that make the model fit the target's ``constraints.max_bundle_mb`` (float32
    weights assumed), by narrowing the conditioning nets; {} when it already fits or has no limit."""
    limit = (target or {}).get("constraints", {}).get("max_bundle_mb")
    if not limit or count_parameters(teacher) * bytes_per_param <= limit * 1e6:
        return {}
    fam = family_of(teacher)
    fields = width_fields(teacher)
    c = getattr(teacher.config, fields[0])
    while c > 1:
        c = max(1, int(c * 0.875))
        with torch.random.fork_rng():
            n = count_parameters(fam.build(teacher.config.replace(**{f: c for f in fields})))
        if n * bytes_per_param <= limit * 1e6:
            return {f: c for f in fields}
    raise ConfigError(f"distill: no {fields[0]} makes the model fit the target's {limit} MB")

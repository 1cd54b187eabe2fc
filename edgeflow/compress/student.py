"""Students for distillation: a teacher config with overrides, size checks, fitting a target's limits.

A student is initialised from the teacher where its config allows it (fewer flows -> :func:`keep_flows`,
lower height -> :func:`set_height`, fewer layers -> :func:`drop_layers`, fewer channels ->
:func:`prune_model`), which starts distillation close to the teacher; other changes (kernel size,
front-end, ...) need ``init="fresh"`` (random init, seeded).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from edgeflow.compress.layers import family_of, finish_like
from edgeflow.compress.prune import prune_model
from edgeflow.compress.reduce import drop_layers, keep_flows, set_height
from edgeflow.core.errors import ConfigError
from edgeflow.models.base import build_model, count_parameters

#: Config fields that size a model: a student may not exceed the teacher in any of them.
SIZE_FIELDS = {"waveflow": ("n_flows", "n_layers", "channels", "height"),
               "waveglow": ("n_flows", "wn_layers", "wn_channels")}
#: Fields a student may change freely (no effect on weights).
FREE_FIELDS = ("sigma_infer", "sigma_train")


def student_config(teacher, overrides: Dict[str, Any], what: str = "teacher"):
    """The teacher's config with ``overrides`` merged in (nested ``mel`` dicts too). Refuses unknown keys
    and students bigger than the teacher (ConfigError, one line; ``what`` names the teacher in it)."""
    fam = family_of(teacher)
    if not isinstance(overrides, dict):
        raise ConfigError(f"distill: student must be a mapping of config fields, got {type(overrides).__name__}")
    data = teacher.config.to_dict()
    for k, v in overrides.items():
        data[k] = dict(data[k], **v) if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    if fam == "waveflow" and ("n_flows" in overrides or "height" in overrides) and "row_orders" not in overrides:
        data["row_orders"] = None        # reduce_flows carries the kept flows' orders over itself
    try:
        cfg = type(teacher.config).from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"distill: invalid student config: {exc}") from None
    bigger = [f"{k} {getattr(cfg, k)} > {getattr(teacher.config, k)}" for k in SIZE_FIELDS[fam]
              if getattr(cfg, k) > getattr(teacher.config, k)]
    if bigger:
        raise ConfigError(f"distill: the student is bigger than the {what} ({', '.join(bigger)})")
    with torch.random.fork_rng():
        n_student = count_parameters(build_model(fam, cfg))
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
            student = build_model(fam, cfg)
        return finish_like(student.to(next(teacher.parameters()).dtype), teacher), {"init": "fresh"}
    tc = teacher.config
    other = [k for k in overrides if k not in SIZE_FIELDS[fam] + FREE_FIELDS
             and getattr(cfg, k) != getattr(tc, k)]
    if other:
        raise ConfigError(f"distill: cannot carry the teacher's weights over a change of {', '.join(other)}; "
                          f"set init='fresh'")
    import copy

    model, steps = copy.deepcopy(teacher), []
    if cfg.n_flows < tc.n_flows:
        model, info = keep_flows(model, cfg.n_flows)
        steps.append({"keep_flows": info})
    if fam == "waveflow" and cfg.height < tc.height:
        model, info = set_height(model, cfg.height)
        steps.append({"set_height": info})
    layers = "n_layers" if fam == "waveflow" else "wn_layers"
    if getattr(cfg, layers) < getattr(tc, layers):
        model, info = drop_layers(model, getattr(cfg, layers))
        steps.append({"drop_layers": info})
    width = "channels" if fam == "waveflow" else "wn_channels"
    if getattr(cfg, width) < getattr(tc, width):
        model, info = prune_model(model, channels=getattr(cfg, width), batches=batches)
        steps.append({"prune": {k: v for k, v in info.items() if k != "kept"}})
    free = {k: getattr(cfg, k) for k in FREE_FIELDS if getattr(cfg, k) != getattr(model.config, k)}
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
    width = "channels" if fam == "waveflow" else "wn_channels"
    c = getattr(teacher.config, width)
    while c > 1:
        c = max(1, int(c * 0.875))
        with torch.random.fork_rng():
            n = count_parameters(build_model(fam, teacher.config.replace(**{width: c})))
        if n * bytes_per_param <= limit * 1e6:
            return {width: c}
    raise ConfigError(f"distill: no {width} makes the model fit the target's {limit} MB")

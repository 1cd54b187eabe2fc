"""Fewer flows, fewer layers, other family cuts (WaveFlow's height): a smaller model carrying over the
teacher's weights, through the family's declared cuts (:class:`edgeflow.models.family.Family`).

* flows (``flows_field``): the family chooses which flows a keep mode keeps (``spread``, ``last``, ``first``;
  WaveGlow within each stage between early outputs) and :meth:`~Family.keep_flows` copies them;
* layers (``layers_field``): :meth:`~Family.drop_layers` keeps each flow's first L' layers;
* other cuts (``extra_cuts``, e.g. WaveFlow ``height``): :meth:`~Family.cut`.

Every result is an exact flow (invertible, exact logdet); quality is recovered by distillation.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from edgeflow.compress.layers import family_of, finish_like
from edgeflow.core.errors import ConfigError

KEEP_MODES = ("spread", "last", "first")


def pick(n: int, k: int, mode: str = "spread") -> List[int]:
    """Indices of the k of n items to keep: ``spread`` (evenly, both ends kept), ``last`` or ``first``."""
    if mode not in KEEP_MODES:
        raise ConfigError(f"reduce_flows: keep must be one of {', '.join(KEEP_MODES)}, got {mode!r}")
    if mode == "first":
        return list(range(k))
    if mode == "last" or k == 1:
        return list(range(n - k, n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def flow_counts(model) -> List[int]:
    """The flow counts :func:`keep_flows` accepts for this model."""
    return family_of(model).flow_counts(model.config)


def count_for_fraction(model, fraction: float) -> int:
    """The accepted flow count nearest to ``fraction * n_flows`` (ties: the larger), at least 1."""
    fam = family_of(model)
    if fam.flows_field is None:
        raise ConfigError(f"reduce_flows: the {fam.name} family has no flow stack to cut")
    want = max(1.0, fraction * getattr(model.config, fam.flows_field))
    return min(flow_counts(model), key=lambda k: (abs(k - want), -k))


def keep_flows(model, n_flows: int, keep: str = "spread") -> Tuple[Any, Dict[str, Any]]:
    """A model with ``n_flows`` of the model's flows (weights carried over). Returns (model, info)."""
    fam = family_of(model)
    if fam.flows_field is None:
        raise ConfigError(f"reduce_flows: the {fam.name} family has no flow stack to cut")
    n = getattr(model.config, fam.flows_field)
    if not 1 <= n_flows <= n:
        raise ConfigError(f"reduce_flows: {fam.flows_field} must be in [1, {n}], got {n_flows}")
    if n_flows == n:
        return model, {"kept": list(range(n))}
    idx = fam.choose_flows(model.config, n_flows, lambda total, k: pick(total, k, keep))
    new, info = fam.keep_flows(model, idx)
    return finish_like(new, model), info


def cut(model, field: str, value: Any) -> Tuple[Any, Dict[str, Any]]:
    """Reduce one of the family's ``extra_cuts`` fields (e.g. WaveFlow ``height``). Returns (model, info)."""
    fam = family_of(model)
    if field not in fam.extra_cuts:
        raise ConfigError(f"reduce_flows: {field} cannot be reduced on a {fam.name} model "
                          f"(it reduces: {', '.join(fam.extra_cuts) or 'nothing besides flows and layers'})")
    if value == getattr(model.config, field):
        return model, {field: value}
    new, info = fam.cut(model, field, value)
    return finish_like(new, model), info


def set_height(model, height: int) -> Tuple[Any, Dict[str, Any]]:
    """WaveFlow with a smaller height h (re-folded; weights reused; row orders recomputed)."""
    return cut(model, "height", height)


def drop_layers(model, n_layers: int) -> Tuple[Any, Dict[str, Any]]:
    """Each flow keeps its first ``n_layers`` layers (the family rescales what the skip sum needs)."""
    fam = family_of(model)
    key = fam.layers_field
    if key is None:
        raise ConfigError(f"the {fam.name} family has no layer stack to cut")
    L = getattr(model.config, key)
    if not 1 <= n_layers <= L:
        raise ConfigError(f"student {key} must be in [1, {L}], got {n_layers}")
    if n_layers == L:
        return model, {key: L}
    new, info = fam.drop_layers(model, n_layers)
    return finish_like(new, model), info

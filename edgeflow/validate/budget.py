"""Quality budgets: how far each metric may fall below the unoptimized model's (metrics: :mod:`.table`)."""

from __future__ import annotations

import math
from typing import Dict

from edgeflow.core.errors import ConfigError
from edgeflow.validate.table import BUDGET_METRICS, TABLE

#: metric -> True if higher is better. Budgets are absolute allowed drops in the metric's unit.
DIRECTION = {k: TABLE[k].higher_is_better for k in BUDGET_METRICS}


def parse_budget(text: str | Dict[str, float] | None) -> Dict[str, float]:
    """Parse ``"pesq=0.1,mel_l1=0.25"`` into {metric: allowed drop}.

    Raises:
        ConfigError: unknown metric, missing '=', non-numeric or negative value.
    """
    if text is None:
        return {}
    if isinstance(text, dict):
        items = list(text.items())
    else:
        items = []
        for part in [p.strip() for p in str(text).split(",") if p.strip()]:
            if "=" not in part:
                raise ConfigError(f"budget {text!r}: expected METRIC=VALUE pairs, got {part!r}")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
        if not items:
            raise ConfigError(f"budget {text!r} is empty")
    out = {}
    for k, v in items:
        if k not in DIRECTION:
            raise ConfigError(f"budget: unknown metric {k!r} (known: {', '.join(sorted(DIRECTION))})")
        try:
            val = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"budget: {k}={v!r} is not a number") from None
        if not val >= 0:
            raise ConfigError(f"budget: {k} must be >= 0, got {v}")
        out[k] = val
    return out


def budget_violations(reference: Dict[str, float], current: Dict[str, float],
                      budget: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """Metrics whose drop from ``reference`` exceeds the budget: {metric: {reference, current, drop, allowed}}.

    A budgeted metric missing from either side (or not finite) is never skipped: it is a violation with
    ``drop`` None and a ``reason``, since a budget nobody checked has not held.
    """
    bad = {}
    for metric, allowed in budget.items():
        ref, cur = reference.get(metric), current.get(metric)
        missing = [side for side, v in (("reference", ref), ("current", cur))
                   if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if missing:
            bad[metric] = {"reference": ref, "current": cur, "drop": None, "allowed": allowed,
                           "reason": f"not scored on the {' and '.join(missing)} output"}
            continue
        ref, cur = float(ref), float(cur)
        drop = ref - cur if DIRECTION[metric] else cur - ref
        if drop > allowed + 1e-12:
            bad[metric] = {"reference": ref, "current": cur, "drop": drop, "allowed": allowed}
    return bad


def describe(budget: Dict[str, float]) -> str:
    """The budget in words, e.g. ``"pesq may fall by 0.1, mel_l1 may rise by 0.25 nats"`` ("none" if empty)."""
    parts = []
    for k, v in budget.items():
        m = TABLE[k]
        parts.append(f"{k} may {'fall' if m.higher_is_better else 'rise'} by {v:g}{(' ' + m.unit) if m.unit else ''}")
    return ", ".join(parts) or "none"


def describe_violation(metric: str, v: Dict[str, object]) -> str:
    """One violation in words."""
    if v.get("drop") is None:
        return f"{metric} {v.get('reason', 'not scored')}"
    return f"{metric} drop {v['drop']:.3f} > {v['allowed']}"

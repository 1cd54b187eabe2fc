"""Quality budgets: how far each metric may fall below the unoptimized model's."""

from __future__ import annotations

from typing import Dict

from edgeflow.core.errors import ConfigError

#: metric -> True if higher is better. Budgets are absolute allowed drops in the metric's unit.
DIRECTION = {"pesq": True, "stoi": True, "dnsmos": True,
             "mel_l1": False, "mr_stft": False, "mcd": False, "lsd": False, "wer": False}


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
    """Metrics whose drop from ``reference`` exceeds the budget: {metric: {reference, current, drop, allowed}}."""
    bad = {}
    for metric, allowed in budget.items():
        if metric not in reference or metric not in current:
            continue
        ref, cur = float(reference[metric]), float(current[metric])
        drop = ref - cur if DIRECTION[metric] else cur - ref
        if drop > allowed + 1e-12:
            bad[metric] = {"reference": ref, "current": cur, "drop": drop, "allowed": allowed}
    return bad

"""Target profiles (data files ``<name>.json`` beside this module): backend, precisions, threads,
the device's peak throughput and memory bandwidth (for roofline estimates), constraints, and the
passes of each recipe (``quality``, ``balanced``, ``fast``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from edgeflow.core.errors import ConfigError

TARGET_DIR = Path(__file__).resolve().parent


def list_targets() -> List[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.json"))


def load_target(name: str) -> Dict[str, Any]:
    """The profile of target ``name``, or of a target JSON file at that path (a custom device).

    Raises:
        ConfigError: unknown name (the known ones are listed), unreadable file, or no recipes.
    """
    path = TARGET_DIR / f"{name}.json"
    if not path.is_file():
        if str(name).endswith(".json") and Path(name).is_file():
            path = Path(name)
        else:
            raise ConfigError(f"unknown target {name!r} (known: {', '.join(list_targets())}, or a JSON file)")
    try:
        target = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"target file {path}: {exc}") from None
    if not isinstance(target, dict) or not isinstance(target.get("recipes"), dict):
        raise ConfigError(f"target file {path}: no 'recipes' mapping")
    target.setdefault("name", path.stem)
    return target


def recipe_passes(target: Dict[str, Any], recipe: str | None) -> List[Dict[str, Any]]:
    """The pass list of ``recipe`` (default: the target's default recipe) as [{"pass": name, ...options}]."""
    recipe = recipe or target.get("default_recipe", "balanced")
    recipes = target.get("recipes", {})
    if recipe not in recipes:
        raise ConfigError(f"unknown recipe {recipe!r} for target {target['name']} (known: {', '.join(recipes)})")
    return [dict(p) for p in recipes[recipe]]


def roofline_rtf(flops_per_audio_s: float, bytes_per_audio_s: float, target: Dict[str, Any],
                 precision: str = "float32") -> Dict[str, Any] | None:
    """Roofline *estimate* of a target's real-time factor: max(compute time, memory time) per audio second.

    Returns None when the profile has no peak figures (e.g. the CPU target, measured instead).
    """
    peak = target.get("peak", {})
    key = {"int8": "int8_tops", "float16": "fp16_tflops"}.get(precision, "fp32_tflops")
    if key not in peak or "memory_bandwidth_gbs" not in peak:
        return None
    compute_s = flops_per_audio_s / (peak[key] * 1e12)
    memory_s = bytes_per_audio_s / (peak["memory_bandwidth_gbs"] * 1e9)
    return {"rtf_estimate": max(compute_s, memory_s), "compute_bound": compute_s >= memory_s,
            "peak_used": f"{peak[key]} {'TOPS' if precision == 'int8' else 'TFLOPS'} ({precision}), "
                         f"{peak['memory_bandwidth_gbs']} GB/s",
            "label": "estimate (roofline: peak throughput and bandwidth, no measured efficiency)"}

"""Target profiles (package data ``<name>.json`` beside this module, read with :mod:`importlib.resources`):
backend, precisions, threads, the device's peak throughput and memory bandwidth (for roofline estimates),
constraints, and the passes of each recipe (``quality``, ``balanced``, ``fast``).

A profile's ``recipes`` are written for flow vocoders (they cut flows, layers and channels). A model family
with other needs gets its own section ``families.<name>`` (``description``, ``default_recipe``,
``default_budget``, ``recipe_budgets``, ``recipes``), which :func:`for_family` lays over the profile; voices use
the ``recipes_tts`` table (:mod:`edgeflow.pipeline_tts`). A recipe may carry its own budget
(``recipe_budgets.<recipe>``, ``recipe_budgets_tts.<recipe>`` for voices): a ``fast`` recipe is allowed to lose
more than ``balanced``; :func:`recipe_budget` picks it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List

from edgeflow.core.errors import ConfigError

#: keys a ``families.<name>`` section may set (laid over the profile by :func:`for_family`).
FAMILY_KEYS = ("description", "default_recipe", "default_budget", "recipe_budgets", "recipes")


def list_targets() -> List[str]:
    """Names of the shipped target profiles, sorted."""
    return sorted(f.name[:-5] for f in resources.files(__name__).iterdir() if f.name.endswith(".json"))


def load_target(name: str) -> Dict[str, Any]:
    """The profile of target ``name``, or of a target JSON file at that path (a custom device).

    Raises:
        ConfigError: unknown name (the known ones are listed), unreadable file, or no recipes.
    """
    shipped = str(name) in list_targets()
    path = resources.files(__name__) / f"{name}.json" if shipped else Path(name)
    if not shipped and not (str(name).endswith(".json") and path.is_file()):
        raise ConfigError(f"unknown target {name!r} (known: {', '.join(list_targets())}, or a JSON file)")
    try:
        target = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"target file {path}: {exc}") from None
    if not isinstance(target, dict) or not isinstance(target.get("recipes"), dict):
        raise ConfigError(f"target file {path}: no 'recipes' mapping")
    target.setdefault("name", path.name[:-5] if path.name.endswith(".json") else path.name)
    return target


def for_family(target: Dict[str, Any], family: str) -> Dict[str, Any]:
    """The profile as seen by a model of ``family``: its ``families.<family>`` section (if any) laid over the
    profile (recipes, default recipe and budget, description), with ``family`` recorded.

    Raises:
        ConfigError: a malformed section (not a mapping, unknown keys, or no recipes mapping).
    """
    section = (target.get("families") or {}).get(family)
    if section is None:
        return target
    if not isinstance(section, dict) or not isinstance(section.get("recipes"), dict) or set(section) - set(FAMILY_KEYS):
        raise ConfigError(f"target {target.get('name')}: families.{family} must be a mapping with 'recipes' "
                          f"(allowed keys: {', '.join(FAMILY_KEYS)})")
    return dict(target, **section, family=family)


def recipe_passes(target: Dict[str, Any], recipe: str | None) -> List[Dict[str, Any]]:
    """The pass list of ``recipe`` (default: the target's default recipe) as [{"pass": name, ...options}]."""
    recipe = recipe or target.get("default_recipe", "balanced")
    recipes = target.get("recipes", {})
    if recipe not in recipes:
        whose = f" and the {target['family']} family" if target.get("family") else ""
        raise ConfigError(f"unknown recipe {recipe!r} for target {target['name']}{whose} "
                          f"(known: {', '.join(recipes)})")
    return [dict(p) for p in recipes[recipe]]


def task_recipe(target: Dict[str, Any], task: str, recipe: str | None, what: str,
                fallback: str) -> tuple[str, List[Dict[str, Any]]]:
    """(name, pass list) of a recipe from the target's ``recipes_<task>`` table (voices: ``tts``, flow-matching
    voices: ``fmtts``); default: ``default_recipe_<task>``, else ``fallback``. ``what`` names the models in
    messages ("text-to-speech", "flow-matching TTS").

    Raises:
        ConfigError: the target has no such table, or the recipe is not in it.
    """
    table = target.get(f"recipes_{task}")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"target {target['name']} has no {what} recipes (recipes_{task})")
    name = recipe or target.get(f"default_recipe_{task}") or fallback
    if name not in table:
        raise ConfigError(f"unknown recipe {name!r} for a {what} model on target {target['name']} "
                          f"(known: {', '.join(table)})")
    return name, [dict(p) for p in table[name]]


def recipe_budget(target: Dict[str, Any], recipe: str | None, tts: bool = False, fallback: Any = None) -> Any:
    """The budget a recipe is gated on: ``recipe_budgets[_tts].<recipe>``, else ``default_budget[_tts]``.

    Args:
        target: a profile (after :func:`for_family` for a vocoder family).
        recipe: the recipe's name (None: the profile's default recipe).
        tts: voices (``*_tts`` keys) rather than vocoders.
        fallback: the budget when the profile names none.

    Returns:
        A budget as the profile writes it (``"wer=0.03,..."`` or {metric: drop}), for
        :func:`edgeflow.validate.budget.parse_budget`.
    """
    suffix = "_tts" if tts else ""
    name = recipe or target.get("default_recipe" + suffix)
    own = (target.get("recipe_budgets" + suffix) or {}).get(name)
    return own if own is not None else target.get("default_budget" + suffix, fallback)


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

"""Target profiles: every shipped recipe parses into pass configs, every budget parses, and a recipe's own
budget (``recipe_budgets`` / ``recipe_budgets_tts``) wins over the profile's default."""

from __future__ import annotations

import pytest

from edgeflow.passes.base import make_config
from edgeflow.targets import for_family, list_targets, load_target, recipe_budget
from edgeflow.validate.budget import parse_budget

TARGETS = list_targets()


@pytest.mark.parametrize("name", TARGETS)
def test_every_shipped_recipe_and_budget_parses(name):
    tgt = load_target(name)
    tables = [tgt["recipes"], tgt.get("recipes_tts", {})]
    tables += [sec["recipes"] for sec in tgt.get("families", {}).values()]
    n = 0
    for table in tables:
        for recipe, passes in table.items():
            for spec in passes:
                spec = dict(spec)
                make_config(spec.pop("pass"), spec)           # raises on an unknown pass or option
                n += 1
    assert n >= 10
    for tts in (False, True):
        for recipe in tgt.get("recipes_tts" if tts else "recipes", {}):
            assert parse_budget(recipe_budget(tgt, recipe, tts))
    for fam in tgt.get("families", {}):
        t = for_family(tgt, fam)
        for recipe in t["recipes"]:
            assert parse_budget(recipe_budget(t, recipe))


def test_recipe_budget_prefers_the_recipes_own():
    tgt = {"default_recipe": "balanced", "default_budget": "pesq=0.1", "recipe_budgets": {"fast": "pesq=0.3"},
           "default_recipe_tts": "balanced", "default_budget_tts": "wer=0.03",
           "recipe_budgets_tts": {"fast": "wer=0.05,dnsmos=0.3"}}
    assert recipe_budget(tgt, "fast") == "pesq=0.3" and recipe_budget(tgt, "balanced") == "pesq=0.1"
    assert recipe_budget(tgt, None) == "pesq=0.1"
    assert recipe_budget(tgt, "fast", tts=True) == "wer=0.05,dnsmos=0.3"
    assert recipe_budget(tgt, "quality", tts=True) == "wer=0.03"
    assert recipe_budget({}, "fast", tts=True, fallback="mcd=1") == "mcd=1"
    fam = for_family(dict(tgt, families={"x": {"recipes": {"fast": []}, "recipe_budgets": {"fast": "dnsmos=0.3"}}}),
                     "x")
    assert recipe_budget(fam, "fast") == "dnsmos=0.3"

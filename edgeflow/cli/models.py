"""``edgeflow models``: list the zoo (recipes and bundled checkpoints) with parameter counts."""

from __future__ import annotations

import json


def add_arguments(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo (recipes, bundled checkpoints) with parameter counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def zoo() -> list:
    """One entry per shipped recipe (package data, :func:`edgeflow.train.recipe.recipe_names`) and per
    model.pt under ``models/*/`` of the working directory (the checkpoints of a source checkout)."""
    from pathlib import Path

    import torch

    from edgeflow.models.base import build_model, count_parameters
    from edgeflow.train.recipe import load_recipe, recipe_names, recipe_resource

    entries = []
    for name in recipe_names():
        recipe, res = load_recipe(name), recipe_resource(name)
        with torch.device("meta"):
            n = count_parameters(build_model(recipe.family, recipe.model))
        data = json.loads(res.read_text(encoding="utf-8"))
        entries.append({"name": recipe.name or name, "kind": "recipe", "family": recipe.family,
                        "parameters": n, "path": str(res), "paper": data.get("paper", ""),
                        "description": data.get("description", "")})
    for path in sorted(Path("models").glob("*/model.pt")):
        from edgeflow.models.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path)
        n = sum(v.numel() for k, v in ckpt["state_dict"].items() if torch.is_floating_point(v)
                and not k.endswith(("perm", "sign_s", "lower_mask")))
        entries.append({"name": path.parent.name, "kind": "checkpoint", "family": ckpt["family"],
                        "parameters": n, "path": str(path), "size_bytes": path.stat().st_size,
                        "card": str(path.parent / "README.md")})
    return entries


def run(args) -> int:
    entries = zoo()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    print(f"{'name':<18} {'kind':<11} {'family':<9} {'parameters':>12}  path")
    for e in entries:
        print(f"{e['name']:<18} {e['kind']:<11} {e['family']:<9} {e['parameters']:>12,}  {e['path']}")
    return 0

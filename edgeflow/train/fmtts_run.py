"""Command line and recipe loading of fmtts training (until ``edgeflow train`` knows the family).

    python -m edgeflow.train.fmtts_run RECIPE --data CORPUS --out RUN [--resume] [--steps N] [--threads T]
        [--set KEY=JSON ...]

RECIPE: a shipped recipe name (``fm-tts-demo``) or a JSON path; ``--set`` overrides training settings
(``--set batch_size=8``; ``--set init=MODEL.pt`` warm-starts a new run). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

from edgeflow.core.errors import ConfigError, EdgeflowError
from edgeflow.models.fmtts.config import FmTtsConfig
from edgeflow.train.fmtts import FmTtsTrainConfig
from edgeflow.train.recipe import Recipe, recipe_names, recipe_resource


def load_fmtts_recipe(name_or_path: str | Path, overrides: Optional[Dict[str, object]] = None) -> Recipe:
    """An fmtts recipe from a path or a shipped name, training settings overridden by ``overrides``."""
    path = Path(name_or_path)
    res = path if path.is_file() else recipe_resource(str(name_or_path))
    if res is None:
        raise ConfigError(f"recipe not found: {name_or_path} (known: {', '.join(recipe_names())})")
    try:
        data = json.loads(res.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"recipe {res}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("family") != "fmtts":
        family = data.get("family") if isinstance(data, dict) else None
        raise ConfigError(f"recipe {res}: not an fmtts recipe (family {family!r})")
    unknown = sorted(set(data) - {"family", "name", "model", "train", "description", "paper"})
    if unknown:
        raise ConfigError(f"recipe {res}: unknown key(s) {', '.join(unknown)}")
    train = dict(data.get("train", {}), **(overrides or {}))
    name = data.get("name") or Path(res.name).stem
    return Recipe("fmtts", FmTtsConfig.from_dict(data.get("model", {})), FmTtsTrainConfig.from_dict(train), name)


def parse_sets(items: List[str]) -> Dict[str, object]:
    """``KEY=VALUE`` pairs, VALUE parsed as JSON when it parses (else a string)."""
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeflow.train.fmtts_run", description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--data", required=True, help="LJSpeech-layout corpus (edgeflow corpus build)")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--resume", action="store_true", help="continue from RUN/train_state.pt")
    ap.add_argument("--steps", type=int, default=None, help="run until this step (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train setting")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        import torch

        from edgeflow.train.fmtts_trainer import FmTtsTrainer

        torch.set_num_threads(max(1, args.threads))
        recipe = load_fmtts_recipe(args.recipe, parse_sets(args.set))
        trainer = FmTtsTrainer(recipe, args.data, args.out, progress=not args.no_progress,
                               log=lambda m: print(m, flush=True))
        summary = trainer.train(args.steps, resume=args.resume)
    except EdgeflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

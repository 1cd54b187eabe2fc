"""Recipes: a model family + its config + training settings, stored as JSON in ``models/recipes``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict

from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import ConfigError
from edgeflow.models.base import FAMILIES, VocoderConfig, config_from_dict

RECIPE_DIR = Path(__file__).resolve().parents[2] / "models" / "recipes"


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """Training settings.

    Attributes:
        steps: total optimizer steps.
        batch_size: segments per step (global, split across DDP ranks).
        segment_length: samples per training segment (a multiple of the model's length multiple).
        lr, lr_decay_every, lr_decay: Adam learning rate, multiplied by lr_decay every lr_decay_every steps.
        grad_clip: max gradient norm.
        seed: drives init and the batch of every step (exact resume).
        valid_every, ckpt_every, log_every: intervals in steps.
        valid_clips, valid_segment: validation NLL on this many valid clips, this many samples each.
        amp: float16 autocast + grad scaling (CUDA only).
    """

    steps: int = 10000
    batch_size: int = 8
    segment_length: int = 16384
    lr: float = 2e-4
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    grad_clip: float = 1.0
    seed: int = 0
    valid_every: int = 500
    ckpt_every: int = 200
    log_every: int = 10
    valid_clips: int = 8
    valid_segment: int = 16384
    amp: bool = False


@dataclasses.dataclass
class Recipe:
    """A family, its model config and the training config."""

    family: str
    model: VocoderConfig
    train: TrainConfig
    name: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"family": self.family, "name": self.name, "model": self.model.to_dict(),
                "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], name: str = "") -> "Recipe":
        if not isinstance(data, dict) or "family" not in data:
            raise ConfigError(f"recipe {name or ''}: needs a 'family' key".replace("  ", " "))
        unknown = sorted(set(data) - {"family", "name", "model", "train", "description", "paper"})
        if unknown:
            raise ConfigError(f"recipe {name}: unknown key(s) {', '.join(unknown)}")
        FAMILIES.get(data["family"])
        return cls(data["family"], config_from_dict(data["family"], data.get("model", {})),
                   TrainConfig.from_dict(data.get("train", {})), data.get("name", name))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by file path, or by name from ``models/recipes/NAME.json``."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.json"))) or "none"
        raise ConfigError(f"recipe not found: {name_or_path} (known: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"recipe {path}: invalid JSON ({exc})") from None
    return Recipe.from_dict(data, path.stem)

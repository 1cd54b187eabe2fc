"""Recipes: a model family + its config + training settings, stored as JSON package data in
:mod:`edgeflow.recipes` (read with :mod:`importlib.resources`, so an installed edgeflow finds them)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from importlib import resources
from typing import Any, Dict, List

from edgeflow.core.config import ConfigBase
from edgeflow.core.errors import ConfigError
from edgeflow.models.base import FAMILIES, VocoderConfig, config_from_dict

#: The package holding the shipped recipes (``<name>.json``).
RECIPE_PACKAGE = "edgeflow.recipes"


def recipe_names() -> List[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(f.name[:-5] for f in resources.files(RECIPE_PACKAGE).iterdir() if f.name.endswith(".json"))


def recipe_resource(name: str):
    """The shipped recipe ``name`` as an :mod:`importlib.resources` Traversable (``read_text()``; ``str()``
    is its path on disk for an ordinary install), or None if there is none."""
    if not name or "/" in name or "\\" in name:
        return None
    res = resources.files(RECIPE_PACKAGE) / f"{name}.json"
    return res if res.is_file() else None


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

    def __post_init__(self):
        """Types and ranges (a recipe or ``--set`` value out of range is refused before training)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            ok = (isinstance(value, bool) if kind is bool else
                  not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind))
            if not ok:
                raise ValueError(f"{f.name} must be {kind.__name__}, got {value!r}")
        at_least_one = ("steps", "batch_size", "segment_length", "log_every", "valid_clips", "valid_segment")
        low = [n for n in at_least_one if getattr(self, n) < 1]
        low += [n for n in ("lr_decay_every", "seed", "valid_every", "ckpt_every") if getattr(self, n) < 0]
        if low:
            raise ValueError(f"out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in low)} "
                             f"({', '.join(at_least_one)} >= 1; the other counts >= 0)")
        if not (0 < self.lr < 1e3 and 0 < self.lr_decay <= 1 and 0 < self.grad_clip < float("inf")):
            raise ValueError(f"need 0 < lr, 0 < lr_decay <= 1 and a finite grad_clip > 0, got lr={self.lr!r}, "
                             f"lr_decay={self.lr_decay!r}, grad_clip={self.grad_clip!r}")


#: families whose recipes carry more training settings: family -> "module:class" (imported on use).
TRAIN_CONFIGS: Dict[str, str] = {"vits": "edgeflow.train.vits:VitsTrainConfig",
                                  "fmtts": "edgeflow.train.fmtts:FmTtsTrainConfig",
                                  "vocos": "edgeflow.train.vocos:VocosTrainConfig"}


def train_config_cls(family: str) -> type:
    """The training-settings class of a family's recipes (:class:`TrainConfig` unless it has its own)."""
    if family not in TRAIN_CONFIGS:
        return TrainConfig
    import importlib

    module, name = TRAIN_CONFIGS[family].split(":")
    return getattr(importlib.import_module(module), name)


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
                   train_config_cls(data["family"]).from_dict(data.get("train", {})), data.get("name", name))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by file path, or by name from the shipped ones (:func:`recipe_names`)."""
    path = Path(name_or_path)
    res = path if path.is_file() else recipe_resource(str(name_or_path))
    if res is None:
        raise ConfigError(f"recipe not found: {name_or_path} (known: {', '.join(recipe_names()) or 'none'})")
    try:
        data = json.loads(res.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"recipe {res}: invalid JSON ({exc})") from None
    return Recipe.from_dict(data, res.name[:-5] if res.name.endswith(".json") else Path(res.name).stem)

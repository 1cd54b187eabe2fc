"""Config base: dataclasses that round-trip through plain dicts and refuse unknown keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Type, TypeVar

from edgeflow.core.errors import ConfigError

T = TypeVar("T", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base of every config dataclass.

    Subclasses are plain ``@dataclasses.dataclass`` classes of JSON-able fields
    (numbers, strings, bools, lists, nested ConfigBase). ``from_dict`` refuses unknown keys so a
    typo in a recipe is an error, not a silently ignored option.
    """

    def to_dict(self) -> Dict[str, Any]:
        """Return the config as a JSON-able dict (nested configs become dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
        """Build the config from a dict.

        Raises:
            ConfigError: on unknown keys, or a value that the dataclass rejects.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
        kwargs = {}
        for name, value in data.items():
            ftype = fields[name].type
            sub = _config_type(ftype)
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list) and _is_tuple(ftype):
                value = tuple(value)
            kwargs[name] = value
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None
        return obj

    def replace(self: T, **changes: Any) -> T:
        """Return a copy with some fields changed (validated like ``from_dict``)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls: Type[T], path: str | Path) -> T:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        return cls.from_dict(data)


def _config_type(ftype: Any):
    """Return the ConfigBase subclass named by a field type (class or string), else None."""
    if isinstance(ftype, type) and issubclass(ftype, ConfigBase):
        return ftype
    if isinstance(ftype, str):
        for sub in _all_subclasses(ConfigBase):
            if sub.__name__ == ftype:
                return sub
    return None


def _is_tuple(ftype: Any) -> bool:
    text = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    return str(text).lower().startswith("tuple")


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)

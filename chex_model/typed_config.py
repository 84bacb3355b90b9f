"""Typed configs from YAML: dataclasses are the schema, unknown keys are errors, not silently ignored."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass (message names the offending key)."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        args = typing.get_args(hint)
        if typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a mapping, got {type(value).__name__}")
            kwargs[key] = {k: v if isinstance(v, args[1]) else from_dict(args[1], v, f"{where}{key}.{k}.")
                           for k, v in value.items()}
            continue
        nested = next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}{key}.")
        elif hint in (int, float, bool, str) and not isinstance(value, hint):
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ConfigError(f"{where}{key}: expected {hint.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


BASE_KEY = "base"  # a YAML file may name another (path relative to it) and give only what differs


def load_config(cls: type[T], path: Path | None) -> T:
    """The dataclass defaults, overlaid with the YAML file when one is given (and with its ``base`` chain)."""
    if path is None:
        return cls()
    return from_dict(cls, read_yaml(Path(path)))


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its ``base:`` file merged under it: mappings merge key by key, lists of named entries
    (training stages) entry by entry by ``name``, anything else is replaced."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict) or BASE_KEY not in data:
        return data
    base = (path.parent / str(data.pop(BASE_KEY))).resolve()
    if base in seen or base == path.resolve():
        raise ConfigError(f"{path}: base {base} includes itself")
    return merge(read_yaml(base, (*seen, path.resolve())), data)


def merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in over.items()}}
    named = lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)  # noqa: E731
    if named(base) and named(over):
        by_name = {i["name"]: i for i in over}
        kept = [merge(i, by_name.pop(i["name"])) if i["name"] in by_name else i for i in base]
        return kept + list(by_name.values())
    return over

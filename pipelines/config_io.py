"""Typed dataclass configs from plain data (YAML) and back, with errors that name the field.

Used by the augmentation spec and by the training config, so both reject unknown keys and
wrong types the same way: ``ConfigError: <what> field 'optim.lr': expected a number, got 'x'``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value that is missing, unknown or of the wrong type; names the field."""


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and lists to dicts and lists (YAML-safe). A dataclass field whose
    metadata has ``omit_none`` is left out while it is None (an optional section that is off
    keeps the files written before it existed unchanged)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(cls: type, data: Any, what: str, error: type[ValueError] = ConfigError,
               prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data; missing keys keep their defaults."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(data, dict):
        raise error(f"{what} field '{where}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"{what} field '{prefix + str(unknown[0])}': unknown key "
                    f"(known keys: {', '.join(sorted(names))})")
    kwargs = {k: _convert(hints[k], v, prefix + k, what, error) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise error(f"{what} field '{where}': {e}") from None


def _convert(hint: Any, value: Any, name: str, what: str, error: type[ValueError]) -> Any:
    def fail(expected: str) -> typing.NoReturn:
        raise error(f"{what} field '{name}': expected {expected}, got {value!r}")

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            fail("a value")
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, name, what, error)
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value, what, error, name + ".")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            fail("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{name}[{i}]", what, error)
                         for i, v in enumerate(value))
        if len(value) != len(args):
            fail(f"{len(args)} values")
        return tuple(_convert(a, v, f"{name}[{i}]", what, error)
                     for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail("a finite number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if hint is str and not isinstance(value, str):
        fail("a string")
    return value


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error in one line (PyYAML's own message spans several, with a caret)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in recursively (new dict; inputs untouched)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict, overrides: list[str], what: str,
                    error: type[ValueError] = ConfigError) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to nested plain data."""
    out = to_plain(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise error(f"{what} override {item!r}: expected KEY=VALUE, e.g. optim.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise error(f"{what} field '{key}': '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = value
    return out

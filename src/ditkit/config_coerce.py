"""Typed coercion for the run config: a value from YAML, JSON or `--set key=value` checked against a
dataclass field's annotation, with the obvious spellings converted ("3e-4" for a float, "yes" for a bool,
"1,2" for a tuple); merging nested dicts of values into a config made of frozen dataclass sections, with
unknown keys named against the closest valid one; reading YAML/JSON config files. Errors are one line naming
the key and the expected type. Used by `ditkit.config` (which keeps every public name importable).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "coerce",
    "keys_of",
    "merge",
    "nested_overrides",
    "parse_scalar",
    "read_config_file",
    "split_override",
    "type_name",
    "unknown_key",
]


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} {type_name(args[0])}s"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


_BOOL_WORDS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the obvious spellings (a string "3e-4" for a
    float, a comma list for a tuple). Raises ValueError naming the key and the expected type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ValueError:
                pass
        raise ValueError(f"{key} expects {type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key} expects {type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{key} expects {type_name(tp)}, got {list(value)!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).strip().lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str | float) and not isinstance(value, bool):
            try:
                number = float(str(value).replace("_", ""))
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"{key} expects {type_name(tp)}, got {value!r}")


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set expects key=value (e.g. train.lr=3e-4), got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


# -- sections of dataclasses: keys, merging, overrides ---------------------------------------------------
def keys_of(sections: dict[str, type]) -> list[str]:
    """Every dotted key of a config made of `sections` (name -> frozen dataclass), plus "recipe"."""
    keys = ["recipe"]
    for name, cls in sections.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def unknown_key(key: str, origin: str, keys: list[str]) -> ValueError:
    """A one-line error for an unknown key, naming the closest valid one."""
    # Match on the whole dotted key, and on the leaf alone (`--set lr=1e-3` -> train.lr).
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        close = [leaves[near[0]]] if near else []
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
    return ValueError(f"{origin}: unknown config key {key!r}{hint}")


def merge(config: Any, data: dict[str, Any], sections: dict[str, type], *, origin: str) -> Any:
    """Apply a nested dict of values on top of `config` (a dataclass holding `sections`), strictly: unknown
    sections and keys, and values of the wrong type, are one-line errors naming the key."""
    changes: dict[str, Any] = {}
    for name, values in data.items():
        if name == "recipe":
            changes["recipe"] = coerce(values, str, "recipe")
            continue
        if name not in sections:
            raise unknown_key(str(name), origin, keys_of(sections))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{origin}: section {name!r} must be a mapping of keys, got {values!r}")
        section = getattr(config, name)
        hints = typing.get_type_hints(type(section))
        updates = {}
        for key, value in values.items():
            if key not in hints:
                raise unknown_key(f"{name}.{key}", origin, keys_of(sections))
            updates[key] = coerce(value, hints[key], f"{name}.{key}")
        changes[name] = dataclasses.replace(section, **updates)
    return dataclasses.replace(config, **changes)


def nested_overrides(overrides: list[str] | dict[str, Any], sections: dict[str, type]) -> dict[str, Any]:
    """`["train.lr=3e-4"]` (values parsed as YAML scalars) or {"train.lr": 3e-4} -> {"train": {"lr": ...}}."""
    items = overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    nested: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, str) and not isinstance(overrides, dict):
            value = parse_scalar(value)
        if key == "recipe":
            raise ValueError(
                "--set recipe=... is not an override; pass the recipe name as the CONFIG argument"
            )
        if "." not in key:
            raise unknown_key(key, "--set", keys_of(sections))
        section, leaf = key.split(".", 1)
        if section not in sections or "." in leaf:
            raise unknown_key(key, "--set", keys_of(sections))
        nested.setdefault(section, {})[leaf] = value
    return nested


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON config file, or a one-line error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections at the top level")
    return data

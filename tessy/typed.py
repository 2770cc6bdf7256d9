"""Dataclasses from YAML mappings, checked as they are built: types, ranges, choices, unknown keys.

A small loader of our own rather than pydantic: the configs are plain dataclasses whose fields
already carry their help text (the CLI reads it too), and the checks they need fit in field metadata:
- `min`, `max`: inclusive bounds; `gt`: a strict lower bound;
- `choices`: the allowed values;
- `kind: "url"`: a string (or each string of a list) that starts with http:// or https://.
Every error names the file (or the flag), the key and the bad value (`ConfigError`, a ValueError: the
CLI prints it and exits with status 2, without a traceback).

Every command builds its configs through `load`, whether the values come from a file, from flags or
from both, so the same checks apply on every way in. A field typed `dict[str, SomeDataclass]` (a
config's `profiles:`) has each of its entries built and checked the same way.

A field whose metadata says `flat: True` holds a dataclass whose keys a file writes beside its owner's
rather than as one mapping: a synth config's `student:` is one flat mapping of the role's model, endpoint
and turn (`build` splits it, `to_flat` writes it back).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the file, the key and the value."""


def read_yaml(path: str | Path) -> dict:
    """A YAML file that must hold a mapping; a syntax error names its line."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys to values, not a {type(data).__name__}")
    return data


def load(cls, data: dict, where: str, flags: dict | None = None, nested: dict | None = None):
    """An instance of dataclass `cls` from `data` (a config file's mapping, named `where` in errors),
    updated by `flags` (the command line; None values are not given). A flag's bad value is named by
    its flag (`--n is 0: ...`); `nested` maps field names to the dataclass their mapping builds, and
    a nested field's flags come as a mapping too. A required field that neither gives is an error."""
    data = dict(data)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if nested and key in nested:
            inner = {k: v for k, v in value.items() if v is not None}
            _check_flags(nested[key], inner)
            if inner and isinstance(data.get(key, {}), dict):  # else the file's own value is refused below
                data[key] = {**data.get(key, {}), **inner}
        else:
            _check_flags(cls, {key: value})
            data[key] = value
    _no_unknown_keys(cls, data, where)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
    if missing:
        raise ConfigError(f"{where}: needs {', '.join('--' + m.replace('_', '-') for m in missing)} "
                          "(on the command line or in the config file)")
    return build(cls, data, where, nested)


def _check_flags(cls, flags: dict) -> None:
    keys = flat_keys(cls)
    for key, value in flags.items():
        if key not in keys:
            raise ConfigError(f"unknown option --{key.replace('_', '-')}")
        f, hint = keys[key]
        check_value(value, hint, f.metadata, "--" + key.replace("_", "-"))


def flat_keys(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    """{key: (field, type hint)} of the keys a file writes for dataclass `cls`, in field order: a
    `flat` field's dataclass gives its own keys in place of the field's."""
    hints = typing.get_type_hints(cls)
    keys: dict = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flat"):
            keys.update(flat_keys(hints[f.name]))
        else:
            keys[f.name] = (f, hints[f.name])
    return keys


def to_flat(obj, leave_out=lambda f: False):
    """`obj` as plain data, as `dataclasses.asdict` gives it but with `flat` fields' keys beside their
    owner's, and without the fields for which `leave_out(field)` is true (a whole flat part among them)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict = {}
        for f in dataclasses.fields(obj):
            if leave_out(f):
                continue
            value = to_flat(getattr(obj, f.name), leave_out)
            if f.metadata.get("flat"):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, dict):
        return {k: to_flat(v, leave_out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_flat(v, leave_out) for v in obj)
    return obj


def _no_unknown_keys(cls, data: dict, where: str, prefix: str = "") -> None:
    fields = list(flat_keys(cls))
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {prefix}{close[0]!r}?" if close else f"; known: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key {prefix}{key!r}{hint}")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def build(cls, data, where: str, nested: dict | None = None, prefix: str = ""):
    """An instance of dataclass `cls` from `data`; `nested` maps field names to the dataclass their
    mapping builds (`{"student": RoleConfig}`). Errors read `{where}: {prefix}{key} ...`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping of keys to values, "
                          f"not {_show(data)}")
    _no_unknown_keys(cls, data, where, prefix)
    hints = typing.get_type_hints(cls)
    parts = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("flat")}
    if parts:  # each flat part built from its own keys, with the owner's prefix
        data = dict(data)
        for name, part in parts.items():
            mine = {key: data.pop(key) for key in flat_keys(part) if key in data}
            data[name] = build(part, mine, where, None, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [name for name, f in fields.items() if name not in data and _required(f)]
    if missing:
        raise ConfigError(f"{where}: needs {', '.join(prefix + m for m in missing)}")
    kwargs = {}
    for key, value in data.items():
        if nested and key in nested:
            kwargs[key] = build(nested[key], value, where, None, f"{prefix}{key}.")
        else:
            kwargs[key] = check_value(value, hints[key], fields[key].metadata, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def check_value(value, hint, meta, where: str):
    """`value` as field type `hint` (ints widen to floats), within the field's metadata limits."""
    value = _typed(value, hint, where)
    if value is None:
        return value
    if "choices" in meta and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint_ = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where} is {value!r}: choose one of {', '.join(map(str, meta['choices']))}{hint_}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where} is {value!r}: it must be at least {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where} is {value!r}: it must be at most {meta['max']}")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{where} is {value!r}: it must be greater than {meta['gt']}")
    if meta.get("kind") == "url":
        for url in value if isinstance(value, list) else [value]:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: {url!r} is not a URL (http://host:port/v1)")
    return value


def _typed(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _typed(value, arg, where)
            except ConfigError:
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # the mapping's own error (an unknown key, a value out of range) says more
                continue
        raise ConfigError(f"{where} is {_show(value)}: expected {' or '.join(_name(a) for a in args)}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is typing.Any:
        return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list or hint is list:
        if isinstance(value, list):
            return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            if len(args) == 2 and dataclasses.is_dataclass(args[1]):  # each entry a checked dataclass
                return {k: v if isinstance(v, args[1]) else build(args[1], v, f"{where}.{k}")
                        for k, v in value.items()}
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):  # a mapping in a file: the nested dataclass, checked field by field
            return build(hint, value, where)
    else:
        return value
    raise ConfigError(f"{where} is {_show(value)}: expected {_name(hint)}")


def _name(hint) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is list or hint is list:
        args = typing.get_args(hint)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], _name(args[0]))}" if args else "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, (dict, list)) else type(value).__name__

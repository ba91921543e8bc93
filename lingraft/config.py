"""Typed configuration: YAML files and command-line overrides validated into dataclasses.

Every stage describes its parameters as a (possibly nested) dataclass. `build_config`
merges, in order, the dataclass defaults, a YAML file and `key.sub=value` overrides,
then checks every key and type *before* any work starts. Errors are one line and name
the offending key, e.g. ``pack.seq_len: expected int, got 'abc'``.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        names = [_type_name(o) for o in options if o is not type(None)]
        if type(None) in options:
            names.append("null")
        raise ConfigError(f"{key}: expected {' or '.join(names)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {list(get_args(tp))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and hasattr(tp, "from_string"):
            # A one-word shorthand, e.g. `--source corpus.jsonl` for SourceConfig(path=...).
            return _coerce(tp.from_string(value), tp, key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_mapping(tp, value, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, key): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):   # YAML 1.1 reads "4e-3" (no dot) as a string; Python reads it as a float
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"{prefix}{k}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}" if prefix and not str(exc).startswith(prefix) else str(exc)) from None
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (['a', 'b'], value), the value read as YAML."""
    if "=" not in text:
        raise ConfigError(f"{text}: override must look like key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"{text}: override has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    """Set tree[a][b]... = value, creating mappings on the way; a number indexes an existing list."""
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:depth]) or "(top)"
                raise ConfigError(f"{'.'.join(path)}: {where} is a list of {len(node)} items; "
                                  f"'{part}' is not an index into it")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {'.'.join(path[:depth])} is not a mapping")
        if last:
            node[part] = value
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is not None and not isinstance(child, (dict, list)):
            # Replacing the scalar would silently drop it (e.g. `--prompts f.jsonl` then
            # `--set prompts.0.limit=5` would lose the path).
            raise ConfigError(f"{'.'.join(path)}: {'.'.join(path[:depth + 1])} is already set to {child!r}, "
                              f"not a mapping; write the whole entry in a YAML config instead")
        if child is None:
            child = {}
            node[part] = child
        node = child


def preset_names() -> list[str]:
    """The presets shipped inside the package (configs/*.yaml, package `lingraft.configs`)."""
    return sorted(p.name.removesuffix(".yaml") for p in files("lingraft.configs").iterdir()
                  if p.name.endswith(".yaml"))


def _config_text(path: str | Path) -> str:
    """A config file's text; a bare name that is no file (``smoke``) is a shipped preset."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        name = str(path).removesuffix(".yaml")
        if "/" not in name and name in preset_names():
            return (files("lingraft.configs") / f"{name}.yaml").read_text(encoding="utf-8")
        raise ConfigError(f"{path}: config file not found (shipped presets, by name: {preset_names()})") from None


def load_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(_config_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return data


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    dotted: list[str] | tuple[str, ...] = (),
) -> T:
    """Defaults < YAML file < `overrides` (already-parsed values) < `dotted` ``a.b=v`` strings."""
    tree: dict = load_yaml(yaml_path) if yaml_path else {}
    for key, value in (overrides or {}).items():
        _set_path(tree, key.split("."), value)
    for text in dotted:
        path, value = parse_override(text)
        _set_path(tree, path, value)
    return _from_mapping(cls, tree)


def to_dict(cfg: Any) -> Any:
    """A JSON-able view of a config (Paths become strings)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def require(condition: bool, key: str, message: str) -> None:
    """Validation helper for `__post_init__`: raise a ConfigError naming `key`."""
    if not condition:
        raise ConfigError(f"{key}: {message}")

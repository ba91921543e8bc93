"""Typed configuration: YAML files and command-line overrides validated into dataclasses.

Every stage describes its parameters as a (possibly nested) dataclass. `build_config`
merges, in order, the dataclass defaults, a YAML file and `key.sub=value` overrides,
then checks every key and type *before* any work starts. Errors are one line and name
the offending key, e.g. ``pack.seq_len: expected int, got 'abc'``.

Conventions every config dataclass follows:

* **Required fields have no default.** Nothing else marks a field as required: no ``""``
  or ``[]`` sentinel checked in ``__post_init__``. A missing one is reported, before any
  work, as ``<key>: required key is missing`` (the CLI adds the flag to give). Where
  inheritance or field order needs it, the class is ``@dataclass(kw_only=True)``.
  ``__post_init__`` checks values (ranges, combinations, a field required only with
  another's value), never mere presence.
* **A local file or folder is typed `Path`** (an input), **or `OutputPath`** (something the
  stage writes). Something that may be a local path *or* a hub id (a model, a tokenizer, a
  hub dataset) is a `ModelRef` or `DatasetRef` (kept a `str`). Lists, optionals and
  nested dataclasses of these count as well. `path_fields` walks a config by these types:
  the pipeline hashes the contents of the inputs (and of refs that name local paths) in a
  stage's fingerprint, and never its outputs. A plain `str` is never taken for a path.
* A field whose ``metadata`` holds ``runtime_only: True`` says how a stage runs, not what it
  computes (e.g. train's ``launch``); the pipeline leaves it out of the fingerprint.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping, NamedTuple, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class _Role(str):
    """What an `Annotated` path-like type is: read by `path_fields`, ignored by coercion."""


OUTPUT = _Role("output")
LOCAL_OR_HUB = _Role("ref")
# Something the stage writes: never an input of its own fingerprint.
OutputPath = Annotated[Path, OUTPUT]
# A local folder or file, or a hub id (also NAME=SPEC, e.g. ``B=models/base``, and a GPT-2
# ``vocab.json,merges.txt`` pair): kept as written; hashed when it names local paths.
ModelRef = Annotated[str, LOCAL_OR_HUB]
DatasetRef = Annotated[str, LOCAL_OR_HUB]
RUNTIME_ONLY = "runtime_only"    # field metadata key: how a stage runs, not what it computes


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        return _type_name(get_args(tp)[0])
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *marks = get_args(tp)
        if LOCAL_OR_HUB in marks and value == "":
            raise ConfigError(f"{key}: expected a local path or a hub id, got ''")
        return _coerce(value, base, key)
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
        if isinstance(value, Path) or (isinstance(value, str) and value):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls, include_extras=True)
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


class PathField(NamedTuple):
    key: str           # dotted, as in error messages: ``sources[0].path``
    value: Any         # a Path, or the str of a ModelRef / DatasetRef
    role: str          # "input", "output" or "ref"


def path_fields(cfg: Any, prefix: str = "") -> Iterator[PathField]:
    """Every path-like value of a config, found through its field types (see the module docstring).

    Fields marked `RUNTIME_ONLY` are skipped: they are no part of what a stage computes."""
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        if not f.metadata.get(RUNTIME_ONLY):
            yield from _walk(getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}")


def _walk(value: Any, tp: Any, key: str) -> Iterator[PathField]:
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        return
    if origin is Annotated:
        role = "output" if OUTPUT in args[1:] else "ref" if LOCAL_OR_HUB in args[1:] else None
        yield from [PathField(key, value, role)] if role else _walk(value, args[0], key)
    elif tp is Path:
        yield PathField(key, value, "input")
    elif origin in (Union, types.UnionType):
        option = next((o for o in args if _holds(value, o)), None)
        yield from _walk(value, option, key) if option is not None else ()
    elif dataclasses.is_dataclass(value):
        yield from path_fields(value, f"{key}.")
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            item_tp = args[i] if origin is tuple and args[-1] is not ... else args[0]
            yield from _walk(item, item_tp, f"{key}[{i}]")
    elif origin is dict and isinstance(value, Mapping):
        for k, item in value.items():
            yield from _walk(item, args[1], f"{key}.{k}")


def _holds(value: Any, tp: Any) -> bool:
    """Whether `value` is of union member `tp` (e.g. `str | TranslationResourceConfig`)."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    runtime = get_origin(tp) or tp
    if runtime is Path:      # a config built in code may hold a path as a str
        return isinstance(value, (str, Path))
    return tp is not type(None) and get_origin(tp) is not Literal and isinstance(runtime, type) \
        and isinstance(value, runtime)


def ref_paths(ref: str) -> list[Path]:
    """The existing local paths a ModelRef / DatasetRef names: itself, else the SPEC of NAME=SPEC,
    else each file of an ``A,B`` pair; none for a hub id."""
    if Path(ref).exists():
        return [Path(ref)]
    name, eq, spec = ref.partition("=")
    if eq and name and spec:
        return ref_paths(spec)
    return [Path(p) for p in ref.split(",") if p and Path(p).exists()] if "," in ref else []

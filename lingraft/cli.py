"""The `lingraft` console command: one subcommand per stage.

Each command is a `Command`: a typed config dataclass and a lazily imported runner.
Flags are generated from the dataclass's top-level fields (``seq_len`` -> ``--seq-len``);
nested keys are set with ``--set clean.min_chars=200``; ``--config file.yaml`` supplies a
base. Everything is validated into the dataclass before the runner is imported, so a
typo fails in milliseconds with a one-line error naming the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml

from lingraft.config import ConfigError, build_config
from lingraft.errors import LingraftError
from lingraft.registry import Command, all_commands, resolve_runner




def _is_list(tp: Any) -> bool:
    tp = _strip_optional(tp)
    return get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_textual(tp: Any) -> bool:
    tp = _strip_optional(tp)
    if _is_list(tp):
        (tp,) = get_args(tp)[:1] or (str,)
    return tp in (str, Path)


def _cli_value(raw: str, tp: Any) -> Any:
    """Strings stay strings for str/Path fields; anything else is read as YAML (5, 0.1, true, [a, b])."""
    if _is_textual(tp):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _required(f: dataclasses.Field) -> bool:
    """The config convention (lingraft.config): a required field is one without a default."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def add_config_flags(parser: argparse.ArgumentParser, cmd: Command) -> None:
    """`--config`, `--set KEY=VALUE` and one flag per top-level field of `cmd`'s config: the flags
    every `lingraft` command takes, also used by rank entry points (`lingraft.train.entry`)."""
    parser.add_argument("--config", help="YAML config file; flags below override it")
    parser.add_argument("--set", dest="_dotted", action="append", default=[], metavar="KEY=VALUE",
                        help="override any (nested) key, e.g. --set clean.min_chars=200")
    hints = typing.get_type_hints(cmd.config_cls)
    reverse_alias: dict[str, list[str]] = {}
    for flag, name in cmd.aliases.items():
        reverse_alias.setdefault(name, []).append(flag)
    fields = [f for f in dataclasses.fields(cmd.config_cls) if f.init]
    required = parser.add_argument_group("required (each as a flag or as a key of --config)") \
        if any(map(_required, fields)) else parser
    for f in fields:
        tp = hints[f.name]
        if dataclasses.is_dataclass(_strip_optional(tp)) and not _required(f):
            continue  # nested sections: --set section.key=value
        flags = [_flag(f.name), *reverse_alias.get(f.name, [])]
        group = required if _required(f) else parser
        help_text = f.metadata.get("help", "")
        if get_origin(tp) is Literal:
            help_text = f"{help_text} ({'|'.join(map(str, get_args(tp)))})".strip()
        if _is_list(tp):
            group.add_argument(*flags, dest=f.name, action="append", default=None, help=help_text + " (repeatable)")
        elif _strip_optional(tp) is bool:
            # `--strict` alone means true; `--strict false` still works.
            group.add_argument(*flags, dest=f.name, nargs="?", const="true", default=None, metavar="BOOL",
                               help=help_text)
        else:
            group.add_argument(*flags, dest=f.name, default=None, help=help_text)


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lingraft", description="Graft a new language into an open LLM.")
    groups = parser.add_subparsers(dest="_group", metavar="STAGE", required=True)
    group_parsers: dict[str, Any] = {}
    for cmd in commands:
        head, *rest = cmd.path
        if not rest:
            sub = groups.add_parser(head, help=cmd.help, description=cmd.help)
        else:
            if head not in group_parsers:
                gp = groups.add_parser(head, help=f"{head} commands")
                group_parsers[head] = gp.add_subparsers(dest="_action", metavar="ACTION", required=True)
            sub = group_parsers[head].add_parser(rest[0], help=cmd.help, description=cmd.help)
        add_config_flags(sub, cmd)
        sub.set_defaults(_command=cmd)
    return parser


def config_from_args(cmd: Command, args: argparse.Namespace) -> Any:
    hints = typing.get_type_hints(cmd.config_cls)
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(cmd.config_cls):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        tp = hints[f.name]
        overrides[f.name] = [_cli_value(r, get_args(_strip_optional(tp))[0] if get_args(_strip_optional(tp)) else str)
                             for r in raw] if _is_list(tp) else _cli_value(raw, tp)
    try:
        return build_config(cmd.config_cls, args.config, overrides, args._dotted)
    except ConfigError as exc:
        key, _, problem = str(exc).partition(": ")
        if problem != "required key is missing" or key not in hints:
            raise
        raise ConfigError(f"{exc} (give {_flag(key)}, or {key}: in a --config file)") from None


def main(argv: list[str] | None = None) -> int:
    commands = all_commands()
    parser = build_parser(commands)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    cmd: Command = args._command
    return run_command(cmd, args, f"lingraft {' '.join(cmd.path)}")


def run_command(cmd: Command, args: argparse.Namespace, prog: str,
                runner: Callable[[Any], Any] | None = None) -> int:
    """Validate the config, then run; expected failures become one line and an exit status."""
    try:
        cfg = config_from_args(cmd, args)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    from lingraft.log import setup_logging
    setup_logging()
    try:
        (runner or resolve_runner(cmd.runner))(cfg)
    except (ConfigError, LingraftError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Every command resolves, and no file in the working folder can stand in for a lingraft module."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lingraft.registry import all_commands, resolve_runner

SHADOWS = ("train.py", "evaluation.py", "propagate.py", "vocabulary.py", "data_prep.py")


def test_every_runner_string_resolves():
    commands = all_commands()
    assert len({c.path for c in commands}) == len(commands), "two commands share a name"
    for cmd in commands:
        assert dataclasses.is_dataclass(cmd.config_cls), cmd.path
        assert callable(resolve_runner(cmd.runner)), f"lingraft {' '.join(cmd.path)}: {cmd.runner}"


def _shadowed_folder(tmp_path: Path) -> Path:
    for name in SHADOWS:     # a user's own scripts; importing any of them would fail loudly
        (tmp_path / name).write_text(f"raise SystemExit('imported the user file {name}')\n")
    return tmp_path


def test_console_command_ignores_user_files_named_like_stages(tmp_path):
    folder = _shadowed_folder(tmp_path)
    lingraft = shutil.which("lingraft", path=str(Path(sys.executable).parent))
    env = {**os.environ, "PYTHONSAFEPATH": ""}
    for argv in ([lingraft, "--help"], [lingraft, "train", "--help"],
                 [sys.executable, "-m", "lingraft.cli", "eval", "bpc", "--help"]):
        proc = subprocess.run(argv, cwd=folder, capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and "imported the user file" not in proc.stdout + proc.stderr, proc.stderr


def test_every_runner_imports_with_user_files_first_on_the_path(tmp_path):
    # `python -c` puts the working folder first on sys.path, where the user's train.py lies.
    code = ("from lingraft.registry import all_commands, resolve_runner\n"
            "for c in all_commands(): resolve_runner(c.runner)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=_shadowed_folder(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

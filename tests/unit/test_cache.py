"""The cache lives in the user's cache folder, never inside the installed package."""
from __future__ import annotations

from pathlib import Path

import lingraft
from lingraft.cache import cache_root


def test_explicit_folder_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("LINGRAFT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"


def test_xdg_cache_home_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LINGRAFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lingraft"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")    # the XDG spec: relative paths are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "lingraft"


def test_default_is_outside_the_package(monkeypatch):
    monkeypatch.delenv("LINGRAFT_CACHE", raising=False)
    package_root = Path(lingraft.__file__).resolve().parents[1]
    assert not cache_root().resolve().is_relative_to(package_root)

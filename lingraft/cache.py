"""Where lingraft keeps what it can rebuild: converted models, remembered file digests.

The user's cache folder, never the installed package (site-packages may be read-only and is
shared by every user): $LINGRAFT_CACHE if set, else $XDG_CACHE_HOME/lingraft, else
~/.cache/lingraft. A leaf module, so the modules that cache can all import it.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LINGRAFT_CACHE"


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "lingraft"

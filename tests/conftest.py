"""Shared test configuration: anyio on asyncio, and an isolated tpi environment per test."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """tpi runs on asyncio (aiohttp-based SDKs); trio is not promised."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_tpi(tmp_path_factory, monkeypatch):
    """Each test gets its own local-backend root and no inherited tpi switches."""
    root = tmp_path_factory.mktemp("tpi-local-root")
    monkeypatch.setenv("TPI_LOCAL_ROOT", str(root))
    for name in ("TPI_PLUGINS", "TPI_DEBUG", "TPI_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return root

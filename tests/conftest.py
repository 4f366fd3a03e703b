"""Shared test configuration: an isolated tpi environment per test (anyio on asyncio and
the emulators come from tpi_core.testing.pytest_plugin)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_tpi(tmp_path_factory, monkeypatch):
    """Each test gets its own local-backend root, HOME and no inherited tpi switches.

    Task scripts run in a login shell, which reads HOME's profile. A developer's profile
    can do slow or stateful things there (pyenv's init rehashes its shims under a lock file;
    a script killed mid-init, as preemption tests do, leaves the lock behind and every later
    login shell waits a minute for it), so tests give scripts an empty HOME.
    """
    root = tmp_path_factory.mktemp("tpi-local-root")
    monkeypatch.setenv("TPI_LOCAL_ROOT", str(root))
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for name in ("TPI_PLUGINS", "TPI_DEBUG", "TPI_TRACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return root

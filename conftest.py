"""Shared by the core's and the plugins' tests (not by other projects, which load only
``tpi_core.testing.pytest_plugin``): anyio tests run on asyncio, the loop tpi runs on."""

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"

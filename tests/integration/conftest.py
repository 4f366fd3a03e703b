"""Fixtures the clouds' integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boot import rootfs


@pytest.fixture(scope="module")
def debian_root() -> Iterator[Path]:
    """The Debian root of tests/boot, for machines that really boot (built once, cached
    between runs; the first build takes about a minute)."""
    yield rootfs.debian_root()

"""Fixtures shared by the plugin's tests that talk to moto (started by tests/emulators.py)."""

from __future__ import annotations

import boto3
import pytest

from tests import emulators
from tests.emulators import REGION, unique_bucket

moto_server, s3_env = emulators.moto_server, emulators.s3_env


@pytest.fixture
def anyio_backend() -> str:
    """tpi runs on asyncio."""
    return "asyncio"


@pytest.fixture
def s3(s3_env):
    """A plain boto3 client on moto, to arrange and inspect what the storage should see."""
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket per test."""
    name = unique_bucket()
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def in_parts(monkeypatch) -> None:
    """Files above 8 MiB go in parts (by default only those above 200 MiB do): lets tests
    exercise multipart uploads with small files."""
    from tpi_aws import storage

    from tpi_core.transport.ranges import SINGLE_MAX

    monkeypatch.setattr(storage, "STREAM_MAX", SINGLE_MAX)


@pytest.fixture
def in_ranges(monkeypatch) -> None:
    """Objects above 8 MiB come back in parallel ranges (by default only those above
    256 MiB do; smaller ones in one stream on a worker thread)."""
    from tpi_core.transport import download

    monkeypatch.setattr(download, "RANGES_FROM", 8 << 20)

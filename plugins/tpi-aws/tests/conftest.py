"""Fixtures shared by the plugin's tests that talk to moto (``moto_server`` and ``s3_env`` come from
tpi_core.testing.pytest_plugin)."""

from __future__ import annotations

import boto3
import pytest

from tpi_core.testing.emulators import REGION, unique_bucket


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

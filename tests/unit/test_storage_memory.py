"""MemoryStorage passes the storage contract; FlakyStorage fails as told."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpi_core.errors import TransientError
from tpi_core.testing.contract import StorageContract
from tpi_core.testing.memory import FlakyStorage, MemoryStorage


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> MemoryStorage:
        return MemoryStorage()


class TestMemoryStorageUnderPrefix(StorageContract):
    @pytest.fixture
    def storage(self) -> MemoryStorage:
        return MemoryStorage().child("some/prefix")



@pytest.mark.anyio
async def test_calls_are_counted_across_views() -> None:
    storage = MemoryStorage()
    await storage.child("a").write("k", b"x")
    await storage.read("a/k")
    assert [i.key async for i in storage.list()] == ["a/k"]
    assert storage.calls == {"write": 1, "read": 1, "list": 1}


@pytest.mark.anyio
async def test_keys_are_opaque_like_s3() -> None:
    storage = MemoryStorage()
    await storage.write("../escape", b"x")
    assert [i.key async for i in storage.list()] == ["../escape"]


@pytest.mark.anyio
async def test_flaky_storage_injects_transient_errors(tmp_path: Path) -> None:
    flaky = FlakyStorage(MemoryStorage(), rate=1.0, seed=1)
    with pytest.raises(TransientError):
        await flaky.write("k", b"x")
    (tmp_path / "src").write_bytes(b"0123456789")
    await flaky.inner.upload("k", tmp_path / "src")
    with pytest.raises(TransientError):
        await flaky.download("k", tmp_path / "half")
    assert (tmp_path / "half").read_bytes() == b"01234"  # a reset leaves a partial file
    assert flaky.failures == 2


@pytest.mark.anyio
async def test_flaky_storage_with_rate_zero_is_transparent() -> None:
    flaky = FlakyStorage(MemoryStorage(), rate=0.0)
    await flaky.write("k", b"x")
    assert await flaky.read("k") == b"x"
    assert flaky.failures == 0

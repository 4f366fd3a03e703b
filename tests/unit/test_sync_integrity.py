"""A download is checked against the object's md5 unless the storage says it checked it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpi_core.storage.sync import RetryPolicy, download_tree
from tpi_core.testing.memory import MemoryStorage

pytestmark = pytest.mark.anyio


class CorruptingStorage(MemoryStorage):
    """Lists the true md5 but hands out damaged bytes of the same size the first time."""

    fetches = 0

    async def download(self, key, path, progress=None):
        await super().download(key, path, progress)
        self.fetches += 1
        if self.fetches == 1:
            data = bytearray(Path(path).read_bytes())
            data[0] ^= 0xFF
            Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("size", [10, 200_000])
async def test_damaged_bytes_are_fetched_again_when_the_storage_does_not_verify(tmp_path, size):
    remote = CorruptingStorage()
    await remote.write("f.bin", b"x" * size)
    assert CorruptingStorage.VERIFIES_MD5 is False
    await download_tree(remote, tmp_path / "out", retry=RetryPolicy(attempts=3, base=0, cap=0))
    assert remote.fetches == 2
    assert (tmp_path / "out" / "f.bin").read_bytes() == b"x" * size

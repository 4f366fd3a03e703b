"""tpi_core.transport: what every bucket storage's upload uses — read_upload, HashedFile
and upload_parts."""

from __future__ import annotations

import hashlib
import os

import anyio
import pytest

from tpi_core.errors import TransientError
from tpi_core.transport.files import INLINE_IO, MEMORY_MAX, HashedFile, read_upload
from tpi_core.transport.ranges import upload_parts

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("size", [0, 10, INLINE_IO + 1, MEMORY_MAX])
async def test_read_upload_holds_small_files_with_their_md5(tmp_path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert await read_upload(tmp_path / "f") == (size, data, hashlib.md5(data).digest())


async def test_read_upload_leaves_larger_files_to_stream(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (MEMORY_MAX + 1))
    assert await read_upload(tmp_path / "f") == (MEMORY_MAX + 1, None, None)


async def test_hashed_file_digest_is_the_last_attempts(tmp_path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    moved: list[int] = []
    sent = HashedFile(tmp_path / "f", len(data), moved.append)
    assert sent.body.length == len(data)
    async for _ in sent.body.open():  # an attempt cut short, then a whole one
        break
    assert b"".join([c async for c in sent.body.open()]) == data
    assert sent.digest() == hashlib.md5(data).digest()


async def test_upload_parts_sends_every_part_once_and_retries_a_failed_one(tmp_path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    got: dict[int, bytes] = {}
    failed: list[int] = []

    async def put(number: int, part: bytes, digest: bytes) -> str:
        if number == 2 and not failed:
            failed.append(number)
            raise TransientError("503")
        assert digest == hashlib.md5(part).digest()
        got[number] = part
        return f"etag-{number}"

    moved: list[int] = []
    names = await upload_parts(tmp_path / "f", len(data), 3_000, put,
                               anyio.CapacityLimiter(2), moved.append)
    assert names == ["etag-1", "etag-2", "etag-3", "etag-4"]
    assert b"".join(got[n] for n in sorted(got)) == data and failed == [2]
    assert sum(moved) == len(data)

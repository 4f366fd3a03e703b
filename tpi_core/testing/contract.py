"""Conformance tests every Storage implementation runs (fsspec's ``tests/abstract`` style).

Subclass :class:`StorageContract` in a test module and provide a ``storage`` fixture that
yields an empty storage (its own prefix or bucket per test)::

    class TestS3Storage(StorageContract):
        @pytest.fixture
        async def storage(self, s3_bucket):
            async with S3Storage(...) as storage:
                yield storage

The tests use only the public :class:`~tpi_core.storage.Storage` API and run on anyio's
asyncio backend. :class:`BackendContract` (from :mod:`.lifecycle`) is the same for backends.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tpi_core.concurrent import task_group
from tpi_core.errors import ObjectNotFound
from tpi_core.storage import Storage
from tpi_core.sync.manifest import md5_etag
from tpi_core.testing.lifecycle import BackendContract

__all__ = ["BackendContract", "StorageContract"]


async def _listed(storage: Storage, prefix: str = "") -> dict[str, int]:
    return {info.key: info.size async for info in storage.list(prefix)}


class StorageContract:
    """The behaviour the sync engine and the agent rely on; see :class:`Storage`."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("a StorageContract subclass provides a `storage` fixture")

    # read / write

    @pytest.mark.anyio
    async def test_write_then_read(self, storage: Storage) -> None:
        await storage.write("a.txt", b"hello")
        assert await storage.read("a.txt") == b"hello"

    @pytest.mark.anyio
    async def test_write_replaces(self, storage: Storage) -> None:
        await storage.write("a.txt", b"first version, longer")
        await storage.write("a.txt", b"second")
        assert await storage.read("a.txt") == b"second"
        assert await _listed(storage) == {"a.txt": 6}

    @pytest.mark.anyio
    async def test_nested_keys_and_empty_object(self, storage: Storage) -> None:
        await storage.write("d1/d2/deep.bin", b"\x00\xff" * 10)
        await storage.write("d1/empty", b"")
        assert await storage.read("d1/d2/deep.bin") == b"\x00\xff" * 10
        assert await storage.read("d1/empty") == b""

    @pytest.mark.anyio
    async def test_read_missing_raises_object_not_found(self, storage: Storage) -> None:
        with pytest.raises(ObjectNotFound):
            await storage.read("missing.txt")
        await storage.write("dir/file", b"x")
        with pytest.raises(ObjectNotFound):
            await storage.read("dir")  # a prefix is not an object

    # upload / download

    @pytest.mark.anyio
    async def test_upload_download_round_trip(self, storage: Storage, tmp_path: Path) -> None:
        data = os.urandom((3 << 20) + 17)  # several chunks and a ragged end
        source, target = tmp_path / "source.bin", tmp_path / "target.bin"
        source.write_bytes(data)
        sent: list[int] = []
        await storage.upload("big/blob.bin", source, sent.append)
        got: list[int] = []
        await storage.download("big/blob.bin", target, got.append)
        assert target.read_bytes() == data
        assert sum(sent) == sum(got) == len(data)
        assert await _listed(storage) == {"big/blob.bin": len(data)}

    @pytest.mark.anyio
    @pytest.mark.parametrize("size", [0, 4096, (3 << 20) + 17])
    async def test_upload_returns_the_md5_it_promises(self, storage: Storage, tmp_path: Path,
                                                       size: int) -> None:
        """With ``UPLOAD_MD5`` an upload returns the md5 of what it sent; without, None
        (callers then hash the file themselves: a value they would trust blindly)."""
        data = os.urandom(size)
        (tmp_path / "f").write_bytes(data)
        returned = await storage.upload("hashed", tmp_path / "f")
        assert returned == (hashlib.md5(data).hexdigest() if storage.UPLOAD_MD5 else None)
        assert await storage.read("hashed") == data

    @pytest.mark.anyio
    async def test_download_missing_raises_object_not_found(self, storage: Storage,
                                                            tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound):
            await storage.download("nope.bin", tmp_path / "nope.bin")

    @pytest.mark.anyio
    async def test_upload_is_readable_and_written_is_downloadable(self, storage: Storage,
                                                                  tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"from a file")
        await storage.upload("u", tmp_path / "f")
        await storage.write("w", b"from memory")
        await storage.download("w", tmp_path / "w")
        assert await storage.read("u") == b"from a file"
        assert (tmp_path / "w").read_bytes() == b"from memory"

    # listing

    @pytest.mark.anyio
    async def test_list_prefixes(self, storage: Storage) -> None:
        for key in ("a/1", "a/2", "ab/3", "b/4", "top"):
            await storage.write(key, key.encode())
        assert await _listed(storage) == {"a/1": 3, "a/2": 3, "ab/3": 4, "b/4": 3, "top": 3}
        assert set(await _listed(storage, "a/")) == {"a/1", "a/2"}
        assert set(await _listed(storage, "a")) == {"a/1", "a/2", "ab/3"}
        assert set(await _listed(storage, "zzz")) == set()

    @pytest.mark.anyio
    async def test_list_empty_storage(self, storage: Storage) -> None:
        assert await _listed(storage) == {}

    @pytest.mark.anyio
    async def test_list_streams(self, storage: Storage) -> None:
        for index in range(30):
            await storage.write(f"many/{index:03d}", b"x")
        stream = storage.list("many/")
        assert hasattr(stream, "__anext__"), "list must be an async iterator, not a list"
        first = await stream.__anext__()
        assert first.key.startswith("many/") and first.size == 1
        await stream.aclose()  # stopping early is allowed
        assert len(await _listed(storage, "many/")) == 30

    @pytest.mark.anyio
    async def test_exists(self, storage: Storage) -> None:
        await storage.write("here/file", b"x")
        assert await storage.exists("here/file")
        assert not await storage.exists("here/fil")
        assert not await storage.exists("here")

    # delete

    @pytest.mark.anyio
    async def test_delete_is_idempotent(self, storage: Storage) -> None:
        await storage.write("k1", b"1")
        await storage.write("k2", b"2")
        await storage.delete(["k1", "never-existed"])
        await storage.delete(["k1"])
        await storage.delete([])
        assert await _listed(storage) == {"k2": 1}
        with pytest.raises(ObjectNotFound):
            await storage.read("k1")

    @pytest.mark.anyio
    async def test_delete_prefix(self, storage: Storage) -> None:
        for key in ("p/1", "p/q/2", "pq/3", "other"):
            await storage.write(key, b"x")
        assert await storage.delete_prefix("p/") == 2
        assert set(await _listed(storage)) == {"pq/3", "other"}
        assert await storage.delete_prefix("p/") == 0

    # views

    @pytest.mark.anyio
    async def test_child_is_a_view_under_a_prefix(self, storage: Storage) -> None:
        child = storage.child("sub/dir")
        await child.write("k", b"in child")
        assert await storage.read("sub/dir/k") == b"in child"
        assert await _listed(child) == {"k": 8}
        await storage.write("sub/dir/other", b"x")
        assert set(await _listed(child)) == {"k", "other"}
        assert await _listed(storage.child("sub").child("dir")) == await _listed(child)

    @pytest.mark.anyio
    async def test_url_opens_the_same_root(self, storage: Storage) -> None:
        child = storage.child("via-url")
        await child.write("k", b"same")
        async with type(storage).from_url(child.url) as again:
            assert await again.read("k") == b"same"

    @pytest.mark.anyio
    async def test_aclose_twice_is_safe(self, storage: Storage) -> None:
        await storage.write("k", b"x")
        other = type(storage).from_url(storage.url)
        async with other:
            assert [info.key async for info in other.list()] == ["k"]
        await other.aclose()

    # concurrency

    @pytest.mark.anyio
    async def test_concurrent_operations(self, storage: Storage, tmp_path: Path) -> None:
        payloads = {f"c/{i:02d}": os.urandom(1000 + i) for i in range(40)}
        for key, data in payloads.items():
            (tmp_path / key.replace("/", "_")).write_bytes(data)
        async with task_group() as group:
            for key in payloads:
                group.start_soon(storage.upload, key, tmp_path / key.replace("/", "_"))
        got: dict[str, bytes] = {}

        async def fetch(key: str) -> None:
            target = tmp_path / ("got_" + key.replace("/", "_"))
            await storage.download(key, target)
            assert await storage.read(key) == payloads[key]
            got[key] = target.read_bytes()

        async with task_group() as group:
            for key in payloads:
                group.start_soon(fetch, key)
        assert got == payloads
        assert await _listed(storage, "c/") == {k: len(v) for k, v in payloads.items()}

    @pytest.mark.anyio
    async def test_concurrent_writes_to_one_key_never_mix(self, storage: Storage) -> None:
        versions = [bytes([i]) * (10_000 + i) for i in range(10)]
        async with task_group() as group:
            for data in versions:
                group.start_soon(storage.write, "same", data)
        assert await storage.read("same") in versions
        assert len(await _listed(storage)) == 1

    @pytest.mark.anyio
    async def test_etag_is_stable_and_md5_when_it_looks_like_one(self, storage: Storage) -> None:
        await storage.write("e", b"etag me")
        first = [info.etag async for info in storage.list("e")]
        again = [info.etag async for info in storage.list("e")]
        assert first == again and len(first) == 1
        # the sync engine reads a 32-hex-digit etag as the object's md5: it must be one
        if md5_etag(first[0]) is not None:
            assert md5_etag(first[0]) == hashlib.md5(b"etag me", usedforsecurity=False).hexdigest()

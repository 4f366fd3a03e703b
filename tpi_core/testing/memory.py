"""In-memory storages for tests: a faithful fake of an object store, and a flaky wrapper.

:class:`MemoryStorage` behaves like S3 where tests care: keys are opaque strings (it stores
``../x`` if asked, which is how tests build a hostile listing), the etag of an object is the
md5 of its bytes, and every call is counted in :attr:`MemoryStorage.calls` so a test can
assert that a re-sync sent nothing. :class:`FlakyStorage` wraps any storage and fails a share
of calls with :class:`~tpi_core.errors.TransientError`, some of them half-way through.
"""

from __future__ import annotations

import hashlib
import random
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import anyio

from tpi_core.errors import ObjectNotFound, TransientError
from tpi_core.storage import ObjectInfo, Progress, Storage, join

_CHUNK = 1 << 20
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class _Object:
    data: bytes
    mtime: float
    etag: str


@dataclass(eq=False)
class _Store:
    """One in-memory "bucket": objects by full key, and the calls every view of it made."""

    name: str
    objects: dict[str, _Object] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)


_STORES: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()


class MemoryStorage(Storage):
    """A storage held in a dict; views made with :meth:`child` share it (like S3 prefixes).

    ``MemoryStorage()`` is a fresh private bucket; ``memory://NAME/prefix`` URLs reach the
    bucket called NAME while any storage still uses it.
    """

    SCHEME = "memory"

    def __init__(self, name: str | None = None, prefix: str = "", *, _store: _Store | None = None):
        if _store is None:
            name = name or f"mem{id(self):x}"
            _store = _STORES.get(name) or _Store(name)
            _STORES[name] = _store
        self._store, self.prefix = _store, prefix.strip("/")

    @classmethod
    def from_url(cls, url: str, **options: str) -> MemoryStorage:
        parsed = urlparse(url)
        if parsed.scheme != cls.SCHEME or not parsed.netloc:
            raise ValueError(f"not a memory:// URL: {url!r}")
        return cls(parsed.netloc, parsed.path)

    @property
    def url(self) -> str:
        return f"memory://{self._store.name}/{self.prefix}"

    @property
    def calls(self) -> Counter:
        """How many times each method was called on this bucket, through any view."""
        return self._store.calls

    @property
    def objects(self) -> dict[str, bytes]:
        """A snapshot of this view's objects, key -> bytes."""
        start = self.prefix + "/" if self.prefix else ""
        return {k[len(start):]: o.data for k, o in self._store.objects.items()
                if k.startswith(start)}

    def child(self, prefix: str) -> MemoryStorage:
        return MemoryStorage(prefix=join(self.prefix, prefix), _store=self._store)

    def _key(self, key: str) -> str:
        if not key:
            raise ValueError("an empty storage key")
        return f"{self.prefix}/{key}" if self.prefix else key

    LISTS_AFTER = True

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        self.calls["list"] += 1
        start = self.prefix + "/" if self.prefix else ""
        after = start + start_after if start_after else ""
        keys = sorted(k for k in self._store.objects if k.startswith(start + prefix) and k > after)
        for index, full in enumerate(keys):
            if index % _PAGE == 0:
                await anyio.sleep(0)  # a page boundary: let others run, as a network list would
            obj = self._store.objects.get(full)
            if obj is not None:
                yield ObjectInfo(full[len(start):], len(obj.data), obj.etag, obj.mtime)

    async def read(self, key: str) -> bytes:
        self.calls["read"] += 1
        await anyio.sleep(0)
        return self._get(key).data

    async def write(self, key: str, data: bytes) -> None:
        self.calls["write"] += 1
        await anyio.sleep(0)
        self._put(key, bytes(data))

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> None:
        self.calls["upload"] += 1
        data = await anyio.to_thread.run_sync(Path(path).read_bytes)
        _report(progress, len(data))
        self._put(key, data)

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        self.calls["download"] += 1
        data = self._get(key).data
        await anyio.to_thread.run_sync(_write_file, Path(path), data)
        _report(progress, len(data))

    async def delete(self, keys: Iterable[str]) -> None:
        self.calls["delete"] += 1
        await anyio.sleep(0)
        for key in keys:
            self._store.objects.pop(self._key(key), None)

    def _get(self, key: str) -> _Object:
        try:
            return self._store.objects[self._key(key)]
        except KeyError:
            raise ObjectNotFound(key) from None

    def _put(self, key: str, data: bytes) -> None:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._store.objects[self._key(key)] = _Object(data, time.time(), etag)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _report(progress: Progress | None, size: int) -> None:
    if progress is not None:
        for start in range(0, size, _CHUNK):
            progress(min(_CHUNK, size - start))


class FlakyStorage(Storage):
    """Wraps a storage and fails a share of its calls with TransientError (fault injection).

    A failing ``download`` first writes half of the object to the target path and a failing
    ``upload`` first reports half its bytes as progress, as a reset connection would.
    ``failures`` counts the injected errors; ``seed`` makes a run repeatable.
    """

    SCHEME = "flaky"

    def __init__(self, inner: Storage, rate: float = 0.3, *, seed: int | None = None,
                 methods: Iterable[str] = ("list", "read", "write", "upload", "download",
                                           "delete")):
        self.inner, self.rate, self.methods = inner, rate, frozenset(methods)
        self.random = random.Random(seed)
        self.failures = 0
        self.LISTS_AFTER = inner.LISTS_AFTER

    @classmethod
    def from_url(cls, url: str, **options: str) -> FlakyStorage:
        raise NotImplementedError("FlakyStorage wraps a storage object")

    @property
    def url(self) -> str:
        return self.inner.url

    def child(self, prefix: str) -> FlakyStorage:
        view = FlakyStorage(self.inner.child(prefix), self.rate, methods=self.methods)
        view.random = self.random
        return view

    def _fails(self, method: str) -> bool:
        if method in self.methods and self.random.random() < self.rate:
            self.failures += 1
            return True
        return False

    async def list(self, prefix: str = "", **after: str) -> AsyncIterator[ObjectInfo]:
        fail_at = self.random.randrange(1, 50) if self._fails("list") else None
        count = 0
        async for info in self.inner.list(prefix, **after):
            if count == fail_at:
                raise TransientError("injected: listing connection reset")
            count += 1
            yield info
        if fail_at is not None:
            raise TransientError("injected: listing failed on its last page")

    async def read(self, key: str) -> bytes:
        await self._maybe_fail("read")
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes) -> None:
        await self._maybe_fail("write")
        await self.inner.write(key, data)

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> None:
        if self._fails("upload"):
            _report(progress, Path(path).stat().st_size // 2)
            raise TransientError("injected: SlowDown during upload")
        await self.inner.upload(key, path, progress)

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        if self._fails("download"):
            data = await self.inner.read(key)
            await anyio.to_thread.run_sync(_write_file, Path(path), data[: len(data) // 2])
            _report(progress, len(data) // 2)
            raise TransientError("injected: connection reset during download")
        await self.inner.download(key, path, progress)

    async def delete(self, keys: Iterable[str]) -> None:
        await self._maybe_fail("delete")
        await self.inner.delete(keys)

    async def _maybe_fail(self, method: str) -> None:
        await anyio.sleep(0)
        if self._fails(method):
            raise TransientError(f"injected: 503 on {method}")

"""Object stores on the shared transport: what S3, GCS and Azure Blob storages have in common.

:class:`ObjectStorage` is a bucket (or container) and a prefix, reached through one
:class:`~tpi_core.transport.endpoint.Endpoint` that a storage and its children share and
that the storage which opened it closes. It reads and checks against the md5 the answer
vouches for (the protocol's ``md5_of``), writes, uploads (a file up to 1 MiB in one request
with its md5; larger in one request streamed and hashed as it is sent; where the service has
them and the file is large enough, in parts) and downloads through
:func:`tpi_core.transport.download.fetch`, a listed object without its first GET. What
stays a cloud's own are small hooks:

- ``_open``: the endpoint, with the service's ``ObjectProtocol`` (opened on first use or
  at once);
- ``_entries``: the listing, one :class:`Entry` per object, from the service's pages;
- ``_send``: the request that stores one body, answering the md5 the service stored;
- ``_in_parts`` and ``_send_parts``: the multipart (or resumable) threshold and upload
  (default: none);
- ``_delete_batch``: deleting up to ``DELETE_BATCH`` keys;
- ``_close``: what the owner closes.

Azure Blob storage (plugins/tpi-azure) fits the same way: ``_open`` builds an endpoint
whose protocol locates ``/container/blob``, signs with Shared Key, a SAS or a bearer
token, reads ``Content-MD5``
(``x-ms-blob-content-md5`` in a range answer) and pins with If-Match, so downloads are
the transport's Range GETs unchanged; ``_send`` is Put Blob (``x-ms-blob-type:
BlockBlob``, Content-MD5 when the md5 is known up front) answering the ``Content-MD5``
stored; ``_in_parts``/``_send_parts`` are Put Block and Put Block List above Put Blob's
limit; ``_entries`` reads List Blobs XML by marker (no ``start_after``: ``LISTS_AFTER``
stays False); ``_delete_batch`` sends one Delete Blob per key, 32 at once.

Keys that would be unsafe as local paths are refused for transfers (``checked_key``) but
listed and deleted, so a hostile object never blocks clean-up; keys ending in ``/``
(folder markers of consoles) are not listed.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import ClassVar, NamedTuple
from urllib.parse import urlencode

import anyio

from tpi_core.concurrent import task_group
from tpi_core.errors import IntegrityError, ObjectNotFound
from tpi_core.storage import ObjectInfo, Progress, Storage, bucket_url, check_bucket, join
from tpi_core.storage.local import checked_key
from tpi_core.sync.manifest import md5_file
from tpi_core.transport import download
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.files import HashedFile, check_md5, read_upload
from tpi_core.transport.hashing import md5_digest, md5_hex
from tpi_core.transport.pool import Stream


class Entry(NamedTuple):
    """One object of a listing page, by its bucket key."""

    key: str
    size: int
    etag: str | None
    """What :class:`~tpi_core.storage.ObjectInfo` reports as the object's etag."""
    version: str
    """What pins a later download to this object (S3: ETag, GCS: generation)."""
    md5: str | None
    """The hex md5 the service vouches for, None when it vouches for none."""
    mtime: float | None


class ObjectStorage(Storage):
    """Objects under one prefix of a bucket or container, on the shared transport."""

    KIND: ClassVar[str]
    """The service's name in messages (``S3``)."""
    OPTIONS: ClassVar[tuple[str, ...]] = ("endpoint_url",)
    """Keyword options of :meth:`from_url` (passed on to the constructor)."""
    URL_OPTIONS: ClassVar[tuple[str, ...]] = ()
    """Options a URL's query may carry, kept as attributes of the same name and put back
    into :attr:`url`."""
    DELETE_BATCH: ClassVar[int] = 1000
    VERIFIES_MD5 = True  # bodies are checked against the md5 the answer vouches for
    UPLOAD_MD5 = True  # every upload hashes what it sends
    _slots: anyio.CapacityLimiter
    """Ranges in flight, over all the files of a storage and its children."""

    def __init__(self, bucket: str, prefix: str = ""):
        check_bucket(bucket, self.KIND)
        self.bucket, self.prefix = bucket, join(prefix)
        self._owner = True
        self._listed = download.Listed()

    @classmethod
    def from_url(cls, url: str, **options: str) -> ObjectStorage:
        """``scheme://bucket/prefix``; keyword options: ``OPTIONS``."""
        bucket, prefix, options = bucket_url(url, cls.SCHEME, cls.KIND, options, cls.OPTIONS,
                                             cls.URL_OPTIONS)
        return cls(bucket, prefix, **options)

    @property
    def url(self) -> str:
        url = f"{self.SCHEME}://{self.bucket}/{self.prefix}".rstrip("/")
        query = {name: getattr(self, name) for name in self.URL_OPTIONS if getattr(self, name)}
        return f"{url}?{urlencode(query)}" if query else url

    def child(self, prefix: str) -> ObjectStorage:
        """A storage under ``prefix`` on the same endpoint (closed by its owner only)."""
        sub = copy.copy(self)
        sub.prefix = join(self.prefix, checked_key(prefix.strip("/")))
        sub._owner, sub._listed = False, download.Listed()
        return sub

    def _full(self, key: str) -> str:
        """The bucket key of a storage key, exactly (no stripping: object keys are no paths)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def _taken(self, key: str) -> str:
        """The bucket key of a key about to be written: what was listed of it is stale."""
        full = self._full(checked_key(key))
        self._listed.take(full)
        return full

    async def list(self, prefix: str = "", *, start_after: str = ""
                   ) -> AsyncIterator[ObjectInfo]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        after = self._full(start_after) if start_after else ""
        async for entry in self._entries(self._full(prefix), after):
            # a service that starts at ``after`` (GCS's startOffset) lists it too
            if entry.key[cut:] and not entry.key.endswith("/") and entry.key != after:
                self._listed.saw(entry.key, entry.size, entry.version, entry.md5)
                yield ObjectInfo(entry.key[cut:], entry.size, entry.etag, entry.mtime)

    async def read(self, key: str) -> bytes:
        full = self._full(checked_key(key))
        endpoint = await self._open()
        async with endpoint.request("GET", full, what=f"read {full}") as resp:
            data = await resp.read()
            expected = endpoint.protocol.md5_of(resp.headers)
        if expected is not None:
            check_md5(f"read {full}", md5_hex(data), expected)
        return data

    async def write(self, key: str, data: bytes) -> None:
        full, digest = self._taken(key), md5_digest(data)
        _check_stored(full, await self._send(full, data, digest), digest)

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> str:
        full, path = self._taken(key), Path(path)
        size, data, digest = await read_upload(path)
        if data is not None and digest is not None:
            _check_stored(full, await self._send(full, data, digest), digest)
            if progress:
                progress(len(data))
            return digest.hex()
        if self._in_parts(size):
            return await self._upload_parts(full, path, size, progress)
        sent = HashedFile(path, size, progress)
        _check_stored(full, await self._send(full, sent.body, None), sent.digest())
        return sent.digest().hex()

    async def _upload_parts(self, full: str, path: Path, size: int,
                            progress: Progress | None) -> str:
        hashed: list[str] = []

        async def whole_md5() -> None:  # for the caller, on a second core, beside the parts
            hashed.append(await anyio.to_thread.run_sync(md5_file, path))

        async with task_group() as group:
            group.start_soon(whole_md5)
            stored = await self._send_parts(full, path, size, progress)
        _check_stored(full, stored, bytes.fromhex(hashed[0]))
        return hashed[0]

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        full = self._full(checked_key(key))
        await download.fetch(await self._open(), full, Path(path), progress, self._slots,
                             self._listed.take(full))

    async def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(self._full(key))
            self._listed.take(batch[-1])
            if len(batch) == self.DELETE_BATCH:
                await self._delete_batch(batch)
                batch = []
        if batch:
            await self._delete_batch(batch)

    async def aclose(self) -> None:
        if self._owner:
            await self._close()

    # what each service does its own way ---------------------------------------------------

    @abstractmethod
    async def _open(self) -> Endpoint:
        """The endpoint to the bucket (opened on first use where that costs)."""

    @abstractmethod
    def _entries(self, prefix: str, start_after: str) -> AsyncIterator[Entry]:
        """Every object whose bucket key starts with ``prefix`` (after ``start_after``)."""

    @abstractmethod
    async def _send(self, full: str, body: bytes | Stream, md5: bytes | None) -> str | None:
        """Store one body at ``full`` (``md5``: its digest when known before sending);
        return the hex md5 the service says it stored, None when it says none."""

    def _in_parts(self, size: int) -> bool:
        """True when a file of ``size`` bytes goes in parts (:meth:`_send_parts`)."""
        return False

    async def _send_parts(self, full: str, path: Path, size: int,
                          progress: Progress | None) -> str | None:
        """Upload a large file in parts (or a session); the hex md5 the service says it
        stored of the whole, None when it names none (S3's multipart ETag is no md5)."""
        raise NotImplementedError(f"{self.KIND} storage uploads no parts")

    @abstractmethod
    async def _delete_batch(self, keys: list[str]) -> None:
        """Delete up to ``DELETE_BATCH`` bucket keys; missing keys are no error."""

    async def _delete_each(self, keys: list[str], headers: dict[str, str] | None = None,
                           at_once: int = 32) -> None:
        """A ``_delete_batch`` for a service that deletes one object per request: a DELETE
        each (with ``headers``), ``at_once`` in flight; one gone already is no error."""
        endpoint, slots = await self._open(), anyio.Semaphore(at_once)

        async def one(full: str) -> None:
            async with slots:
                try:
                    async with endpoint.request("DELETE", full, query={}, headers=headers,
                                                what=f"delete {full}") as resp:
                        await resp.read()
                except ObjectNotFound:
                    pass  # gone already: what a delete wants

        async with task_group() as group:
            for full in keys:
                group.start_soon(one, full)

    @abstractmethod
    async def _close(self) -> None:
        """Close the endpoint (and whatever else) this storage opened."""


def _check_stored(full: str, stored: str | None, sent: bytes) -> None:
    # some servers, emulators among them, ignore Content-MD5: compare what they stored
    if stored is not None and stored != sent.hex():
        raise IntegrityError(f"upload {full}: stored md5 {stored} does not match md5 sent "
                             f"{sent.hex()}")

"""S3 storage: ``s3://bucket/prefix`` on aiobotocore, with a fast path for listings and bodies.

A storage and its children share one :class:`~tpi_aws._connection.Connection`, opened on
first use and closed by ``aclose()`` of the storage that opened it: the fast path
(:mod:`tpi_aws._wire` on the core's :mod:`tpi_core.transport`, see there why) and a botocore
client for multipart control and batch deletes. Uploads: files up to 1 MiB go in one PUT with Content-MD5 (the service refuses a
damaged body), up to 200 MiB in one streamed PUT hashed as it is sent, larger ones in
parallel parts; the ETag answered is compared with what was sent either way (emulators
ignore Content-MD5). Downloads (:mod:`tpi_core.transport.download`) ask for the first 8 MiB, which
is all of most objects; the rest of a larger one comes in one stream on a worker thread (at
once for an object just listed), in parallel ranges above 256 MiB. A body received is
checked against its ETag when the ETag is an md5 (single part, no KMS).

Keys that would be unsafe as local paths (``..``, ``.``, empty parts, a leading ``/``) are
refused for transfers; they can still be listed and deleted, so a hostile object never
blocks clean-up. Keys ending in ``/`` (folder markers of consoles) are not listed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import anyio

from tpi_aws import _multipart
from tpi_aws._connection import Connection
from tpi_aws._multipart import Target
from tpi_aws._wire import is_md5_etag
from tpi_aws.errors import aws_errors, translate
from tpi_core.concurrent import task_group
from tpi_core.errors import UsageError
from tpi_core.storage import ObjectInfo, Progress, Storage, join
from tpi_core.storage.local import checked_key
from tpi_core.sync.manifest import md5_file
from tpi_core.transport import download
from tpi_core.transport.files import INLINE_IO, MEMORY_MAX, check_md5, file_chunks
from tpi_core.transport.hashing import content_md5, md5_digest, md5_hex
from tpi_core.transport.pool import Stream

_OPTIONS = ("region", "endpoint_url", "tagging")
STREAM_MAX = 200 << 20
"""Files above MEMORY_MAX and up to this size go in one streamed PUT (rclone's default
upload cutoff); larger ones in parts. A server assembles parts again after the last one
(s3rver copies and hashes them, about 1 s per 200 MB), a single PUT it stores as it comes."""


class S3Storage(Storage):
    """Objects under one prefix of an S3 bucket (any S3-compatible service)."""

    SCHEME = "s3"
    VERIFIES_MD5 = True  # every body is checked against an md5 ETag (see _write_checked)
    UPLOAD_MD5 = True  # every upload hashes what it sends
    LISTS_AFTER = True  # ListObjectsV2: key order, start-after

    def __init__(self, bucket: str, prefix: str = "", *, region: str | None = None,
                 endpoint_url: str | None = None, tagging: str = "",
                 _connection: Connection | None = None):
        if not bucket or "/" in bucket or any(c.isspace() for c in bucket):
            raise UsageError(f"invalid S3 bucket name {bucket!r}")
        self.bucket, self.prefix = bucket, join(prefix)
        # URL-encoded object tags (``k=v&k2=v2``) put on every object written
        self.tagging = tagging
        self._owner = _connection is None
        self._conn = _connection or Connection(bucket, region or None, endpoint_url or None)
        self._listed = download.Listed()

    @classmethod
    def from_url(cls, url: str, **options: str) -> S3Storage:
        """``s3://bucket/prefix[?tagging=...]``; options: ``region``, ``endpoint_url``,
        ``tagging`` (URL-encoded tags for every object written, as S3's x-amz-tagging)."""
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        if "tagging" in query:
            options = {"tagging": query["tagging"][0], **options}
        unknown = sorted(set(options) - set(_OPTIONS))
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UsageError(f"not an s3://bucket/prefix URL: {url!r}")
        if unknown:
            raise UsageError(f"unknown S3 storage option(s) {', '.join(unknown)} "
                             f"(allowed: {', '.join(_OPTIONS)})")
        return cls(parsed.netloc, parsed.path, **options)

    @property
    def url(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{url}?{urlencode({'tagging': self.tagging})}" if self.tagging else url

    def child(self, prefix: str) -> S3Storage:
        sub = checked_key(prefix.strip("/"))
        return S3Storage(self.bucket, join(self.prefix, sub), tagging=self.tagging,
                         _connection=self._conn)

    def _tag_headers(self) -> dict[str, str]:
        return {"x-amz-tagging": self.tagging} if self.tagging else {}

    def _full(self, key: str) -> str:
        """The bucket key of a storage key, exactly (no stripping: S3 keys are not paths)."""
        return f"{self.prefix}/{key}" if self.prefix else key

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        wire = await self._conn.wire()
        full = self._full(prefix) if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0
        after = self._full(start_after) if start_after else ""
        async for page in wire.list_pages(full, f"list {self.url}", after):
            for key, size, etag, mtime in page:
                if key[cut:] and not key.endswith("/"):
                    self._listed.saw(key, size, etag, etag if is_md5_etag(etag, {}) else None)
                    yield ObjectInfo(key[cut:], size, etag or None, mtime)

    async def read(self, key: str) -> bytes:
        wire = await self._conn.wire()
        full = self._full(checked_key(key))
        async with wire.request("GET", full, what=f"read {full}") as resp:
            data = await resp.read()
            expected = wire.protocol.md5_of(resp.headers)
            if expected is not None:
                check_md5(f"read {full}", md5_hex(data), expected)
        return data

    async def write(self, key: str, data: bytes) -> None:
        full = self._full(checked_key(key))
        self._listed.take(full)  # what was listed is no longer what is there
        await self._put(full, data, md5_digest(data))

    async def _put(self, full: str, data: bytes, digest: bytes) -> None:
        wire = await self._conn.wire()
        async with wire.request("PUT", full, data=data,
                                headers={**content_md5(digest), **self._tag_headers()},
                                what=f"upload {full}") as resp:
            wire.check_stored(f"upload {full}", resp.headers, digest)

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> str:
        full, path = self._full(checked_key(key)), Path(path)
        self._listed.take(full)  # what was listed is no longer what is there
        size, data, digest = await _read_upload(path)
        if data is not None:
            await self._put(full, data, digest)
            if progress:
                progress(len(data))
            return digest.hex()
        if size <= STREAM_MAX:
            return await self._put_stream(full, path, size, progress)
        hashed: list[str] = []

        async def whole_md5() -> None:  # for the caller, on a second core, beside the parts
            hashed.append(await anyio.to_thread.run_sync(md5_file, path))

        async with task_group() as group:
            group.start_soon(whole_md5)
            await _multipart.upload_multipart(await self._target(full), path, size, progress)
        return hashed[0]

    async def _put_stream(self, full: str, path: Path, size: int,
                          progress: Progress | None) -> str:
        """One PUT whose body is read from the file and hashed while it is sent (no
        Content-MD5 up front, which would mean reading the file twice): the ETag the service
        answers is compared with the md5 of exactly what was sent."""
        digests: list[Any] = []

        def body() -> AsyncIterator[bytes]:
            digests.append(hashlib.md5(usedforsecurity=False))
            return file_chunks(path, size, digests[-1], progress)

        what = f"upload {full}"
        wire = await self._conn.wire()
        async with wire.request("PUT", full, data=Stream(size, body), what=what,
                                headers=self._tag_headers()) as resp:
            wire.check_stored(what, resp.headers, digests[-1].digest())
        return digests[-1].hexdigest()

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        full = self._full(checked_key(key))
        await download.fetch(await self._conn.wire(), full, Path(path), progress,
                             self._conn.slots, self._listed.take(full))

    async def _target(self, full: str) -> Target:
        """What a multipart upload needs."""
        return Target(await self._conn.client(), await self._conn.wire(), self.bucket, full,
                      self._conn.slots, self.tagging)

    async def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(self._full(key))
            self._listed.take(batch[-1])
            if len(batch) == 1000:
                await self._delete_batch(batch)
                batch = []
        if batch:
            await self._delete_batch(batch)

    async def _delete_batch(self, keys: list[str]) -> None:
        what = f"delete from {self.url}"
        client = await self._conn.client()
        with aws_errors(what):
            result = await client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
        failed = [e for e in result.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if failed:
            from botocore.exceptions import ClientError

            raise translate(ClientError({"Error": failed[0]}, "DeleteObjects"), what)

    async def aclose(self) -> None:
        if self._owner:
            await self._conn.aclose()


async def _read_upload(path: Path) -> tuple[int, bytes | None, bytes | None]:
    """Size, and for a small file its bytes and md5: a tiny file is read on the event loop
    (a local read of a few kB costs less than the hop to a worker thread), others in one."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size <= INLINE_IO:
            return _read_small(handle)
    return await anyio.to_thread.run_sync(_read_file, path)


def _read_file(path: Path) -> tuple[int, bytes | None, bytes | None]:
    with open(path, "rb") as handle:
        return _read_small(handle)


def _read_small(handle) -> tuple[int, bytes | None, bytes | None]:
    """Size, and for a small file its bytes and md5."""
    size = os.fstat(handle.fileno()).st_size
    if size > MEMORY_MAX:
        return size, None, None
    data = handle.read()
    return size, data, md5_digest(data)

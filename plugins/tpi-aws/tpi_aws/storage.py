"""S3 storage: ``s3://bucket/prefix`` on the core's object-store base, with S3's own parts.

Reads, writes, uploads, downloads and the listing cache come from
:class:`~tpi_core.storage.objects.ObjectStorage`. S3's part: a storage and its children
share one :class:`~tpi_aws._connection.Connection`, opened on first use and closed by
``aclose()`` of the storage that opened it, with the fast path (:mod:`tpi_aws._wire`:
SigV4, the ListObjectsV2 XML) and a botocore client for multipart control and batch
deletes (DeleteObjects); object tags (``x-amz-tagging``) on every object written. Files up
to 1 MiB go in one PUT with Content-MD5 (the service refuses a damaged body), up to 200 MiB
in one streamed PUT hashed as it is sent, larger ones in parallel parts; the ETag answered
is compared with what was sent either way (emulators ignore Content-MD5). A body received
is checked against its ETag when the ETag is an md5 (single part, no KMS).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from tpi_aws import _multipart
from tpi_aws._connection import Connection
from tpi_aws._multipart import Target
from tpi_aws._wire import is_md5_etag
from tpi_aws.errors import aws_errors, translate
from tpi_core.storage import Progress
from tpi_core.storage.objects import Entry, ObjectStorage
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.hashing import content_md5
from tpi_core.transport.pool import Stream

STREAM_MAX = 200 << 20
"""Files above MEMORY_MAX and up to this size go in one streamed PUT (rclone's default
upload cutoff); larger ones in parts. A server assembles parts again after the last one
(s3rver copies and hashes them again), a single PUT it stores as it comes."""


class S3Storage(ObjectStorage):
    """Objects under one prefix of an S3 bucket (any S3-compatible service).

    Options: ``region``, ``endpoint_url``, ``tagging`` (URL-encoded tags ``k=v&k2=v2`` for
    every object written, as S3's x-amz-tagging; also from the URL's query).
    """

    SCHEME, KIND = "s3", "S3"
    OPTIONS, URL_OPTIONS = ("region", "endpoint_url", "tagging"), ("tagging",)
    LISTS_AFTER = True  # ListObjectsV2: key order, start-after

    def __init__(self, bucket: str, prefix: str = "", *, region: str | None = None,
                 endpoint_url: str | None = None, tagging: str = ""):
        super().__init__(bucket, prefix)
        self.tagging = tagging
        self._conn = Connection(bucket, region or None, endpoint_url or None)
        self._slots = self._conn.slots

    async def _open(self) -> Endpoint:
        return await self._conn.wire()

    async def _entries(self, prefix: str, start_after: str) -> AsyncIterator[Entry]:
        wire = await self._conn.wire()
        async for page in wire.list_pages(prefix, f"list {self.url}", start_after):
            for key, size, etag, mtime in page:
                md5 = etag if is_md5_etag(etag, {}) else None
                yield Entry(key, size, etag or None, etag, md5, mtime)

    async def _send(self, full: str, body: bytes | Stream, md5: bytes | None) -> str | None:
        wire = await self._conn.wire()
        headers = {**(content_md5(md5) if md5 else {}),
                   **({"x-amz-tagging": self.tagging} if self.tagging else {})}
        async with wire.request("PUT", full, data=body, headers=headers,
                                what=f"upload {full}") as resp:
            return wire.protocol.md5_of(resp.headers)

    def _in_parts(self, size: int) -> bool:
        return size > STREAM_MAX

    async def _send_parts(self, full: str, path: Path, size: int,
                          progress: Progress | None) -> None:
        target = Target(await self._conn.client(), await self._conn.wire(), self.bucket, full,
                        self._conn.slots, self.tagging)
        await _multipart.upload_multipart(target, path, size, progress)

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

    async def _close(self) -> None:
        await self._conn.aclose()

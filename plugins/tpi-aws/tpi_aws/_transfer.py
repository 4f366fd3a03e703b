"""Large-object transfers for S3: multipart upload and parallel ranged download.

A large transfer is many requests; one failed part must not cost the whole file, so parts
(unlike whole objects, which the sync engine retries) are retried here with backoff.
Part bodies are read, hashed and written in worker threads: hashlib and file I/O release the
GIL, so they overlap the network on a second core.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from tpi_aws._stream import check_md5, preallocate, write_all, write_body
from tpi_aws._wire import Wire
from tpi_aws.errors import aws_errors
from tpi_core.concurrent import task_group
from tpi_core.errors import IntegrityError, ObjectNotFound, ResourceNotFound, TransientError
from tpi_core.storage import Progress
from tpi_core.sync.retry import RetryPolicy
from tpi_core.sync.retry import retrying as sync_retrying

T = TypeVar("T")
MiB = 1 << 20
SINGLE_MAX = 8 * MiB
"""Objects up to this size move in one request."""
PART_WORKERS = 8
PART_ATTEMPTS = 6
PART_RETRY = RetryPolicy(attempts=PART_ATTEMPTS, base=0.05, cap=2.0)


def part_size(size: int) -> int:
    """8 MiB, or larger (whole MiB) so a file never needs more than S3's 10,000 parts."""
    return max(SINGLE_MAX, -(-size // (9_000 * MiB)) * MiB)


def md5_digest(data: bytes) -> bytes:
    """The md5 of a body (its hex is a single-part ETag, its base64 the Content-MD5)."""
    return hashlib.md5(data, usedforsecurity=False).digest()


def content_md5(digest: bytes) -> dict[str, str]:
    """The Content-MD5 header, with which the service refuses a body damaged on the way."""
    return {"Content-MD5": base64.b64encode(digest).decode()}


def check_stored(what: str, headers: Any, digest: bytes) -> None:
    """Compare what the service says it stored with what was sent (some servers, emulators
    among them, ignore Content-MD5); an ETag that is no md5 (KMS) cannot be compared."""
    etag = headers.get("ETag", "").strip('"')
    if is_md5_etag(etag, headers) and etag != digest.hex():
        raise IntegrityError(f"{what}: stored ETag {etag} does not match md5 sent {digest.hex()}")


def md5_hex(data: bytes) -> str:
    """Hex md5 of a body, as an ETag of a single-part object shows it."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def is_md5_etag(etag: str, headers: Any) -> bool:
    """True when an ETag is the body's md5: single-part and not encrypted with KMS or SSE-C."""
    sse = headers.get("x-amz-server-side-encryption", "")
    customer = headers.get("x-amz-server-side-encryption-customer-algorithm")
    return len(etag) == 32 and "-" not in etag and not sse.startswith("aws:kms") and not customer


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """Run one part or range again on transient errors and damaged bodies (the sync
    engine's backoff with full jitter, PART_ATTEMPTS times)."""
    return await sync_retrying(PART_RETRY, lambda _moved: call())


@dataclass
class Target:
    """Where a large transfer goes: the client, the fast path, the bucket and the full key."""

    client: Any
    wire: Wire
    bucket: str
    key: str
    slots: anyio.CapacityLimiter
    tagging: str = ""


async def upload_multipart(target: Target, path: Path, size: int,
                           progress: Progress | None) -> None:
    """Upload a file in parts, several at once; abort the upload if anything fails."""
    step = part_size(size)
    count = -(-size // step)
    with aws_errors(f"create multipart upload {target.key}"):
        tags = {"Tagging": target.tagging} if target.tagging else {}
        created = await target.client.create_multipart_upload(Bucket=target.bucket,
                                                               Key=target.key, **tags)
    upload_id = created["UploadId"]
    try:
        etags = await _upload_parts(target, path, upload_id, step, count, progress)
        await retrying(lambda: _complete(target, upload_id, etags))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _abort(target, upload_id)
        raise


async def _upload_parts(target: Target, path: Path, upload_id: str, step: int, count: int,
                        progress: Progress | None) -> list[str]:
    etags = [""] * count
    numbers = iter(range(count))

    async def worker() -> None:
        for index in numbers:
            async with target.slots:
                etags[index], sent = await retrying(partial(_put_part, index))
            if progress:
                progress(sent)

    async def _put_part(index: int) -> tuple[str, int]:
        data, digest = await anyio.to_thread.run_sync(_read_part, path, index * step, step)
        query = {"partNumber": index + 1, "uploadId": upload_id}
        what = f"upload part {index + 1} of {target.key}"
        async with target.wire.request("PUT", target.key, query=query, data=data,
                                       headers=content_md5(digest), what=what) as resp:
            check_stored(what, resp.headers, digest)
            return resp.headers.get("ETag", ""), len(data)

    async with task_group() as group:
        for _ in range(min(PART_WORKERS, count)):
            group.start_soon(worker)
    return etags


def _read_part(path: Path, offset: int, length: int) -> tuple[bytes, bytes]:
    with open(path, "rb") as handle:
        data = os.pread(handle.fileno(), length, offset)
    return data, md5_digest(data)


async def _complete(target: Target, upload_id: str, etags: list[str]) -> None:
    parts = [{"PartNumber": n + 1, "ETag": etag} for n, etag in enumerate(etags)]
    what = f"complete multipart upload {target.key}"
    try:
        with aws_errors(what):
            await target.client.complete_multipart_upload(
                Bucket=target.bucket, Key=target.key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
    except ResourceNotFound:
        # NoSuchUpload: an attempt whose answer was lost may have completed it already
        if await _stored_etag(target) != multipart_etag(etags):
            raise TransientError(
                f"{what}: the upload is gone and the object is not it") from None
        return


def multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives an object assembled from parts with these ETags."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(etags)}"


async def _stored_etag(target: Target) -> str | None:
    try:
        with aws_errors(f"head {target.key}"):
            head = await target.client.head_object(Bucket=target.bucket, Key=target.key)
    except (ResourceNotFound, ObjectNotFound):
        return None
    return head.get("ETag", "").strip('"')


async def _abort(target: Target, upload_id: str) -> None:
    try:
        await target.client.abort_multipart_upload(Bucket=target.bucket, Key=target.key,
                                                   UploadId=upload_id)
    except Exception:  # noqa: BLE001 - best effort; a lifecycle rule reaps leftovers
        pass


async def download_ranges(target: Target, path: Path, first: bytes, total: int, etag: str,
                          expected: str | None, progress: Progress | None) -> None:
    """Fetch the rest of an object (``first`` holds its head) into ``path`` in parallel ranges.

    The file is preallocated and every range written at its offset; ``If-Match`` pins all
    ranges to the version whose head was read. With an ``expected`` md5 the file is hashed
    behind the transfer, in order, as soon as each stretch from the start is complete.
    """
    head, step = len(first), part_size(total)
    fd = await anyio.to_thread.run_sync(preallocate, path, total)
    hasher = _Hasher(fd) if expected else None
    try:
        await anyio.to_thread.run_sync(write_all, fd, memoryview(first), 0)
        ranges = iter(range(head, total, step))

        async def worker() -> None:
            for start in ranges:
                end = min(start + step, total)
                async with target.slots:
                    await retrying(partial(
                        _get_range, target, fd, start, end - 1, etag, progress))
                if hasher:
                    await hasher.completed(start, end)

        async with task_group() as group:
            if hasher:
                group.start_soon(hasher.completed, 0, head)
            for _ in range(min(PART_WORKERS, -(-(total - head) // step))):
                group.start_soon(worker)
    finally:
        await anyio.to_thread.run_sync(os.close, fd)
    if hasher and expected:
        check_md5(f"download {target.key}", hasher.hexdigest(total), expected)


class _Hasher:
    """The md5 of a file written in ranges, computed in order in a worker thread while the
    later ranges still arrive (instead of reading the whole file again at the end)."""

    def __init__(self, fd: int):
        self.fd, self.next = fd, 0
        self.digest = hashlib.md5(usedforsecurity=False)
        self.ready: dict[int, int] = {}
        self.busy = False

    async def completed(self, start: int, end: int) -> None:
        """``[start, end)`` is on disk; hash whatever is now contiguous from the start."""
        self.ready[start] = end
        if self.busy:  # the task hashing now will find this range when it looks again
            return
        self.busy = True
        try:
            while self.next in self.ready:
                end = self.ready.pop(self.next)
                await anyio.to_thread.run_sync(_hash_range, self.digest, self.fd, self.next,
                                               end)
                self.next = end
        finally:
            self.busy = False

    def hexdigest(self, total: int) -> str:
        if self.next != total:
            raise IntegrityError(f"hashed {self.next} of {total} bytes")
        return self.digest.hexdigest()


def _hash_range(digest: Any, fd: int, start: int, end: int) -> None:
    while start < end:
        chunk = os.pread(fd, min(4 * MiB, end - start), start)
        if not chunk:
            raise IntegrityError(f"short file at {start}")
        digest.update(chunk)
        start += len(chunk)





async def _get_range(target: Target, fd: int, start: int, end: int, etag: str,
                     progress: Progress | None) -> None:
    headers = {"Range": f"bytes={start}-{end}", "If-Match": f'"{etag}"'}
    async with target.wire.request("GET", target.key, headers=headers,
                                   what=f"download {target.key}") as resp:
        if resp.status != 206:
            raise TransientError(f"download {target.key}: range ignored (HTTP {resp.status})")
        offset = start + await write_body(resp, fd, start)
    if offset != end + 1:
        raise TransientError(f"download {target.key}: short range {start}-{end}")
    if progress:
        progress(offset - start)

"""S3 multipart upload: the parts on the core's transport, the control on botocore.

A large upload is many requests; one failed part must not cost the whole file, so parts
(unlike whole objects, which the sync engine retries) are retried here with backoff
(:func:`tpi_core.transport.ranges.upload_parts`, which reads and hashes them in worker
threads). Create, complete and abort go through the botocore client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tpi_aws._wire import Wire
from tpi_aws.errors import aws_errors
from tpi_core.errors import ObjectNotFound, ResourceNotFound, TransientError
from tpi_core.storage import Progress
from tpi_core.transport.hashing import content_md5
from tpi_core.transport.ranges import PART_ATTEMPTS, part_size, retrying, upload_parts

__all__ = ["PART_ATTEMPTS", "Target", "multipart_etag", "upload_multipart"]


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
    with aws_errors(f"create multipart upload {target.key}"):
        tags = {"Tagging": target.tagging} if target.tagging else {}
        created = await target.client.create_multipart_upload(Bucket=target.bucket,
                                                               Key=target.key, **tags)
    upload_id = created["UploadId"]
    try:
        etags = await upload_parts(path, size, part_size(size), _part_sender(target, upload_id),
                                   target.slots, progress)
        await retrying(lambda: _complete(target, upload_id, etags))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _abort(target, upload_id)
        raise


def _part_sender(target: Target, upload_id: str) -> Callable[[int, bytes, bytes],
                                                             Awaitable[str]]:
    async def put(number: int, data: bytes, digest: bytes) -> str:
        query = {"partNumber": number, "uploadId": upload_id}
        what = f"upload part {number} of {target.key}"
        async with target.wire.request("PUT", target.key, query=query, data=data,
                                       headers=content_md5(digest), what=what) as resp:
            target.wire.check_stored(what, resp.headers, digest)
            return resp.headers.get("ETag", "")

    return put


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

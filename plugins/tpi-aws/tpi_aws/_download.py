"""The download of one object: its first 8 MiB in one GET, then the rest as its size says.

Up to 1 MiB the answer is held and written whole; larger, it streams to the file. What an
object above 8 MiB has left comes in one stream on a worker thread (:mod:`tpi_aws._bulk`),
pinned with If-Match to the version the first answer came from; above 256 MiB in parallel
ranges. The bytes are checked against the ETag when it is an md5 (single part, no KMS);
when it is not, they are not hashed at all (a 200 MB object uploaded in parts: 0.3 s of CPU
for a hash nothing could be compared with).
An empty object has no byte 0: S3 answers 416 to the range, and it is asked for whole.

An object the storage has just listed above 8 MiB (and up to 256 MiB) needs no first GET:
its size is known, so it comes whole in the worker thread's stream at once, pinned with
If-Match to the listed ETag (one request fewer, and no 8 MiB through the event loop: 200 MB
from a local server in 0.38 s instead of 0.44). Had it changed since, S3 answers 412, a
transient error, and the retry goes the usual way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tpi_aws import _transfer
from tpi_aws._stream import INLINE_IO, MEMORY_MAX, check_md5, stream_to_file
from tpi_aws._transfer import SINGLE_MAX, Target, is_md5_etag
from tpi_aws._wire import Wire
from tpi_core.errors import TransientError
from tpi_core.storage import Progress

RANGES_FROM = 256 << 20
"""Larger objects come in parallel ranges (rclone's multi-thread cutoff); smaller ones in
one stream read on a worker thread, which a local link fills faster than parallel ranges
read on the event loop."""
LISTED_MAX = 10_000
"""Listed objects remembered per storage, at most (each until its download)."""


class Listed:
    """Size and ETag of the objects a storage listed that can skip the first GET."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, str]] = {}

    def saw(self, full: str, size: int, etag: str) -> None:
        if SINGLE_MAX < size <= RANGES_FROM and etag and len(self._known) < LISTED_MAX:
            self._known[full] = (size, etag)

    def take(self, full: str) -> tuple[int, str] | None:
        """What the listing said of ``full``, once: a retry goes the usual way."""
        return self._known.pop(full, None)


async def fetch(wire: Wire, full: str, path: Path, progress: Progress | None,
                target: Callable[[], Awaitable[Target]],
                listed: tuple[int, str] | None = None) -> None:
    """Download the object ``full`` to ``path`` (``target`` gives what parallel ranges
    need, asked only for objects that large; ``listed``: its size and ETag, just listed)."""
    if listed is not None:
        await _fetch_listed(wire, full, path, progress, *listed)
        return
    head = await _first_part(wire, full, path, progress)
    if head is None:
        return  # it came whole
    if head.total > RANGES_FROM:
        await _transfer.download_ranges(await target(), path, head.data, head.total,
                                        head.etag, head.expected, progress)
    else:
        from tpi_aws._bulk import fetch_rest  # http.client: only for large objects

        await fetch_rest(wire, full, path, head.written, head.total, head.etag, head.digest,
                         progress)


async def _fetch_listed(wire: Wire, full: str, path: Path, progress: Progress | None,
                        size: int, etag: str) -> None:
    from tpi_aws._bulk import fetch_rest

    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    digest = hashlib.md5(usedforsecurity=False) if is_md5_etag(etag, {}) else None
    await fetch_rest(wire, full, path, 0, size, etag, digest, progress)


async def _first_part(wire: Wire, full: str, path: Path, progress: Progress | None,
                      ranged: bool = True) -> _Head | None:
    """GET the first 8 MiB: all of most objects. The object's size decides the rest:
    up to 1 MiB it is held and written whole; larger, it streams to the file, and what
    an object above 8 MiB has left comes on a worker thread; above 256 MiB the head is
    held for parallel ranges. None when nothing is left to fetch."""
    what = f"download {full}"
    asked = {"Range": f"bytes=0-{SINGLE_MAX - 1}"} if ranged else {}
    async with wire.request("GET", full, what=what, headers=asked,
                            accept=(416,) if ranged else ()) as resp:
        empty = resp.status == 416  # an empty object has no byte 0: ask for all of it
        if not empty:
            head = await _head_of(what, resp, path, progress)
    if empty:  # (once this answer's connection is free again)
        return await _first_part(wire, full, path, progress, ranged=False)
    if head is None:
        return None
    if progress:
        progress(len(head.data))
    if len(head.data) < head.total:
        return head
    if len(head.data) <= INLINE_IO:
        _write_checked(path, head.data, head.expected, full)
    else:
        await anyio.to_thread.run_sync(_write_checked, path, head.data, head.expected, full)
    return None


def _write_checked(path: Path, data: bytes, expected: str | None, what: str) -> None:
    if expected:
        check_md5(f"download {what}", _transfer.md5_hex(data), expected)
    with open(path, "wb") as handle:
        handle.write(data)


@dataclass(frozen=True)
class _Head:
    """The first part of an object being downloaded, and what it says of the whole."""

    total: int
    etag: str
    expected: str | None  # the md5 to check, when the ETag is one
    data: bytes  # the head in memory, or ...
    written: int = 0  # ... this many bytes of it already in the file,
    digest: Any = None  # hashed into this


async def _head_of(what: str, resp: Any, path: Path, progress: Progress | None) -> _Head | None:
    """What a download's first answer carries: held in memory, or streamed to the file
    (None when that was the whole object)."""
    etag = resp.headers.get("ETag", "").strip('"')
    expected = etag if is_md5_etag(etag, resp.headers) else None
    total = _object_size(resp)
    if total == 0:
        # an empty object: some servers (s3rver) answer a range of it with 206, a
        # Content-Length of 1 and no body; waiting for that byte stalled each empty file
        # for the read timeout. Its connection is not reused: the body was not read.
        return _Head(0, etag, expected, b"")
    if total > MEMORY_MAX and not (resp.status == 206 and total > RANGES_FROM):
        digest = hashlib.md5(usedforsecurity=False) if expected else None
        whole = resp.content_length == total  # else the range was honoured
        written = await stream_to_file(what, resp, path, expected if whole else None,
                                       progress, digest)
        return None if whole else _Head(total, etag, expected, b"", written, digest)
    return _Head(total, etag, expected, await resp.read())


def _object_size(resp: Any) -> int:
    """The whole object's size: from Content-Range for a part, else the body's length."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if not total.isdigit():
            raise TransientError(f"no object size in Content-Range {total!r}")
        return int(total)
    return resp.content_length or 0

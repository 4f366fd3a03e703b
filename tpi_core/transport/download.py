"""The download of one object: its first 8 MiB in one GET, then the rest as its size says.

Up to 1 MiB the answer is held and written whole; larger, it streams to the file. What an
object above 8 MiB has left comes in one stream on a worker thread (:mod:`.bulk`), pinned
(the protocol's ``pinned``: If-Match on S3) to the version the first answer came from;
above 256 MiB in parallel ranges (:mod:`.ranges`). The bytes are checked against the md5
the service vouches for (:meth:`~.protocol.ObjectProtocol.md5_of`); when it vouches for
none, they are not hashed at all (CPU spent on a hash nothing could be compared with).
An empty object has no byte 0: services answer 416 to the range, and it is asked for whole.

An object the storage has just listed above 8 MiB (and up to 256 MiB) needs no first GET:
its size is known, so it comes whole in the worker thread's stream at once, pinned to the
listed version: one request fewer, and no 8 MiB through the event loop, which is
measurably faster (benchmarks/README.md). Had it changed since, the service refuses (S3: 412, a
transient error), and the retry goes the usual way.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from tpi_core.errors import TransientError
from tpi_core.storage import Progress
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.exceptions import NetworkError, UntrustedCertificate
from tpi_core.transport.files import INLINE_IO, MEMORY_MAX, check_md5, stream_to_file
from tpi_core.transport.hashing import md5_hex
from tpi_core.transport.ranges import SINGLE_MAX, download_ranges

RANGES_FROM = 256 << 20
"""Larger objects come in parallel ranges (rclone's multi-thread cutoff); smaller ones in
one stream read on a worker thread, which a local link fills faster than parallel ranges
read on the event loop."""
LISTED_MAX = 10_000
"""Listed objects remembered per storage, at most (each until its download)."""


class Known(NamedTuple):
    """What a listing said of an object: its size, version and md5 (None: no md5 known)."""

    size: int
    version: str
    md5: str | None


class Listed:
    """Objects a storage listed that can skip the first GET of their download."""

    def __init__(self) -> None:
        self._known: dict[str, Known] = {}

    def saw(self, key: str, size: int, version: str, md5: str | None) -> None:
        """Remember a listed object when its download could use it."""
        if SINGLE_MAX < size <= RANGES_FROM and version and len(self._known) < LISTED_MAX:
            self._known[key] = Known(size, version, md5)

    def take(self, key: str) -> Known | None:
        """What the listing said of ``key``, once: a retry goes the usual way."""
        return self._known.pop(key, None)


async def fetch(endpoint: Endpoint, key: str, path: Path, progress: Progress | None,
                slots: anyio.CapacityLimiter, listed: Known | None = None) -> None:
    """Download the object ``key`` to ``path`` (``slots`` bounds the parallel ranges of
    all downloads; ``listed``: what a listing just said of it)."""
    if listed is not None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        digest = hashlib.md5(usedforsecurity=False) if listed.md5 else None
        await fetch_rest(endpoint, key, path, 0, listed.size, listed.version, digest,
                         progress)
        return
    head = await _first_part(endpoint, key, path, progress)
    if head is None:
        return  # it came whole
    if head.total > RANGES_FROM:
        await download_ranges(endpoint, key, slots, path, head.data, head.total,
                              endpoint.protocol.pinned(head.version), head.expected, progress)
    else:
        await fetch_rest(endpoint, key, path, head.written, head.total, head.version,
                         head.digest, progress)


async def fetch_rest(endpoint: Endpoint, key: str, path: Path, written: int, total: int,
                     version: str, digest: Any, progress: Progress | None) -> None:
    """Fetch the rest of an object whose first ``written`` bytes are in ``path`` (hashed
    into ``digest``) from one stream read on a worker thread, pinned to ``version``; when
    the answer vouches for an md5, the whole is checked against it. ``digest`` None: no md5
    is known, and nothing is hashed."""
    from tpi_core.transport.bulk import Failed, fetch_into  # http.client: large objects only

    what = f"download {key}"
    target, headers = await endpoint.prepare("GET", key, headers={
        "Range": f"bytes={written}-", **endpoint.protocol.pinned(version)})
    stop = threading.Event()

    def fetch_on_thread() -> Failed | tuple[int, Any]:
        fd = os.open(path, os.O_WRONLY)
        try:
            return fetch_into(endpoint.bulk, target, headers, fd, written, digest, progress,
                              stop, expect=(206,) if written else (200, 206))
        finally:
            os.close(fd)

    try:
        got = await anyio.to_thread.run_sync(fetch_on_thread, abandon_on_cancel=True)
    except (NetworkError, UntrustedCertificate) as exc:
        raise endpoint.failed(what, exc) from exc
    finally:
        stop.set()  # a cancelled caller: the thread stops at its next read
    if isinstance(got, Failed):
        if got.status < 300:
            raise TransientError(f"{what}: range ignored (HTTP {got.status})")
        raise endpoint.protocol.error(got.status, got.reason, got.body, what)
    count, answer = got
    if written + count != total:
        raise TransientError(f"{what}: {written + count} of {total} bytes")
    expected = endpoint.protocol.md5_of(answer)
    if digest is not None and expected is not None:
        check_md5(what, digest.hexdigest(), expected)


@dataclass(frozen=True)
class _Head:
    """The first part of an object being downloaded, and what it says of the whole."""

    total: int
    version: str
    expected: str | None  # the md5 to check, when the service vouches for one
    data: bytes  # the head in memory, or ...
    written: int = 0  # ... this many bytes of it already in the file,
    digest: Any = None  # hashed into this


async def _first_part(endpoint: Endpoint, key: str, path: Path, progress: Progress | None,
                      ranged: bool = True) -> _Head | None:
    """GET the first 8 MiB: all of most objects. The object's size decides the rest:
    up to 1 MiB it is held and written whole; larger, it streams to the file, and what
    an object above 8 MiB has left comes on a worker thread; above 256 MiB the head is
    held for parallel ranges. None when nothing is left to fetch."""
    what = f"download {key}"
    asked = {"Range": f"bytes=0-{SINGLE_MAX - 1}"} if ranged else {}
    async with endpoint.request("GET", key, what=what, headers=asked,
                                accept=(416,) if ranged else ()) as resp:
        empty = resp.status == 416  # an empty object has no byte 0: ask for all of it
        if not empty:
            head = await _head_of(endpoint, what, resp, path, progress)
    if empty:  # (once this answer's connection is free again)
        return await _first_part(endpoint, key, path, progress, ranged=False)
    if head is None:
        return None
    if progress:
        progress(len(head.data))
    if len(head.data) < head.total:
        return head
    if len(head.data) <= INLINE_IO:
        _write_checked(path, head.data, head.expected, what)
    else:
        await anyio.to_thread.run_sync(_write_checked, path, head.data, head.expected, what)
    return None


def _write_checked(path: Path, data: bytes, expected: str | None, what: str) -> None:
    if expected:
        check_md5(what, md5_hex(data), expected)
    with open(path, "wb") as handle:
        handle.write(data)


async def _head_of(endpoint: Endpoint, what: str, resp: Any, path: Path,
                   progress: Progress | None) -> _Head | None:
    """What a download's first answer carries: held in memory, or streamed to the file
    (None when that was the whole object)."""
    version = endpoint.protocol.version(resp.headers)
    expected = endpoint.protocol.md5_of(resp.headers)
    total = _object_size(resp)
    if total == 0:
        # an empty object: some servers (s3rver) answer a range of it with 206, a
        # Content-Length of 1 and no body; waiting for that byte stalled each empty file
        # for the read timeout. Its connection is not reused: the body was not read.
        return _Head(0, version, expected, b"")
    if total > MEMORY_MAX and not (resp.status == 206 and total > RANGES_FROM):
        digest = hashlib.md5(usedforsecurity=False) if expected else None
        whole = resp.content_length == total  # else the range was honoured
        written = await stream_to_file(what, resp, path, expected if whole else None,
                                       progress, digest)
        return None if whole else _Head(total, version, expected, b"", written, digest)
    return _Head(total, version, expected, await resp.read())


def _object_size(resp: Any) -> int:
    """The whole object's size: from Content-Range for a part, else the body's length."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if not total.isdigit():
            raise TransientError(f"no object size in Content-Range {total!r}")
        return int(total)
    return resp.content_length or 0


"""Streaming between files and bodies: chunked reads hashed on the way, bodies written as
they arrive, a few MiB per worker-thread hop (hashlib and file I/O release the GIL, so they
run beside the event loop on a second core). File reads of streamed bodies go through
:func:`file_threads`, as asyncio's default executor bounded them before (a few threads):
64 uploads reading at once do not make a disk faster."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from tpi_core.errors import IntegrityError
from tpi_core.storage import Progress
from tpi_core.transport.hashing import md5_digest
from tpi_core.transport.pool import Stream

MiB = 1 << 20
_CHUNK = 1 * MiB
_PWRITEV = hasattr(os, "pwritev")
WRITE_BATCH = 512 << 10
"""Bytes gathered before a worker thread writes them: larger batches held much more memory
with 64 files in flight, and were no faster (benchmarks/README.md)."""

INLINE_IO = 64 << 10
"""Files and bodies up to this size are read and written without a thread hop."""
_FILE_THREADS: RunVar[anyio.CapacityLimiter] = RunVar("tpi_file_threads")
MEMORY_MAX = 1 << 20
"""Bodies up to this size are held whole in memory (an upload then carries Content-MD5);
larger ones stream, so memory stays bounded at any ``--jobs``."""


async def file_chunks(path: Path, size: int, digest: Any, progress: Progress | None,
                      offset: int = 0) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of a file (from ``offset`` on) in chunks, hashed into
    ``digest`` (when given) as they go.

    Each chunk is read and hashed in a worker thread; the pool reads one chunk ahead of
    the socket (:func:`tpi_core.transport.pool._send_stream`). A file that shrank meanwhile
    ends early (the request then fails: the length was announced); one that grew is sent
    as it was when its size was taken.
    """
    handle = open(path, "rb")  # noqa: ASYNC230, SIM115 - closed below; opening is quick
    handle.seek(offset)
    left, limiter = [size - offset], file_threads()
    try:
        while chunk := await anyio.to_thread.run_sync(_read_hashed, handle, digest, left,
                                                      limiter=limiter):
            yield chunk
            if progress:
                progress(len(chunk))
    finally:
        handle.close()


class HashedFile:
    """A file as a streamed request body, hashed while it is sent (a Content-MD5 up front
    would mean reading the file twice): compare :meth:`digest` with what the service
    stored. A retry streams and hashes it again; the digest is the last attempt's."""

    def __init__(self, path: Path, size: int, progress: Progress | None = None):
        self._path, self._size, self._progress = path, size, progress
        self._hashes: list[Any] = []
        self.body = Stream(size, self._open)

    def _open(self) -> AsyncIterator[bytes]:
        self._hashes.append(hashlib.md5(usedforsecurity=False))
        return file_chunks(self._path, self._size, self._hashes[-1], self._progress)

    def digest(self) -> bytes:
        """The md5 of what the last attempt sent."""
        return self._hashes[-1].digest()


async def read_upload(path: Path) -> tuple[int, bytes | None, bytes | None]:
    """A file about to be uploaded: its size and, up to MEMORY_MAX, its bytes and md5. A
    file up to INLINE_IO is read on the event loop (a local read of a few kB costs less than
    the hop to a worker thread), a larger one in a worker thread."""
    with open(path, "rb") as handle:  # noqa: ASYNC230 - a read of a few kB at most
        if os.fstat(handle.fileno()).st_size <= INLINE_IO:
            return _read_small(handle)
    return await anyio.to_thread.run_sync(_read_file, path)


def _read_file(path: Path) -> tuple[int, bytes | None, bytes | None]:
    with open(path, "rb") as handle:
        return _read_small(handle)


def _read_small(handle: Any) -> tuple[int, bytes | None, bytes | None]:
    size = os.fstat(handle.fileno()).st_size
    if size > MEMORY_MAX:
        return size, None, None
    data = handle.read()
    return size, data, md5_digest(data)


def file_threads() -> anyio.CapacityLimiter:
    """The limiter of the threads that read streamed bodies (8 per event loop)."""
    try:
        return _FILE_THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(8)
        _FILE_THREADS.set(limiter)
        return limiter


def _read_hashed(handle: Any, digest: Any, left: list[int]) -> bytes:
    chunk = handle.read(min(_CHUNK, left[0]))
    if digest is not None:
        digest.update(chunk)
    left[0] -= len(chunk)
    return chunk


async def stream_to_file(what: str, resp: Any, path: Path, expected: str | None,
                         progress: Progress | None, digest: Any = None) -> int:
    """Write a response body to ``path`` as it arrives, a few MiB per thread hop, hashed
    there too (into ``digest`` when given, to go on with); compared with the ``expected``
    md5 at the end. With neither, nothing is hashed. Returns the bytes written."""
    if digest is None and expected:
        digest = hashlib.md5(usedforsecurity=False)
    fd = await anyio.to_thread.run_sync(preallocate, path, resp.content_length or 0)
    try:
        written = await write_body(resp, fd, 0, digest, progress)
    finally:
        await anyio.to_thread.run_sync(os.close, fd)
    if expected:
        check_md5(what, digest.hexdigest(), expected)
    return written


async def write_body(resp: Any, fd: int, offset: int, digest: Any = None,
                     progress: Progress | None = None) -> int:
    """Write a response body into ``fd`` from ``offset`` as it arrives, WRITE_BATCH bytes
    per worker-thread hop (hashed there into ``digest`` when given); the bytes written."""
    start, pieces, batch = offset, [], 0
    async for chunk in chunks(resp):
        pieces.append(chunk)
        batch += len(chunk)
        if batch >= WRITE_BATCH:
            await anyio.to_thread.run_sync(_write_hashed, fd, pieces, offset, digest)
            offset, pieces, batch = _advanced(offset, batch, progress), [], 0
    if pieces:
        await anyio.to_thread.run_sync(_write_hashed, fd, pieces, offset, digest)
        offset = _advanced(offset, batch, progress)
    return offset - start


def _advanced(offset: int, batch: int, progress: Progress | None) -> int:
    if progress:
        progress(batch)
    return offset + batch


def _write_hashed(fd: int, pieces: list[bytes], offset: int, digest: Any) -> None:
    write_at(fd, pieces, offset)
    for piece in pieces if digest is not None else ():
        digest.update(piece)


def write_at(fd: int, pieces: list[bytes], offset: int) -> None:
    """Write ``pieces`` one after another from ``offset``: in one call where the system has
    ``pwritev`` (not every macOS does), and whatever a short write left, piece by piece."""
    done = os.pwritev(fd, pieces, offset) if _PWRITEV else 0
    for piece in pieces:
        skip = min(done, len(piece))
        done -= skip
        write_all(fd, memoryview(piece)[skip:], offset + skip)
        offset += len(piece)


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


async def chunks(resp: Any) -> AsyncIterator[bytes]:
    """A response's body, chunk by chunk."""
    while chunk := await resp.read_chunk(_CHUNK):
        yield chunk


def preallocate(path: Path, total: int) -> int:
    """Open ``path`` for writing, truncated to ``total`` bytes; its descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, total)
    return fd


def check_md5(what: str, actual: str, expected: str) -> None:
    """Raise IntegrityError when the md5 of what arrived differs from the one the storage
    gave (an S3 ETag, GCS's x-goog-hash, Azure's Content-MD5, as hex)."""
    if actual != expected:
        raise IntegrityError(f"{what}: md5 {actual} does not match the stored md5 {expected}")

"""Parallel parts of a large upload, parallel ranges of a large download, and the retry of
one part or range.

A large transfer is many requests; one failed range must not cost the whole file, so
ranges and parts (unlike whole objects, which the sync engine retries) are retried here
with backoff. Ranges are written at their offsets in a preallocated file and hashed in
order behind the transfer (:class:`~.hashing.InOrderHasher`).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio

from tpi_core.concurrent import task_group
from tpi_core.errors import TransientError
from tpi_core.storage import Progress
from tpi_core.sync.retry import RetryPolicy
from tpi_core.sync.retry import retrying as sync_retrying
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.files import check_md5, preallocate, write_all, write_body
from tpi_core.transport.hashing import InOrderHasher, md5_digest

T = TypeVar("T")
MiB = 1 << 20
SINGLE_MAX = 8 * MiB
"""Objects up to this size move in one request; larger ones in pieces of at least this."""
PART_WORKERS = 8
PART_ATTEMPTS = 6
PART_RETRY = RetryPolicy(attempts=PART_ATTEMPTS, base=0.05, cap=2.0)


def part_size(size: int) -> int:
    """8 MiB, or larger (whole MiB) so a file never takes more than 9,000 pieces (S3 and
    GCS XML allow 10,000 parts, Azure 50,000 blocks)."""
    return max(SINGLE_MAX, -(-size // (9_000 * MiB)) * MiB)


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """Run one part or range again on transient errors and damaged bodies (the sync
    engine's backoff with full jitter, PART_ATTEMPTS times)."""
    return await sync_retrying(PART_RETRY, lambda _moved: call())


async def upload_parts(path: Path, size: int, step: int,
                       put: Callable[[int, bytes, bytes], Awaitable[str]],
                       slots: anyio.CapacityLimiter, progress: Progress | None) -> list[str]:
    """Send a file in parts of ``step`` bytes, PART_WORKERS at a time (each holding one of
    ``slots``): ``put(number, data, md5)`` sends part ``number`` (from 1) and returns what
    the service calls it (S3's ETag, Azure's block id), retried on its own. Parts are read
    and hashed in worker threads, which overlap the network on a second core."""
    count = -(-size // step)
    names = [""] * count
    numbers = iter(range(count))

    async def send(index: int) -> int:
        data, digest = await anyio.to_thread.run_sync(_read_part, path, index * step, step)
        names[index] = await put(index + 1, data, digest)
        return len(data)

    async def worker() -> None:
        for index in numbers:
            async with slots:
                sent = await retrying(partial(send, index))
            if progress:
                progress(sent)

    async with task_group() as group:
        for _ in range(min(PART_WORKERS, count)):
            group.start_soon(worker)
    return names


def _read_part(path: Path, offset: int, length: int) -> tuple[bytes, bytes]:
    with open(path, "rb") as handle:
        data = os.pread(handle.fileno(), length, offset)
    return data, md5_digest(data)


async def download_ranges(endpoint: Endpoint, key: str, slots: anyio.CapacityLimiter,
                          path: Path, first: bytes, total: int, pin: Mapping[str, str],
                          expected: str | None, progress: Progress | None) -> None:
    """Fetch the rest of the object ``key`` (``first`` holds its head) into ``path`` in
    parallel ranges, at most ``slots`` at once over all downloads.

    The file is preallocated and every range written at its offset; ``pin`` (the
    protocol's :meth:`~.protocol.ObjectProtocol.pinned`) holds all ranges to the version
    whose head was read. With an ``expected`` md5 the file is hashed behind the transfer,
    in order, as soon as each stretch from the start is complete.
    """
    head, step = len(first), part_size(total)
    fd = await anyio.to_thread.run_sync(preallocate, path, total)
    hasher = InOrderHasher(fd) if expected else None
    try:
        await anyio.to_thread.run_sync(write_all, fd, memoryview(first), 0)
        ranges = iter(range(head, total, step))

        async def worker() -> None:
            for start in ranges:
                end = min(start + step, total)
                async with slots:
                    await retrying(partial(_get_range, endpoint, key, fd, start, end - 1,
                                           pin, progress))
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
        check_md5(f"download {key}", hasher.hexdigest(total), expected)


async def _get_range(endpoint: Endpoint, key: str, fd: int, start: int, end: int,
                     pin: Mapping[str, str], progress: Progress | None) -> None:
    headers = {"Range": f"bytes={start}-{end}", **pin}
    async with endpoint.request("GET", key, headers=headers,
                                what=f"download {key}") as resp:
        if resp.status != 206:
            raise TransientError(f"download {key}: range ignored (HTTP {resp.status})")
        offset = start + await write_body(resp, fd, start)
    if offset != end + 1:
        raise TransientError(f"download {key}: short range {start}-{end}")
    if progress:
        progress(offset - start)

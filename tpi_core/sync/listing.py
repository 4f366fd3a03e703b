"""One listing of a storage prefix, sorted by key, read as several ranges at once when it can.

A listing comes a page of 1,000 keys per request, each request waiting for the one before
(its continuation token): 100,000 objects on S3 are 100 round trips in a row. A storage that
lists in key order and starts after a given key (``Storage.LISTS_AFTER``, S3's
``start-after``) can be read in ranges instead. The first range starts at once; the old
manifest, fetched meanwhile, holds the keys of the last sync in order, so every 990th of
them splits the rest into ranges of a page, read ``LIST_RANGES`` at a time. The ranges
cover every key exactly once whatever the bounds (a key after the last bound belongs to the
last range), so bounds that no longer match the storage cost speed, never objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing

import anyio

from tpi_core.storage import Storage
from tpi_core.sync import spill
from tpi_core.sync.plan import RemoteObject
from tpi_core.sync.retry import RetryPolicy, retrying

LIST_PAGE = 1000
"""Keys per listing request (S3's most)."""
SLACK = 10
"""Keys a range leaves free in its page: a range of LIST_PAGE - SLACK keys of the last sync
takes one request even with a few new keys in it (or the manifest itself, in the first)."""
LIST_RANGES = 8
"""Ranges of one listing read at once, beside the first."""

Listing = spill.SortedSpill[tuple[str, RemoteObject]]
"""A listing sorted by key: ``(key, (size, etag, mtime))`` pairs."""
Bounds = Callable[[], Awaitable[list[str]]]
"""Keys that split a listing into ranges, sorted (awaited while the first range is read)."""


async def list_remote(storage: Storage, prefix: str, retry: RetryPolicy,
                      accept: Callable[[str], bool] = lambda key: True,
                      bounds: Bounds | None = None) -> Listing:
    """One listing under ``prefix`` (retried whole), sorted by key whatever order the
    storage lists in, held in memory up to a run and on disk beyond it. With ``bounds`` and
    a storage that lists after a key, it is read as ranges at once."""
    async def attempt(_moved: object) -> Listing:
        listing = spill.pairs(list, tuple)  # (size, etag, mtime) as a JSON array
        try:
            await _read(storage, prefix, accept, listing,
                        bounds if storage.LISTS_AFTER else None)
        except BaseException:
            listing.close()
            raise
        return listing

    return await retrying(retry, attempt)


class _Range:
    """Keys after ``after`` up to ``stop`` (None: from the first, to the last)."""

    def __init__(self, after: str | None, stop: str | None):
        self.after, self.stop = after, stop
        self.last: str | None = None  # the last key read so far
        self.done = False


async def _read(storage: Storage, prefix: str, accept: Callable[[str], bool], listing: Listing,
                bounds: Bounds | None) -> None:
    first = _Range(None, None)
    errors: list[Exception] = []

    async def read(part: _Range) -> None:
        after = {"start_after": part.after} if part.after is not None else {}
        try:
            async with aclosing(storage.list(prefix, **after)) as infos:
                async for info in infos:
                    if part.stop is not None and info.key > part.stop:
                        break
                    part.last = info.key
                    if accept(info.key):
                        listing.add((info.key, (info.size, info.etag, info.mtime)))
                    if info.key == part.stop:
                        break  # the range's last key: no request for a page after it
        except Exception as exc:  # raised below as is, not inside an exception group
            errors.append(exc)
            group.cancel_scope.cancel()
        part.done = True

    async def read_limited(part: _Range, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            await read(part)

    async with anyio.create_task_group() as group:
        group.start_soon(read, first)
        if bounds is not None:
            keys = await bounds()
            # no await from here on until the ranges are set: the first range is paused at a
            # request, so its last key cannot move while the rest is split after it
            split = [key for key in keys if first.last is None or key > first.last]
            if split and not first.done:
                first.stop = split[0]
                limiter = anyio.CapacityLimiter(LIST_RANGES)
                for after, stop in zip(split, [*split[1:], None]):
                    group.start_soon(read_limited, _Range(after, stop), limiter)
    if errors:
        raise errors[0]


def every_page(keys: Iterator[str], prefix: str) -> list[str]:
    """Every (LIST_PAGE - SLACK)-th key under ``prefix``, in order: bounds of ranges that
    each fit in one page."""
    under = (key for key in keys if key.startswith(prefix))
    step = max(1, LIST_PAGE - SLACK)
    return list(itertools.islice(under, step - 1, None, step))

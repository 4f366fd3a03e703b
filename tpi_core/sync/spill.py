"""Sorting in bounded memory: what does not fit in a run goes to sorted runs on disk.

A sync compares three streams sorted by key (the local walk, the one remote listing and the
manifest) instead of holding any of them as a dictionary, so 100,000 files never mean
100,000 objects in memory at once. Up to ``RUN_ITEMS`` items are kept and sorted in memory;
beyond that every ``RUN_ITEMS`` are sorted and written to an unnamed temporary file as JSON
(keys may hold newlines or undecodable bytes: JSON escapes both), ``LINE_ITEMS`` items a
line so that the C encoder and decoder do the work, and reading merges the runs with
``heapq.merge``, one line of each run in memory at a time.
"""

from __future__ import annotations

import heapq
import itertools
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

from tpi_core.errors import StorageError

T = TypeVar("T")

RUN_ITEMS = 16_384
"""Items kept in memory before a sorted run is written to disk."""
LINE_ITEMS = 512
"""Items per line of a run on disk."""


class SortedSpill(Generic[T]):
    """Items added in any order, read back sorted by ``key`` (equal keys: order of adding).

    ``encode`` turns an item into JSON-able data and ``decode`` back; they are used only
    for items that go to disk. Reading may be repeated, one pass at a time; adding after a
    read is allowed. Close it (or use ``with``) to drop the temporary files.
    """

    def __init__(self, key: Callable[[T], str], encode: Callable[[T], Any],
                 decode: Callable[[Any], T], *, run_items: int | None = None):
        self._key, self._encode, self._decode = key, encode, decode
        self._run_items = max(1, run_items or RUN_ITEMS)
        self._items: list[T] = []
        self._runs: list[IO[str]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, item: T) -> None:
        """Take one item."""
        self._items.append(item)
        self._count += 1
        if len(self._items) >= self._run_items:
            self._spill()

    def extend(self, items: Iterable[T]) -> None:
        """Take every item of ``items``."""
        for item in items:
            self.add(item)

    def __iter__(self) -> Iterator[T]:
        self._items.sort(key=self._key)  # stable: adding order among equal keys
        if not self._runs:
            return iter(self._items)
        return heapq.merge(*(self._read(run) for run in self._runs), self._items, key=self._key)

    def _spill(self) -> None:
        self._items.sort(key=self._key)
        run = tempfile.TemporaryFile("w+", encoding="ascii", prefix="tpi-sort-")
        run.writelines(chunk_lines(map(self._encode, self._items)))
        self._runs.append(run)
        self._items = []

    def _read(self, run: IO[str]) -> Iterator[T]:
        run.flush()
        run.seek(0)
        decode = self._decode
        for line in run:
            yield from map(decode, json.loads(line))

    @property
    def runs(self) -> int:
        """Sorted runs written to disk so far."""
        return len(self._runs)

    def close(self) -> None:
        """Remove the runs on disk and forget every item."""
        for run in self._runs:
            run.close()
        self._runs, self._items, self._count = [], [], 0

    def __enter__(self) -> SortedSpill[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def chunk_lines(data: Iterable[Any], size: int = LINE_ITEMS) -> Iterator[str]:
    """``data`` as lines of JSON arrays of ``size`` items (ASCII, compact)."""
    dumps, it = json.dumps, iter(data)
    while chunk := list(itertools.islice(it, size)):
        yield dumps(chunk, separators=(",", ":")) + "\n"


def keys(*, run_items: int | None = None) -> SortedSpill[str]:
    """A spill of plain keys, sorted."""
    return SortedSpill(_same, _same, _same, run_items=run_items)


def pairs(encode: Callable[[Any], Any], decode: Callable[[Any], Any], *,
          run_items: int | None = None) -> SortedSpill[tuple[str, Any]]:
    """A spill of ``(key, value)`` pairs sorted by key; ``encode``/``decode`` the value."""
    return SortedSpill(_first, lambda pair: [pair[0], encode(pair[1])],
                       lambda data: (data[0], decode(data[1])), run_items=run_items)


def _same(value: Any) -> Any:
    return value


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


class OrderError(StorageError):
    """A stream that should be sorted by key is not: merging it would be wrong."""



class Cursor:
    """A stream of ``(key, value)`` pairs sorted by key, read forward as a merge goes.

    Every key is checked to be above the one before it: merging a stream out of order
    would delete what is there, or send it again, so :class:`OrderError` stops it first.
    """

    def __init__(self, pairs: Iterable[tuple[str, Any]], what: str):
        self._pairs = iter(pairs)
        self._what = what
        self._last: str | None = None
        self._head = self._next()

    def _next(self) -> tuple[str, Any] | None:
        pair = next(self._pairs, None)
        if pair is not None:
            self.check(pair[0])
        return pair

    def check(self, key: str) -> None:
        """Refuse a key not above the last one seen."""
        if self._last is not None and not key > self._last:
            raise OrderError(f"{self._what} is not in key order: {key!r} after {self._last!r}")
        self._last = key

    def until(self, key: str | None) -> Iterator[tuple[str, Any]]:
        """The pairs before ``key`` (all that are left for None), consumed."""
        while self._head is not None and (key is None or self._head[0] < key):
            yield self._head
            self._head = self._next()

    def skip_until(self, key: str) -> None:
        """Pass over the pairs before ``key``."""
        for _pair in self.until(key):
            pass

    def take(self, key: str) -> Any:
        """The value for ``key`` when it comes next (after ``until``), else None."""
        if self._head is None or self._head[0] != key:
            return None
        value, self._head = self._head[1], self._next()
        return value

    def find(self, key: str) -> Any:
        """The value for ``key``, passing over the pairs before it; None when absent."""
        self.skip_until(key)
        return self.take(key)

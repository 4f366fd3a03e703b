"""The sync engine's retry policy: exponential backoff with full jitter.

Storages raise :class:`~tpi_core.errors.TransientError` for throttling, 5xx and resets and
leave retrying to the caller; connection-level ``OSError``s that slip through
(``ConnectionError``, ``TimeoutError``) and a checksum mismatch are retried the same way.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from tpi_core.errors import IntegrityError, TransientError

T = TypeVar("T")

RETRYABLE = (TransientError, ConnectionError, TimeoutError, IntegrityError)

Moved = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one storage operation.

    Attempt ``n`` (from 0) that fails waits a random time in ``[0, min(cap, base * 2**n)]``
    (AWS's "full jitter"), so many workers hit by the same throttling spread out.
    """

    attempts: int = 10
    base: float = 0.05
    cap: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError("a retry policy needs attempts >= 1 and delays >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        return random.uniform(0, min(self.cap, self.base * 2 ** attempt))


async def retrying(policy: RetryPolicy, operation: Callable[[Moved], Awaitable[T]],
                   advance: Moved | None = None) -> T:
    """Run ``operation(moved)`` until it succeeds or ``policy.attempts`` are spent.

    ``moved(n)`` is the progress callback to hand to the storage; the bytes a failed attempt
    reported are taken back from ``advance`` so progress never counts a byte twice.
    """
    for attempt in range(policy.attempts):
        counter = _Counter(advance)
        try:
            return await operation(counter)
        except RETRYABLE:
            counter.rewind()
            if attempt + 1 >= policy.attempts:
                raise
        await anyio.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


class _Counter:
    """A progress callback (storages may call it from worker threads) that can be undone."""

    __slots__ = ("advance", "moved")

    def __init__(self, advance: Moved | None):
        self.advance, self.moved = advance, 0

    def __call__(self, nbytes: int) -> None:
        self.moved += nbytes
        if self.advance is not None:
            self.advance(nbytes)

    def rewind(self) -> None:
        if self.advance is not None and self.moved:
            self.advance(-self.moved)
        self.moved = 0

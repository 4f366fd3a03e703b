"""Retrying a call that failed for a passing reason (:class:`~tpi_core.errors.TransientError`).

Storages and clouds retry each request; this covers what a request's own retries do not: a
whole operation that lost an answer (a listing read page by page, a spec read by the CLI
while the storage drops answers), with pauses of 0.5, 1, 2 and 4 s before giving up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from tpi_core.errors import TransientError

T = TypeVar("T")
DELAYS = (0.5, 1.0, 2.0, 4.0)


async def retry(fn: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    """Call ``fn`` again after a short pause while it raises TransientError."""
    for delay in DELAYS:
        try:
            return await fn(*args, **kwargs)
        except TransientError:
            await anyio.sleep(delay)
    return await fn(*args, **kwargs)

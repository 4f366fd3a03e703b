"""Retrying a call that failed for a passing reason (:class:`~tpi_core.errors.TransientError`).

Storages and clouds retry each request; this covers what a request's own retries do not: a
whole operation that lost an answer (a listing read page by page, a spec read by the CLI
while the storage drops answers), with pauses of 0.5, 1, 2 and 4 s before giving up
(:func:`retry`); a cloud operation that waits on something else, with a deadline
(:func:`until`); and a wait for what a cloud does in the background (:func:`poll`).
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


async def until(fn: Callable[[], Awaitable[T]], timeout: float, *, first: float = 1.0,
                most: float = 15.0) -> T:
    """Call ``fn`` again while it raises TransientError, pausing ``first`` seconds and twice
    as long each time (at most ``most``), for up to ``timeout`` seconds: for a cloud
    operation that waits on something else (a delete refused while dependencies are still
    being released)."""
    delay, deadline = first, anyio.current_time() + timeout
    while True:
        try:
            return await fn()
        except TransientError:
            if anyio.current_time() + delay > deadline:
                raise
            await anyio.sleep(delay)
            delay = min(delay * 2, most)


async def poll(done: Callable[[], Awaitable[bool]], timeout: float, interval: float) -> bool:
    """Ask ``done()`` every ``interval`` seconds until it is true (True) or ``timeout``
    seconds have passed (False): waiting for a cloud to finish something it does in the
    background (a group deleted, machines stopped)."""
    with anyio.move_on_after(timeout):
        while not await done():
            await anyio.sleep(interval)
        return True
    return False

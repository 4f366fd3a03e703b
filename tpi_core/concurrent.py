"""Running coroutines together so that an error comes out as itself.

anyio's task groups raise an :class:`ExceptionGroup` even for one failed task. Code that
catches a :class:`~tpi_core.errors.TransientError` to retry (``sync/retry.py``), or the CLI
that maps a :class:`~tpi_core.errors.TpiError` to one line and an exit code, never sees a
group: :func:`task_group` raises the error itself, and of several the one with the highest
exit code (an interrupt first). :func:`gather` runs calls to the end, each whatever the
others do, and joins several failures into one error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from tpi_core.errors import TpiError


def leaves(error: BaseException) -> list[BaseException]:
    """The errors inside nested exception groups, in order (``error`` itself if none)."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def _weight(error: BaseException) -> tuple[int, int]:
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit, cancellation
        return (2, 0)
    return (1, getattr(error, "exit_code", 1))


def chosen(error: BaseException) -> BaseException:
    """The one error to raise for ``error``: itself, or of a group's, the first with the
    highest exit code (an interrupt before any error)."""
    found = leaves(error)
    return max(found, key=_weight)  # max keeps the first of equals


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group whose failure is raised as one plain error (:func:`chosen`)."""
    try:
        async with anyio.create_task_group() as group:
            yield group
    except BaseExceptionGroup as group:
        raise chosen(group) from None


async def gather(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run coroutine factories concurrently; results in call order.

    One failure does not cancel the others (a broken task must not abandon its siblings
    half-created); once all are done, a single error is re-raised as it is and several are
    joined into one :class:`TpiError` with the highest of their exit codes.
    """
    results: list[Any] = [None] * len(calls)
    failures: list[Exception] = []

    async def one(i: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:  # kept for the end: the siblings go on
            failures.append(exc)

    async with task_group() as group:
        for i, call in enumerate(calls):
            group.start_soon(one, i, call)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        joined = TpiError("; ".join(str(f) for f in failures))
        joined.exit_code = max(getattr(f, "exit_code", 1) for f in failures)
        raise joined from failures[0]
    return results

"""The executor: runs a plan's transfers on a bounded pool of workers, keeping the tally.

The plan (a generator that walks, stats and hashes local files) is advanced in a worker
thread a batch at a time; its transfer actions go through memory streams to the workers. So
at any moment at most one batch plus a bounded number of actions exist, whatever the size of
the tree. The first error cancels the rest and is raised as is (not wrapped in an exception
group).

Two lanes share the ``jobs`` transfers allowed at once. Files above ``LARGE`` go through a
lane of at most ``LARGE_JOBS`` workers and half the jobs: their pace is set by bytes, not
round trips, and each holds stream buffers, so 64 of them at once only cost memory, and
are no faster (benchmarks/README.md). The other
half of the jobs always goes on with small files, however many large ones wait.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from itertools import islice
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from tpi_core.errors import UsageError
from tpi_core.sync import spill
from tpi_core.sync.plan import Action, Delete, Fetch, Forget, Keep, Send, Unchanged
from tpi_core.sync.result import DryRun, SyncProgress, SyncResult
from tpi_core.sync.retry import RetryPolicy
from tpi_core.sync.walk import Skipped

T = TypeVar("T")

BATCH = 256
"""Most actions planned per trip to the planning thread."""
BATCH_SECONDS = 0.05
"""A batch also ends after this long, so hashing big files never starves the workers."""
LARGE = 1 << 20
"""Files above this size go through the large lane."""
LARGE_JOBS = 16
"""Transfers of large files at once, at most (see ``SyncRun.large_jobs``)."""
LARGE_QUEUE = 1024
"""Large-file actions waiting for the large lane before planning waits too."""


class SyncRun:
    """One sync in progress: the result so far, progress, and the transfer workers.

    Subclasses (upload, download) implement :meth:`transfer` and may hook :meth:`keep`.
    """

    def __init__(self, *, jobs: int, progress: SyncProgress | None, retry: RetryPolicy | None,
                 dry_run: DryRun | None = None, max_delete: int | None = None):
        self.jobs = max(1, int(jobs))
        self.progress = progress
        self.dry_run = dry_run
        """When set, transfers and deletions are told to it and not done."""
        self.max_delete = max_delete
        """More deletions than this, and none is made (None: no limit)."""
        self.retry = retry or RetryPolicy()
        self.result = SyncResult()
        self.deletions = spill.keys()
        """Keys the plan deletes, in its (sorted) order, kept on disk beyond a run."""
        self._planned = [0, 0]
        self._reported: tuple[int, int] | None = None

    @property
    def large_jobs(self) -> int:
        """Workers of the large lane: at most LARGE_JOBS, and half the jobs at most, so
        small files always keep the other half."""
        return max(1, min(LARGE_JOBS, self.jobs // 2))

    @property
    def advance(self) -> Callable[[int], None] | None:
        """The progress callback storages get (None when silent)."""
        return self.progress.advance if self.progress is not None else None

    async def run(self, plan: Iterator[Action]) -> None:
        """Carry out every action of ``plan``; transfers run ``jobs`` at a time."""
        slots = anyio.CapacityLimiter(self.jobs)
        errors: list[Exception] = []
        lanes: tuple[_Lane, ...] = ()
        try:
            async with anyio.create_task_group() as group:
                def start(receive: MemoryObjectReceiveStream[Action]) -> None:
                    group.start_soon(_guarded, errors, group.cancel_scope, self._work,
                                     receive, slots)

                lanes = (_Lane(self.jobs, self.jobs, start),
                         _Lane(LARGE_QUEUE, self.large_jobs, start))
                group.start_soon(_guarded, errors, group.cancel_scope, self._feed, plan, *lanes)
        finally:
            plan.close()
            for lane in lanes:  # when the feed never ran
                lane.close()
        if errors:
            raise errors[0]

    async def transfer(self, action: Action) -> None:
        """Move one file (a :class:`Send` or :class:`Fetch`)."""
        raise NotImplementedError

    def keep(self, action: Unchanged) -> None:
        """Called for every unchanged file."""

    def forget(self, key: str) -> None:
        """Called for every manifest entry that has no file any more."""

    def done(self, nbytes: int) -> None:
        """Count one transferred file."""
        self.result.sent += 1
        self.result.bytes_sent += nbytes
        if self.progress is not None:
            self.progress.file_done()

    def skip(self, key: str, reason: str) -> None:
        """Report something left out."""
        self.result.skipped.append(f"{key}: {reason}")

    def _handle(self, action: Action) -> bool:
        if isinstance(action, Skipped):
            self.result.skipped.append(str(action))
        elif isinstance(action, Unchanged):
            self.result.unchanged += 1
            self.keep(action)
        elif isinstance(action, Delete):
            self.deletions.add(action.key)
        elif isinstance(action, Forget):
            self.forget(action.key)
        elif isinstance(action, Keep):
            self.result.kept.append((action.key, ""))
        else:
            self._planned[0] += 1
            self._planned[1] += size_of(action)
            return True
        return False

    def _report_plan(self) -> None:
        totals = (self._planned[0], self._planned[1])
        if self.progress is not None and totals != self._reported:
            self._reported = totals
            self.progress.start(*totals)

    async def _feed(self, plan: Iterator[Action], small: _Lane, large: _Lane) -> None:
        with small, large:
            while batch := await anyio.to_thread.run_sync(_take, plan):
                todo = [action for action in batch if self._handle(action)]
                if self.dry_run is not None:
                    self._would(todo)
                    continue
                self._report_plan()
                for action in todo:
                    await (large if size_of(action) > LARGE else small).send(action)
            self._report_plan()  # at least once, even for an empty plan

    def _would(self, actions: list[Action]) -> None:
        for action in actions:
            assert self.dry_run is not None and isinstance(action, Send | Fetch)
            size = size_of(action)
            self.dry_run("send" if isinstance(action, Send) else "fetch",
                         action.file.key if isinstance(action, Send) else action.key, size)
            self.result.sent += 1
            self.result.bytes_sent += size

    def to_delete(self, keys: spill.SortedSpill[str]) -> bool:
        """Whether the caller is to delete ``keys`` now. All of them are refused when they
        are more than ``max_delete`` (a listing cut short, or the wrong directory, would
        otherwise empty the destination); a dry run tells and counts each instead."""
        if self.max_delete is not None and len(keys) > self.max_delete:
            raise UsageError(f"{len(keys)} files to delete, more than the {self.max_delete} "
                             "allowed (--max-delete): nothing was deleted")
        if self.dry_run is None:
            return True
        for key in keys:
            self.dry_run("delete", key, None)
            self.result.deleted += 1
        return False

    async def _work(self, receive: MemoryObjectReceiveStream[Action],
                    slots: anyio.CapacityLimiter) -> None:
        async with receive:
            async for action in receive:
                async with slots:
                    await self.transfer(action)


class _Lane:
    """A queue of actions and the workers taking from it, started as actions come (a
    no-change sync starts none), up to ``workers``."""

    def __init__(self, queue: int, workers: int,
                 start: Callable[[MemoryObjectReceiveStream[Action]], None]):
        self._send, self._receive = anyio.create_memory_object_stream[Action](queue)
        self._left, self._start = workers, start

    async def send(self, action: Action) -> None:
        if self._left:
            self._left -= 1
            self._start(self._receive.clone())
        await self._send.send(action)

    def __enter__(self) -> _Lane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._receive.close()  # the workers' clones stay open until they have emptied it
        self._send.close()


async def _guarded(errors: list[Exception], scope: anyio.CancelScope,
                   fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        errors.append(exc)
        scope.cancel()


def _take(plan: Iterator[Action]) -> list[Action]:
    batch: list[Action] = []
    deadline = time.monotonic() + BATCH_SECONDS
    while len(batch) < BATCH and time.monotonic() < deadline:
        chunk = list(islice(plan, 16))
        batch.extend(chunk)
        if len(chunk) < 16:
            break
    return batch


async def alongside(main: Awaitable[None], side: Callable[[], T]) -> T:
    """Await ``main`` while ``side()`` runs in a worker thread; return what ``side`` returned.

    An error of either is raised as is.
    """
    outcome: list[Any] = []
    failure: list[BaseException] = []

    async def run_side() -> None:
        try:
            outcome.append(await anyio.to_thread.run_sync(side))
        except Exception as exc:
            failure.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(run_side)
        try:
            await main
        except Exception as exc:
            failure.insert(0, exc)
    if failure:
        raise failure[0]
    return outcome[0]


def size_of(action: Send | Fetch) -> int:
    """Bytes an action moves."""
    return action.file.size if isinstance(action, Send) else action.size

"""Errors of tasks run together come out as themselves, never as an ExceptionGroup."""

from __future__ import annotations

import anyio
import pytest

from tpi_core.concurrent import chosen, gather, task_group
from tpi_core.errors import ReplaceRequired, TaskNotFound, TransientError, UsageError

pytestmark = pytest.mark.anyio


async def test_a_failed_task_of_a_group_is_raised_as_itself():
    async def fails():
        raise TransientError("slow down")

    with pytest.raises(TransientError, match="slow down"):
        async with task_group() as group:
            group.start_soon(fails)
            group.start_soon(anyio.sleep, 5)  # cancelled by the failure


def test_of_several_errors_the_highest_exit_code_wins_and_an_interrupt_first():
    nested = BaseExceptionGroup("", [UsageError("bad"), ExceptionGroup("", [
        TaskNotFound("gone"), TransientError("slow")])])
    assert isinstance(chosen(nested), TaskNotFound)  # exit 3 over 2 and 1
    assert isinstance(chosen(BaseExceptionGroup("", [TaskNotFound("x"), KeyboardInterrupt()])),
                      KeyboardInterrupt)
    first = UsageError("first")
    assert chosen(ExceptionGroup("", [first, UsageError("second")])) is first


async def test_gather_runs_every_call_and_joins_failures_with_the_highest_exit_code():
    done = []

    async def ok(n):
        await anyio.sleep(0.01)
        done.append(n)
        return n

    async def bad(error):
        raise error

    assert await gather([lambda: ok(1), lambda: ok(2)]) == [1, 2]
    with pytest.raises(TaskNotFound):  # one failure: itself
        await gather([lambda: bad(TaskNotFound("x")), lambda: ok(3)])
    assert 3 in done  # the sibling was not abandoned
    with pytest.raises(Exception) as info:
        await gather([lambda: bad(UsageError("a")), lambda: bad(ReplaceRequired("b"))])
    assert not isinstance(info.value, BaseExceptionGroup)
    assert info.value.exit_code == 4 and str(info.value) in ("a; b", "b; a")

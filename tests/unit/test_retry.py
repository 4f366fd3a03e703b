"""tpi_core.retry: until() retries a transient failure up to its timeout, poll() waits for a
condition and says whether it came."""

from __future__ import annotations

import pytest

from tpi_core.errors import PermissionDenied, TransientError
from tpi_core.retry import poll, until

pytestmark = pytest.mark.anyio


async def test_until_retries_transient_errors_then_returns() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("still in use")
        return "deleted"

    assert await until(flaky, 5, first=0.01) == "deleted"
    assert len(calls) == 3


async def test_until_gives_up_at_its_timeout_with_the_last_error() -> None:
    async def busy() -> None:
        raise TransientError("DependencyViolation")

    with pytest.raises(TransientError, match="DependencyViolation"):
        await until(busy, 0.05, first=0.01)


async def test_until_raises_other_errors_at_once() -> None:
    calls = []

    async def denied() -> None:
        calls.append(1)
        raise PermissionDenied("no")

    with pytest.raises(PermissionDenied):
        await until(denied, 5, first=0.01)
    assert calls == [1]


async def test_poll_says_whether_the_condition_came_in_time() -> None:
    answers = iter([False, False, True])

    async def done() -> bool:
        return next(answers)

    assert await poll(done, 5, 0.01) is True

    async def never() -> bool:
        return False

    assert await poll(never, 0.05, 0.01) is False

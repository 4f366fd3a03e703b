"""Operations as lists of described steps; teardown is their mirror (TPI's RunSteps).

Each step's ``create`` and ``delete`` must be idempotent: "already exists" is success for a
create, "not found" is success for a delete. If a create fails, the steps already done are
deleted in reverse order and the original error is raised.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from tpi_core.errors import ResourceNotFound, TpiError

Action = Callable[[], Awaitable[object]]
Report = Callable[[str], None]


async def nothing() -> None:
    """The action of a step with no create (or no delete): one built from a ref alone."""
    return None


def creates(creation: object | None) -> Callable[[str], Action]:
    """``make(name)`` for a step list: the ``name`` method of ``creation`` (an object with a
    method per resource), or :func:`nothing` when the steps are built from a task id alone
    (a destroy) and ``creation`` is None."""
    if creation is None:
        return lambda name: nothing
    return lambda name: getattr(creation, name)


@dataclass(frozen=True, slots=True)
class Step:
    """One resource: how to create it and how to delete it."""

    description: str
    create: Action = nothing
    delete: Action = nothing


async def run_steps(steps: Sequence[Step], report: Report | None = None) -> None:
    """Create every step in order; on failure roll back what was done and re-raise.

    The rollback covers the step that failed too: its request may have been carried out
    with its answer lost, and its delete is harmless when it was not.
    """
    done: list[Step] = []
    try:
        for i, step in enumerate(steps, 1):
            _say(report, f"[{i}/{len(steps)}] Creating {step.description}")
            done.append(step)
            crash_point(f"create:{i}:before")
            await step.create()
            crash_point(f"create:{i}:after")
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await delete_steps(done, report, quiet=True)
            except TpiError as left:
                _say(report, f"rollback incomplete: {left}")
        raise


async def delete_steps(steps: Sequence[Step], report: Report | None = None,
                       quiet: bool = False) -> None:
    """Delete every step in reverse order; a missing resource counts as deleted.

    A failing delete does not stop the others: every step is tried, then one
    :class:`~tpi_core.errors.TpiError` names what is left (a second run removes it).
    """
    failed: list[tuple[Step, Exception]] = []
    for i, step in enumerate(reversed(steps), 1):
        if not quiet:
            _say(report, f"[{i}/{len(steps)}] Deleting {step.description}")
        try:
            crash_point(f"delete:{i}:before")
            await step.delete()
            crash_point(f"delete:{i}:after")
        except ResourceNotFound:
            pass
        except Exception as exc:  # every other step is still tried
            failed.append((step, exc))
    if failed:
        left = "; ".join(f"{step.description} ({exc})" for step, exc in failed)
        raise TpiError(f"left after delete, try again: {left}") from failed[0][1]


CRASH_ENV = "TPI_TEST_CRASH"
"""Tests only: the name of a point (``create:2:before``, ``apply:upload``...) where this
process kills itself with ``TPI_TEST_CRASH_SIGNAL`` (default SIGKILL), to prove that an
interrupted apply or destroy is finished by the next one."""


def crash_point(name: str) -> None:
    """Die here when the tests ask for it (:data:`CRASH_ENV`); nothing otherwise."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), int(os.environ.get("TPI_TEST_CRASH_SIGNAL") or signal.SIGKILL))


def _say(report: Report | None, message: str) -> None:
    if report is not None:
        report(message)

"""Operations as lists of described steps; teardown is their mirror (TPI's RunSteps).

Each step's ``create`` and ``delete`` must be idempotent: "already exists" is success for a
create, "not found" is success for a delete. If a create fails, the steps already done are
deleted in reverse order and the original error is raised.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from tpi_core.errors import ResourceNotFound

Action = Callable[[], Awaitable[object]]
Report = Callable[[str], None]


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    """One resource: how to create it and how to delete it."""

    description: str
    create: Action = _nothing
    delete: Action = _nothing


async def run_steps(steps: Sequence[Step], report: Report | None = None) -> None:
    """Create every step in order; on failure roll back what was done and re-raise."""
    done: list[Step] = []
    try:
        for i, step in enumerate(steps, 1):
            _say(report, f"[{i}/{len(steps)}] Creating {step.description}")
            await step.create()
            done.append(step)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await delete_steps(done, report, quiet=True)
        raise


async def delete_steps(steps: Sequence[Step], report: Report | None = None,
                       quiet: bool = False) -> None:
    """Delete every step in reverse order; a missing resource counts as deleted."""
    for i, step in enumerate(reversed(steps), 1):
        if not quiet:
            _say(report, f"[{i}/{len(steps)}] Deleting {step.description}")
        try:
            await step.delete()
        except ResourceNotFound:
            pass


def _say(report: Report | None, message: str) -> None:
    if report is not None:
        report(message)

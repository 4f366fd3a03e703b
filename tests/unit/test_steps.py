"""Steps: a rollback covers the step that failed, and a delete tries every step."""

from __future__ import annotations

import pytest

from tpi_core.errors import BackendError, ResourceNotFound, TpiError
from tpi_core.steps import Step, delete_steps, run_steps


class Cloud:
    """Resources by name; ``fail`` names the create or delete that raises (after acting,
    as a request whose answer was lost)."""

    def __init__(self, fail: str = ""):
        self.held: set[str] = set()
        self.fail = fail

    def step(self, name: str) -> Step:
        async def create():
            self.held.add(name)
            if self.fail == f"create {name}":
                raise BackendError(f"answer to create {name} lost")

        async def delete():
            if self.fail == f"delete {name}":
                raise BackendError(f"cannot delete {name}")
            if name not in self.held:
                raise ResourceNotFound(name)
            self.held.discard(name)

        return Step(name, create, delete)


@pytest.mark.anyio
async def test_a_rollback_covers_the_step_that_failed():
    cloud = Cloud(fail="create role")
    with pytest.raises(BackendError, match="answer to create role lost"):
        await run_steps([cloud.step(n) for n in ("group", "role", "template")])
    assert cloud.held == set()  # the role its lost answer made is gone too


@pytest.mark.anyio
async def test_delete_tries_every_step_and_names_what_is_left():
    cloud = Cloud(fail="delete role")
    steps = [cloud.step(n) for n in ("group", "role", "template")]
    await run_steps(steps)
    said: list[str] = []
    with pytest.raises(TpiError, match=r"left after delete, try again: role \(cannot delete"):
        await delete_steps(steps, said.append)
    assert cloud.held == {"role"}  # the steps before and after it were deleted
    assert said == ["[1/3] Deleting template", "[2/3] Deleting role", "[3/3] Deleting group"]
    cloud.fail = ""
    await delete_steps(steps)  # a second run removes the rest; gone ones count as deleted
    assert cloud.held == set()

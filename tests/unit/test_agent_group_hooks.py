"""GroupHooks.on_exit: a machine leaves its group through leave(); a refusal counts only
while the machine is still in the group."""

from __future__ import annotations

import pytest

from tpi_core.agent.hooks import GroupHooks
from tpi_core.errors import BackendError

pytestmark = pytest.mark.anyio


class Hooks(GroupHooks):
    def __init__(self, refuse: bool, still_in: bool):
        self.refuse, self.still_in, self.left = refuse, still_in, []

    async def machine_id(self) -> str:
        return "m-1"

    async def alive(self, machine: str) -> bool:
        return self.still_in

    async def leave(self, machine: str) -> None:
        self.left.append(machine)
        if self.refuse:
            raise BackendError("ValidationError: not in a group")


async def test_on_exit_leaves_with_this_machine_only() -> None:
    hooks = Hooks(refuse=False, still_in=True)
    await hooks.on_exit(None)
    assert hooks.left == ["m-1"]


async def test_a_refusal_once_out_of_the_group_is_fine() -> None:
    await Hooks(refuse=True, still_in=False).on_exit(None)


async def test_a_refusal_while_still_in_the_group_is_raised() -> None:
    with pytest.raises(BackendError, match="ValidationError"):
        await Hooks(refuse=True, still_in=True).on_exit(None)

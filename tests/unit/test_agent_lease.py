"""Replica claiming by lease and the preemption poll, with fake probes (no cloud)."""

from __future__ import annotations

import json

import anyio
import pytest

from tpi_core import layout
from tpi_core.agent.hooks import GroupHooks
from tpi_core.agent.lease import claim_replica, holder, lease_key
from tpi_core.agent.preempt import poll_notice
from tpi_core.errors import TransientError
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.testing.memory import MemoryStorage

pytestmark = pytest.mark.anyio
FAST = {"settle": 0.02, "patience": 0.1}


def alive_in(*machines: str):
    async def alive(machine: str) -> bool:
        return machine in machines
    return alive


async def test_machines_booting_together_claim_distinct_replicas():
    storage, got = MemoryStorage(), {}

    async def boot(me: str) -> None:
        got[me] = await claim_replica(storage, 3, me, alive_in("a", "b", "c"), **FAST)

    async with anyio.create_task_group() as tg:
        for me in "abc":
            tg.start_soon(boot, me)
    assert sorted(got.values()) == [0, 1, 2]
    assert {await holder(storage, i) for i in range(3)} == {"a", "b", "c"}


async def test_a_dead_holder_frees_its_replica_and_a_reboot_keeps_its_own():
    storage = MemoryStorage()
    await storage.write(lease_key(0), json.dumps({"instance": "a"}).encode())
    await storage.write(lease_key(1), json.dumps({"instance": "gone"}).encode())
    alive = alive_in("a", "new")
    assert await claim_replica(storage, 2, "new", alive, **FAST) == 1
    assert await claim_replica(storage, 2, "a", alive, **FAST) == 0


async def test_nothing_to_claim_once_patience_runs_out():
    storage = MemoryStorage()
    done = ReplicaStatus(0, ReplicaState.SUCCEEDED, 1, 0)
    await storage.write(layout.status_key(0), json.dumps(done.to_json()).encode())
    await storage.write(lease_key(1), json.dumps({"instance": "b"}).encode())
    assert await claim_replica(storage, 2, "c", alive_in("b", "c"), **FAST) is None


async def test_a_lease_that_is_not_json_is_free():
    storage = MemoryStorage()
    await storage.write(lease_key(0), b"{broken")
    assert await holder(storage, 0) is None
    assert await claim_replica(storage, 1, "a", alive_in(), **FAST) == 0


class Hooks(GroupHooks):
    """A cloud's hooks made of fakes: the probes are all a cloud writes."""

    claim_settle, claim_patience, notice_interval = 0.02, 0.1, 0.01

    def __init__(self, me: str, members: set[str], answers: list):
        self.me, self.members, self.answers, self.left = me, members, answers, []

    async def machine_id(self) -> str:
        return self.me

    async def alive(self, machine: str) -> bool:
        return machine in self.members

    async def preempted(self) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def on_exit(self, status) -> None:
        self.left.append(self.me)


async def test_group_hooks_claim_by_lease_and_leave_with_nothing_to_run():
    storage = MemoryStorage()
    first = Hooks("a", {"a", "b"}, [])
    assert await first.replica_index(storage, {"parallelism": 1}) == 0
    second = Hooks("b", {"a", "b"}, [])
    assert await second.replica_index(storage, {"parallelism": 1}) is None
    assert (first.left, second.left) == ([], ["b"])


async def test_the_poll_returns_on_the_notice_and_asks_again_after_a_hiccup():
    answers = [False, TransientError("metadata 503"), False, True, "never asked"]
    hooks = Hooks("a", set(), answers)
    with anyio.fail_after(5):
        await hooks.wait_for_preemption()
    assert answers == ["never asked"]


async def test_the_poll_lets_other_errors_through():
    async def probe() -> bool:
        raise ValueError("a broken probe is a bug, not a hiccup")

    with pytest.raises(ValueError):
        await poll_notice(probe, 0.01)

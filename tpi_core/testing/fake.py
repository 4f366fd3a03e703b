"""A fake backend for tests: in-process, deterministic, no machines.

Like httpx's MockTransport: it records what the engine asks and keeps resources in memory.
Its storage is a :class:`~tpi_core.testing.memory.MemoryStorage` per task, so tests can write
reports the way an agent would and read what the engine uploaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import ClassVar

from tpi_core.backend import Backend, Capability, Launch, MachineType, Observation, TaskRef
from tpi_core.errors import ResourceNotFound
from tpi_core.model import Task
from tpi_core.steps import Step, nothing
from tpi_core.storage import Storage
from tpi_core.testing.memory import MemoryStorage


class FakeBackend(Backend):
    """Keeps "machines" as a number per task; every call is appended to ``calls``.

    All instances share the class-level state so an engine that builds its own instance
    (through the registry) and the test see the same world; call :meth:`reset` between tests.
    """

    NAME = "fake"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.FIND})
    storages: ClassVar[dict[str, MemoryStorage]] = {}
    groups: ClassVar[dict[str, int]] = {}
    calls: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def reset(cls) -> None:
        """Forget every task and call."""
        cls.storages.clear()
        cls.groups.clear()
        cls.calls.clear()

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        self.calls.append(("storage", ref.task_id))
        if ref.task_id not in self.storages:
            self.storages[ref.task_id] = MemoryStorage()
        return self.storages[ref.task_id]

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        create = partial(self._create, task) if task else nothing
        return [Step("group", create, partial(self._delete, ref.task_id))]

    async def _create(self, task: Task) -> None:
        self.calls.append(("create", task.id))
        self.groups.setdefault(task.id, task.parallelism)

    async def _delete(self, task_id: str) -> None:
        self.calls.append(("delete", task_id))
        if self.groups.pop(task_id, None) is None:
            raise ResourceNotFound(task_id)

    async def observe(self, ref: TaskRef) -> Observation:
        count = self.groups.get(ref.task_id)
        return Observation(exists=count is not None, machines=count or 0, desired=count or 0)

    async def set_capacity(self, ref: TaskRef, machines: int) -> None:
        self.calls.append(("capacity", f"{ref.task_id}={machines}"))
        if ref.task_id not in self.groups:
            raise ResourceNotFound(ref.task_id)
        self.groups[ref.task_id] = machines

    async def find(self, region: str | None = None) -> list[TaskRef]:
        return [TaskRef(task_id, self.NAME, region or "") for task_id in self.groups]

    @classmethod
    def machine_types(cls) -> list[MachineType]:
        return [MachineType("m", "fake-8", "8 CPU")]

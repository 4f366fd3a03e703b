"""What a cloud adds to the agent: which replica, the secrets, the notice and the goodbye.

A cloud plugin subclasses :class:`AgentHooks` and names it on the agent's command line
(``--hooks tpi_aws.agent:AwsHooks``); the class is built with no arguments. A cloud whose
group of machines hands out no replica index (an Auto Scaling group, a managed instance
group, a scale set) subclasses :class:`GroupHooks` and gives only its probes.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import anyio

from tpi_core.agent import lease, preempt
from tpi_core.agent.metadata import MetadataService
from tpi_core.errors import TpiError, UsageError
from tpi_core.model import ReplicaStatus
from tpi_core.storage import Storage


class AgentHooks:
    """The default hooks (the local backend): the replica comes from ``--replica``, the
    environment values from the agent's own environment, the notice is SIGTERM alone, and
    there is nothing to do at exit."""

    async def replica_index(self, storage: Storage, spec: Mapping) -> int | None:
        """Claim the replica this machine runs when ``--replica`` was not given; None when
        there is nothing left to run (the agent then exits at once).

        A cloud whose group hands out no index (AWS) claims one through the task's storage.
        """
        raise UsageError("--replica is required: these agent hooks cannot claim a replica")

    async def environment(self, spec: Mapping) -> Mapping[str, str]:
        """Environment values to add to the agent's own (a cloud reads its secret store).

        They stay in memory: the agent hands the script the task's ``environment_keys``.
        """
        return {}

    async def wait_for_preemption(self) -> None:
        """Return when the cloud announces that this machine is going away.

        AWS polls the instance metadata for a spot instance action, GCP the ``preempted``
        metadata key, Azure its scheduled events. The default never returns.
        """
        await anyio.sleep_forever()

    async def on_exit(self, status: ReplicaStatus) -> None:
        """Called once the replica's final status is written (never on a preemption).

        A cloud removes only this machine from its group here, so a finished replica
        never stops its siblings.
        """

    async def aclose(self) -> None:
        """Release clients; called once as the agent ends."""


class GroupHooks(AgentHooks):
    """Hooks of a machine in a cloud's group: the replica is claimed by lease
    (:mod:`tpi_core.agent.lease`) and the notice polled (:mod:`tpi_core.agent.preempt`).

    A cloud gives :meth:`alive`, :meth:`preempted` and :meth:`leave`, and its machine's
    :attr:`metadata` service with the :attr:`machine_id_path` there (or :meth:`machine_id`).
    """

    metadata: MetadataService | None = None
    """The machine's metadata service (a cloud's ``__init__`` sets it)."""
    machine_id_path = ""
    """Where :attr:`metadata` tells this machine's id."""
    _machine: str | None = None

    notice_interval = 5.0
    """Seconds between two looks at the preemption notice."""
    claim_settle = 2.0
    """Seconds between writing a lease and reading it back."""
    claim_patience = 300.0
    """Seconds a machine waits for a replica to free up before it leaves the group."""

    async def machine_id(self) -> str:
        """This machine's id in the group (what its lease holds), asked of the metadata
        service once."""
        if self._machine is None:
            if self.metadata is None:
                raise NotImplementedError("a cloud's hooks give their metadata service")
            self._machine = await self.metadata.get(self.machine_id_path)
        return self._machine

    async def alive(self, machine: str) -> bool:
        """Whether ``machine`` is a live member of the task's group."""
        raise NotImplementedError

    async def preempted(self) -> bool:
        """Whether the cloud announced that this machine is going away."""
        return False

    async def leave(self, machine: str) -> None:
        """Remove ``machine`` from the group, lowering the group's size so that nothing
        replaces it."""
        raise NotImplementedError

    async def on_exit(self, status: ReplicaStatus | None) -> None:
        """Leave the group, this machine and only it. A refusal is fine once the machine is
        out of the group already (each cloud says so its own way, an emulator with a 500)."""
        machine = await self.machine_id()
        try:
            await self.leave(machine)
        except TpiError:
            if await self.alive(machine):
                raise

    async def replica_index(self, storage: Storage, spec: Mapping) -> int | None:
        """Claim a replica by lease; with none left to run, leave the group and say None."""
        index = await lease.claim_replica(
            storage, int(spec.get("parallelism", 1)), await self.machine_id(), self.alive,
            settle=self.claim_settle, patience=self.claim_patience)
        if index is None:
            await self.on_exit(None)
        return index

    async def wait_for_preemption(self) -> None:
        """Return once :meth:`preempted` says yes (asked every ``notice_interval``)."""
        await preempt.poll_notice(self.preempted, self.notice_interval)

    async def aclose(self) -> None:
        """Close the metadata service's connections (a subclass closes its clients too)."""
        if self.metadata is not None:
            await self.metadata.aclose()


def load_hooks(spec: str | None) -> AgentHooks:
    """The hooks named ``module:Class``, or the default hooks when ``spec`` is empty."""
    if not spec:
        return AgentHooks()
    module_name, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), name) if name else None
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"agent hooks {spec!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, AgentHooks)):
        raise UsageError(f"agent hooks {spec!r} is not an AgentHooks subclass (module:Class)")
    return cls()

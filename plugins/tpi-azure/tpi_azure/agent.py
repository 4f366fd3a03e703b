"""The agent's Azure hooks: the eviction notice, the environment, the replica, leaving.

Everything here runs on the task's machine with its user-assigned identity: the Instance
Metadata Service says which instance this is, hands out the identity's tokens, and announces
a Spot eviction as a ``Preempt`` Scheduled Event (at least 30 s ahead; polled from the
agent's start, since the first look can take a while). The agent flushes, and the event is
acknowledged (``StartRequests``) as the agent ends, so the eviction need not wait for the
rest of its notice. Key Vault holds the task's environment; the scale set says which
instances are alive. Replica indexes are claimed by lease (:mod:`tpi_core.agent.lease`): a
lease is valid while its instance is in the task's scale set and not being deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tpi_azure import resources
from tpi_azure.arm import Arm
from tpi_azure.imds import AzureImds
from tpi_core.agent.hooks import GroupHooks
from tpi_core.errors import TpiError

_GONE = ("Deleting", "Failed")


class AzureHooks(GroupHooks):
    """Hooks of the agent on an Azure scale set (``--hooks tpi_azure.agent:AzureHooks``)."""

    def __init__(self, imds: AzureImds | None = None, arm: Arm | None = None):
        self.metadata = self.imds = imds or AzureImds(
            client_id=os.environ.get("TPI_AZURE_CLIENT_ID", ""))
        self._arm = arm
        self.subscription = os.environ.get("TPI_AZURE_SUBSCRIPTION", "")
        self.group = os.environ.get("TPI_AZURE_GROUP", "")
        self.scale_set = os.environ.get("TPI_AZURE_SCALE_SET", "")
        self.vault = os.environ.get("TPI_AZURE_VAULT", "")
        self._events: list[str] = []

    def arm(self) -> Arm:
        """ARM with the identity's token."""
        if self._arm is None:
            self._arm = Arm(self.subscription, self.imds.token)
        return self._arm

    async def machine_id(self) -> str:
        """This instance's name in the scale set (``{scale set}_{instance id}``)."""
        return str((await self.imds.compute())["name"])

    async def preempted(self) -> bool:
        """Whether a Preempt event names this instance (its id kept, to acknowledge)."""
        events = await self.imds.preempt_events()
        self._events = [str(e["EventId"]) for e in events if e.get("EventId")]
        return bool(events)

    async def alive(self, machine: str) -> bool:
        """Whether the instance is in the task's scale set and not on its way out."""
        if not machine:
            return False
        for instance in await resources.instances(self.arm(), self.group, self.scale_set):
            if instance.get("name") == machine:
                state = (instance.get("properties") or {}).get("provisioningState")
                return state not in _GONE
        return False

    async def leave(self, machine: str) -> None:
        """This instance out of the scale set, its capacity lowered (nothing replaces it)."""
        await resources.delete_instances(self.arm(), self.group, self.scale_set,
                                         [machine.rsplit("_", 1)[-1]])

    async def environment(self, spec: Mapping) -> Mapping[str, str]:
        """The task's environment values, from its Key Vault secret (none without keys)."""
        if not spec.get("environment_keys"):
            return {}
        return await resources.get_secret(self.arm(), self.vault,
                                          resources.secret_name(spec["id"]))

    async def aclose(self) -> None:
        """Acknowledge the eviction the agent flushed for, then close the connections."""
        for event in self._events:
            try:
                await self.imds.start(event)
            except TpiError:
                pass  # the eviction comes at its NotBefore anyway
        if self._arm is not None:
            try:
                await self._arm.aclose()
            except TpiError:
                pass
        await super().aclose()

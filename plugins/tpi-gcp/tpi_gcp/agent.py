"""The agent's GCP hooks: the preemption notice, the environment, the replica, leaving.

Everything here runs on the task's machine with its service account: the metadata server
says which instance this is, hands out the account's token, and announces a preemption
(``instance/preempted``, waited on: ACPI soft-off follows, about 30 s); Secret Manager holds
the task's environment; the regional group says which instances are alive. Replica indexes
are claimed by lease (:mod:`tpi_core.agent.lease`): a lease is valid while its instance is a
member of the task's group that is not being deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tpi_core.agent.hooks import GroupHooks
from tpi_core.errors import TpiError
from tpi_gcp import resources
from tpi_gcp.metadata import GceMetadata
from tpi_gcp.rest import GoogleApis

_GONE = ("DELETING", "ABANDONING", "RECREATING")


class GcpHooks(GroupHooks):
    """Hooks of the agent on GCE (``--hooks tpi_gcp.agent:GcpHooks``)."""

    machine_id_path = "instance/name"

    def __init__(self, metadata: GceMetadata | None = None, apis: GoogleApis | None = None):
        self.metadata = metadata or GceMetadata()
        self._apis = apis
        self.region = os.environ.get("TPI_GCP_REGION", "")
        self.group = os.environ.get("TPI_GCP_GROUP", "")

    async def apis(self) -> GoogleApis:
        """The project's APIs with the machine's token."""
        if self._apis is None:
            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or (
                await self.metadata.get("project/project-id") or "")

            async def token() -> str | None:
                return str((await self.metadata.token())["access_token"])

            self._apis = GoogleApis(project, token)
        return self._apis

    async def preempted(self) -> bool:
        """Whether the metadata server says the instance is being preempted."""
        return await self.metadata.preempted()

    async def wait_for_preemption(self) -> None:
        """Return once the instance is being preempted (a long wait on the metadata server,
        asked again after each answer)."""
        while not await self.metadata.preempted(wait=True):
            pass

    async def alive(self, machine: str) -> bool:
        """Whether the instance is a member of the task's group and not on its way out."""
        if not machine:
            return False
        for instance in await resources.managed_instances(await self.apis(), self.region,
                                                          self.group):
            if instance.get("instance", "").rsplit("/", 1)[-1] == machine:
                return instance.get("currentAction") not in _GONE
        return False

    async def leave(self, machine: str) -> None:
        """This instance out of the group, its size lowered (nothing replaces it)."""
        zone = await self.metadata.zone()
        await resources.leave_group(await self.apis(), self.region, self.group,
                                    f"zones/{zone}/instances/{machine}")

    async def environment(self, spec: Mapping) -> Mapping[str, str]:
        """The task's environment values, from its secret (none when it has no keys)."""
        if not spec.get("environment_keys"):
            return {}
        return await resources.get_environment(await self.apis(), spec["id"])

    async def aclose(self) -> None:
        """Close the metadata server's and the APIs' connections."""
        await super().aclose()
        if self._apis is not None:
            try:
                await self._apis.aclose()
            except TpiError:
                pass

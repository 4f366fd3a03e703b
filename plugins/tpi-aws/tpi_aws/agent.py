"""The agent's AWS hooks: spot notice, environment, replica index, and leaving the group.

Everything here runs on the task's machine with its instance profile: the instance metadata
service (IMDSv2) says which instance this is and whether a spot interruption is coming; SSM
holds the task's environment; the Auto Scaling group says which machines are alive.

Replica indexes are claimed by lease (:mod:`tpi_core.agent.lease`): a lease is valid while
its instance is a live member of the task's group and not terminating.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from tpi_aws import resources, scaling
from tpi_aws.client import AwsClient
from tpi_core.agent.hooks import GroupHooks
from tpi_core.agent.metadata import MetadataService
from tpi_core.errors import TransientError

IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
IMDS_DEFAULT = "http://169.254.169.254"
_GONE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated",
         "Detaching", "Detached")


class Imds(MetadataService):
    """IMDSv2: a session token first (PUT), then ``/latest/meta-data/`` paths with it."""

    def __init__(self, endpoint: str | None = None):
        super().__init__(endpoint or os.environ.get(IMDS_ENV) or IMDS_DEFAULT,
                         "/latest/meta-data/")
        self._token: str | None = None

    async def auth(self, renew: bool) -> dict[str, str]:
        if self._token is None or renew:
            status, token = await self.fetch("PUT", "/latest/api/token", headers={
                "X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            if status != 200:
                raise TransientError(f"instance metadata token: HTTP {status}")
            self._token = token
        return {"X-aws-ec2-metadata-token": self._token}


class AwsHooks(GroupHooks):
    """Hooks of the agent on EC2 (``--hooks tpi_aws.agent:AwsHooks``)."""

    notice_interval = float(os.environ.get("TPI_AWS_NOTICE_INTERVAL") or 5.0)
    """Seconds between two looks at the spot notice (AWS suggests 5)."""

    machine_id_path = "instance-id"

    def __init__(self, imds: Imds | None = None, client: AwsClient | None = None):
        self.metadata = self.imds = imds or Imds()
        self._client = client

    async def aws(self) -> AwsClient:
        """The region's clients (region from the unit's environment, else the metadata)."""
        if self._client is None:
            region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                      or await self.imds.get("placement/region"))
            self._client = AwsClient(region)
        return self._client

    async def preempted(self) -> bool:
        """Whether the metadata service announces a spot interruption (2-minute notice)."""
        return bool(await self.imds.get("spot/instance-action"))

    async def alive(self, machine: str) -> bool:
        """Whether the instance is in the task's group and not on its way out."""
        if not machine:
            return False
        row = await scaling.group_of_instance(await self.aws(), machine)
        return row is not None and row.get("LifecycleState") not in _GONE

    async def leave(self, machine: str) -> None:
        """Terminate the instance through its group, lowering the capacity (once out of
        the group, moto answers HTTP 500 here, AWS a ValidationError)."""
        await scaling.leave_group(await self.aws(), machine)

    async def environment(self, spec: Mapping) -> Mapping[str, str]:
        """The task's environment values, from its SSM parameter (none when it has no keys)."""
        if not spec.get("environment_keys"):
            return {}
        return await resources.get_environment(await self.aws(),
                                               resources.parameter_name(spec["id"]))

    async def aclose(self) -> None:
        """Close the clients."""
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()

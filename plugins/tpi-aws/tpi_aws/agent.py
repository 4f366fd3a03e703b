"""The agent's AWS hooks: spot notice, environment, replica index, and leaving the group.

Everything here runs on the task's machine with its instance profile: the instance metadata
service (IMDSv2) says which instance this is and whether a spot interruption is coming; SSM
holds the task's environment; the Auto Scaling group says which machines are alive.

Replica indexes are claimed with lease objects, ``reports/replica-N/lease.json`` holding the
instance id. A lease is valid while its instance is a live member of the task's group, so a
replacement machine takes over the index of the machine it replaces as soon as that one is
terminating, with no clock and no heartbeat to trust.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import anyio

from tpi_aws import resources, scaling
from tpi_aws.client import AwsClient
from tpi_core import layout
from tpi_core.agent.hooks import AgentHooks
from tpi_core.errors import ObjectNotFound, TpiError, TransientError
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.storage import Storage

IMDS_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
IMDS_DEFAULT = "http://169.254.169.254"
_GONE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated",
         "Detaching", "Detached")


def lease_key(index: int) -> str:
    """Key of a replica's lease."""
    return f"{layout.replica_prefix(index)}/lease.json"


class Imds:
    """A small IMDSv2 client (token first, then the metadata paths)."""

    def __init__(self, endpoint: str | None = None):
        self.endpoint = (endpoint or os.environ.get(IMDS_ENV) or IMDS_DEFAULT).rstrip("/")
        self._token: str | None = None

    async def get(self, path: str) -> str | None:
        """``/latest/meta-data/<path>``; None when the service has no such item (404)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=5)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                return await self._get(http, path)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"instance metadata {path}: {type(exc).__name__}") from exc

    async def _get(self, http, path: str) -> str | None:
        for _ in range(2):
            if self._token is None:
                async with http.put(f"{self.endpoint}/latest/api/token", headers={
                        "X-aws-ec2-metadata-token-ttl-seconds": "21600"}) as reply:
                    reply.raise_for_status()
                    self._token = await reply.text()
            async with http.get(f"{self.endpoint}/latest/meta-data/{path}",
                                headers={"X-aws-ec2-metadata-token": self._token}) as reply:
                if reply.status == 401:  # the token expired: get another one
                    self._token = None
                    continue
                if reply.status == 404:
                    return None
                reply.raise_for_status()
                return await reply.text()
        return None


class AwsHooks(AgentHooks):
    """Hooks of the agent on EC2 (``--hooks tpi_aws.agent:AwsHooks``)."""

    notice_interval = float(os.environ.get("TPI_AWS_NOTICE_INTERVAL") or 5.0)
    """Seconds between two looks at the spot notice (AWS suggests 5)."""
    claim_settle = 2.0
    claim_patience = 300.0

    def __init__(self, imds: Imds | None = None, client: AwsClient | None = None):
        self.imds = imds or Imds()
        self._client = client
        self._instance: str | None = None

    async def instance_id(self) -> str:
        """This machine's instance id."""
        if self._instance is None:
            self._instance = await self.imds.get("instance-id")
        return self._instance

    async def aws(self) -> AwsClient:
        """The region's clients (region from the unit's environment, else the metadata)."""
        if self._client is None:
            region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                      or await self.imds.get("placement/region"))
            self._client = AwsClient(region)
        return self._client

    async def wait_for_preemption(self) -> None:
        """Return once the metadata service announces a spot interruption (2-minute notice)."""
        while True:
            try:
                if await self.imds.get("spot/instance-action"):
                    return
            except TransientError:
                pass  # the next poll tries again
            await anyio.sleep(self.notice_interval)

    async def on_exit(self, status: ReplicaStatus | None) -> None:
        """Remove this instance, and only it, from the group, lowering the capacity."""
        client, instance = await self.aws(), await self.instance_id()
        try:
            await scaling.leave_group(client, instance)
        except TpiError:
            # already out of the group (moto answers HTTP 500 here, AWS a ValidationError)
            if await self._alive(instance):
                raise

    async def environment(self, spec: Mapping) -> Mapping[str, str]:
        """The task's environment values, from its SSM parameter (none when it has no keys)."""
        if not spec.get("environment_keys"):
            return {}
        return await resources.get_environment(await self.aws(),
                                               resources.parameter_name(spec["id"]))

    async def replica_index(self, storage: Storage, spec: Mapping) -> int | None:
        """Claim the replica this machine runs; None when every replica is done or taken."""
        me, count = await self.instance_id(), int(spec.get("parallelism", 1))
        limit = time.monotonic() + self.claim_patience
        while True:
            free = await self._free(storage, count, me)
            if free and await self._claim(storage, free[0], me):
                return free[0]
            if not free and time.monotonic() > limit:
                await self.on_exit(None)
                return None
            await anyio.sleep(self.claim_settle)

    async def _free(self, storage: Storage, count: int, me: str) -> list[int]:
        free = []
        for index in range(count):
            state = await _read_json(storage, layout.status_key(index))
            if state and ReplicaState(state.get("state", "pending")).final:
                continue
            holder = await _read_json(storage, lease_key(index))
            if holder and holder.get("instance") == me:
                return [index]  # this machine rebooted: it keeps its replica
            if not holder or not await self._alive(holder.get("instance", "")):
                free.append(index)
        return free

    async def _claim(self, storage: Storage, index: int, me: str) -> bool:
        lease = {"instance": me, "time": time.time()}
        await storage.write(lease_key(index), json.dumps(lease).encode())
        # last writer wins: whoever reads their own lease back after the pause holds it
        await anyio.sleep(self.claim_settle)
        holder = await _read_json(storage, lease_key(index))
        return bool(holder) and holder.get("instance") == me

    async def _alive(self, instance: str) -> bool:
        if not instance:
            return False
        row = await scaling.group_of_instance(await self.aws(), instance)
        return row is not None and row.get("LifecycleState") not in _GONE

    async def aclose(self) -> None:
        """Close the clients."""
        if self._client is not None:
            await self._client.aclose()


AWSHooks = AwsHooks
"""The spelling of :mod:`tpi_core.agent.hooks`' docstring."""


async def _read_json(storage: Storage, key: str) -> dict | None:
    try:
        return json.loads(await storage.read(key))
    except (ObjectNotFound, ValueError):
        return None

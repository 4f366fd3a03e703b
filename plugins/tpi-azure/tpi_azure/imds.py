"""Azure's Instance Metadata Service, for the agent and tpi's token sources on an Azure VM.

Paths under ``/metadata/`` with the ``Metadata: true`` header (IMDS answers 400 without it),
plain HTTP at 169.254.169.254, or at the origin ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` names,
as azure-identity reads it. It tells the managed identity's access token for a resource (the
user-assigned identity's with its ``client_id``), the instance's compute facts (its name,
``{scale set}_{instance id}`` in a scale set, its resource group and subscription), and the
Scheduled Events: a ``Preempt`` announces a Spot eviction (at least 30 s ahead), and is
acknowledged with ``StartRequests`` so the eviction need not wait for the rest of the notice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from tpi_core.agent.metadata import MetadataService
from tpi_core.errors import TransientError

HOST_ENV = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
HOST_DEFAULT = "http://169.254.169.254"
TOKEN_VERSION, COMPUTE_VERSION, EVENTS_VERSION = "2018-02-01", "2021-02-01", "2020-07-01"
ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
"""The chassis asset tag of every Azure VM (how azure-identity and cloud-init know one)."""


def on_azure() -> bool:
    """Whether this is an Azure VM (or ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` names an
    IMDS)."""
    if os.environ.get(HOST_ENV):
        return True
    try:
        with open("/sys/class/dmi/id/chassis_asset_tag") as f:
            return f.read().strip() == ASSET_TAG
    except OSError:
        return False


class AzureImds(MetadataService):
    """The IMDS of this VM; ``endpoint`` overrides ``AZURE_POD_IDENTITY_AUTHORITY_HOST``."""

    token_margin = 300.0
    """Seconds before its expiry that a cached token is asked for again."""

    def __init__(self, endpoint: str | None = None, client_id: str = ""):
        host = endpoint or os.environ.get(HOST_ENV) or HOST_DEFAULT
        super().__init__(host if "://" in host else f"http://{host}", "/metadata/",
                         {"Metadata": "true"})
        self.client_id = client_id
        self._tokens: dict[str, tuple[str, float]] = {}
        self._compute: Mapping[str, Any] | None = None

    async def token(self, resource: str) -> str:
        """The managed identity's access token for ``resource`` (``https://storage.azure.com/``),
        cached until shortly before it expires."""
        cached = self._tokens.get(resource)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        query = {"api-version": TOKEN_VERSION, "resource": resource}
        if self.client_id:
            query["client_id"] = self.client_id
        text = await self._required("identity/oauth2/token", query)
        try:
            found = json.loads(text)
            token, expires_in = found["access_token"], float(found.get("expires_in") or 0)
            if not isinstance(token, str):
                raise TypeError("access_token")
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError("instance metadata token: not a token") from exc
        self._tokens[resource] = (token, time.monotonic() + expires_in - self.token_margin)
        return token

    async def compute(self) -> Mapping[str, Any]:
        """The instance's compute facts (``name``, ``vmScaleSetName``, ``resourceGroupName``,
        ``subscriptionId``, ``location``), asked once."""
        if self._compute is None:
            text = await self._required("instance/compute", {"api-version": COMPUTE_VERSION})
            try:
                self._compute = json.loads(text)
            except ValueError as exc:
                raise TransientError("instance metadata compute: not JSON") from exc
        return self._compute

    async def instance_id(self) -> str:
        """The instance id in its scale set (after the last ``_`` of its name)."""
        return str((await self.compute())["name"]).rsplit("_", 1)[-1]

    events_timeout = 150.0
    """Seconds a look at Scheduled Events may take: the first one of a VM turns the service
    on and can take about 2 minutes."""

    async def preempt_events(self) -> list[Mapping[str, Any]]:
        """The ``Preempt`` events that name this instance."""
        text = await self._required("scheduledevents", {"api-version": EVENTS_VERSION},
                                    timeout=self.events_timeout)
        try:
            events = json.loads(text).get("Events") or []
        except (ValueError, AttributeError) as exc:
            raise TransientError("scheduled events: not JSON") from exc
        name = (await self.compute()).get("name")
        return [e for e in events if e.get("EventType") == "Preempt"
                and (not e.get("Resources") or name in e["Resources"])]

    async def start(self, event_id: str) -> None:
        """Acknowledge an event: it may go ahead now."""
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        status, text = await self.fetch(
            "POST", self.root + "scheduledevents", {"api-version": EVENTS_VERSION},
            {"Content-Type": "application/json"}, data=body)
        if status != 200:
            raise TransientError(f"scheduled events: acknowledging {event_id}: HTTP {status}")

    async def _required(self, path: str, query: Mapping[str, str],
                        timeout: float | None = None) -> str:
        text = await self.get(path, query, timeout=timeout)
        if text is None:
            raise TransientError(f"instance metadata {path}: not found")
        return text

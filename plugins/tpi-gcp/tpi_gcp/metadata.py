"""The GCE metadata server, for the agent's hooks on a GCE machine.

Paths under ``/computeMetadata/v1/`` with the ``Metadata-Flavor: Google`` header (the server
answers 403 without it), plain HTTP at ``metadata.google.internal``, or at the host (and
port) ``GCE_METADATA_HOST`` names, as Google's libraries read it. It tells the service
account's access token, the instance's name and zone, the MIG that created it and whether
the instance is being preempted (``instance/preempted``, which can be waited on).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from tpi_core.agent.metadata import MetadataService
from tpi_core.errors import TransientError

HOST_ENV = "GCE_METADATA_HOST"
HOST_DEFAULT = "metadata.google.internal"
TOKEN_PATH = "instance/service-accounts/default/token"


class GceMetadata(MetadataService):
    """The metadata server of this instance; ``endpoint`` (``http://host:port``) overrides
    ``GCE_METADATA_HOST``."""

    token_margin = 60.0
    """Seconds before its ``expires_in`` that a cached token is asked for again."""

    wait_seconds = 300
    """How long one ``wait_for_change`` request waits (the server's ``timeout_sec``); the
    server then answers the current value."""

    def __init__(self, endpoint: str | None = None):
        host = endpoint or os.environ.get(HOST_ENV) or HOST_DEFAULT
        super().__init__(host if "://" in host else f"http://{host}", "/computeMetadata/v1/",
                         {"Metadata-Flavor": "Google"})
        self._token: Mapping[str, Any] | None = None
        self._expires = 0.0

    async def token(self) -> Mapping[str, Any]:
        """The default service account's token (``access_token``, ``expires_in``,
        ``token_type``), cached until shortly before it expires."""
        if self._token is None or time.monotonic() >= self._expires:
            text = await self._required(TOKEN_PATH)
            try:
                token = json.loads(text)
                expires_in = float(token["expires_in"])
                if not isinstance(token["access_token"], str):
                    raise TypeError("access_token")
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientError("instance metadata token: not a token") from exc
            self._token = token
            self._expires = time.monotonic() + expires_in - self.token_margin
        return self._token

    async def preempted(self, wait: bool = False) -> bool:
        """Whether the instance is being preempted. ``wait``: return once the value changes
        (or after :attr:`wait_seconds`, with the current value). A value already TRUE is
        answered at once; one that turns TRUE between that look and the wait is answered
        when the wait ends."""
        text = await self.get("instance/preempted")
        if _true(text) or not wait:
            return _true(text)
        text = await self.get("instance/preempted", {
            "wait_for_change": "true", "timeout_sec": str(self.wait_seconds)},
            timeout=self.wait_seconds + 30)
        return _true(text)

    async def instance_name(self) -> str:
        """This instance's name."""
        return await self._required("instance/name")

    async def zone(self) -> str:
        """This instance's zone (``europe-west1-b``; the server says
        ``projects/NUMBER/zones/ZONE``)."""
        return (await self._required("instance/zone")).rsplit("/", 1)[-1]

    async def created_by(self) -> str | None:
        """The URL of the instance group manager that created this instance
        (``projects/NUMBER/regions/REGION/instanceGroupManagers/NAME``); None outside one."""
        text = await self.get("instance/attributes/created-by")
        return text.strip() if text is not None else None

    async def _required(self, path: str) -> str:
        text = await self.get(path)
        if text is None:
            raise TransientError(f"instance metadata {path}: not found")
        return text.strip()


def _true(text: str | None) -> bool:
    return (text or "").strip().upper() == "TRUE"

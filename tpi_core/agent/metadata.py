"""The instance metadata service of a cloud machine, for the agent's hooks.

Every VM cloud answers plain HTTP on a link-local address (AWS's IMDS, GCE's metadata
server, Azure's IMDS) with a header that proves the caller is on the machine. One client
serves them all: the core's pool (:mod:`tpi_core.transport.pool`), never through a proxy
(a proxy would ask its own metadata, or none), a 404 as None, and anything else that fails
as a :class:`~tpi_core.errors.TransientError` the agent's loops retry. A cloud that wants a
session token first (IMDSv2) gives it through :meth:`MetadataService.auth`.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

import anyio

from tpi_core.errors import TpiError, TransientError
from tpi_core.transport.pool import Pool


class MetadataService:
    """GETs of one metadata service, of paths under ``root`` (``/latest/meta-data/``,
    ``/computeMetadata/v1/``); ``headers`` go with every request."""

    timeout = 5.0
    """Seconds a plain answer may take (the service is on the machine's own host)."""

    def __init__(self, endpoint: str, root: str = "/",
                 headers: Mapping[str, str] | None = None):
        self.endpoint, self.root = endpoint.rstrip("/"), root
        self.headers = dict(headers or {})
        self._pool: Pool | None = None

    async def auth(self, renew: bool) -> Mapping[str, str]:
        """Headers that authorize a request (none; IMDSv2 answers a token); ``renew`` after
        the service answered 401."""
        return {}

    async def get(self, path: str, query: Mapping[str, str] | None = None, *,
                  timeout: float | None = None) -> str | None:
        """The text at ``path`` under the root; None when the service has no such item.
        ``timeout`` None: the class's; a long wait (GCE's ``wait_for_change``) passes its
        own."""
        for attempt in range(2):
            status, text = await self.fetch("GET", self.root + path, query,
                                            await self.auth(attempt > 0), timeout=timeout)
            if status == 401 and attempt == 0:
                continue  # a session token that expired: get another one
            if status == 404:
                return None
            if status != 200:
                raise TransientError(f"instance metadata {path}: HTTP {status}")
            return text
        return None

    async def fetch(self, method: str, path: str, query: Mapping[str, str] | None = None,
                    headers: Mapping[str, str] | None = None, *,
                    timeout: float | None = None, data: bytes | None = None
                    ) -> tuple[int, str]:
        """One request (``data``: its body): its status and text. Network failures and
        timeouts are transient."""
        target = path + (f"?{urlencode(query)}" if query else "")
        if self._pool is None:  # reads end by fail_after: a long wait is one read
            self._pool = Pool(self.endpoint, limit=4, connect_timeout=self.timeout,
                              read_timeout=24 * 3600, proxy=None)
        try:
            with anyio.fail_after(timeout or self.timeout):
                sent = {**self.headers, **(headers or {})}
                if data is not None:
                    sent["Content-Length"] = str(len(data))
                async with self._pool.request(method, target, sent, data) as response:
                    return response.status, (await response.read()).decode()
        except (TpiError, OSError, TimeoutError) as exc:  # the pool's errors are TpiErrors
            raise TransientError(f"instance metadata {path}: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        """Close the connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

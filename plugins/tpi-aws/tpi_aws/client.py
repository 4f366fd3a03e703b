"""The compute-side AWS APIs (EC2, Auto Scaling, IAM, SSM, STS) behind one small surface.

This module and :mod:`tpi_aws.storage` are the only ones that touch aioboto3 clients, so
every SDK error is mapped here, once: callers only ever see :mod:`tpi_core.errors` types.
An error code a caller expects ("already exists" for a create, "not found" for a delete)
is passed in ``ok`` and comes back as ``None`` instead of an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import anyio

from tpi_aws.errors import translate

RETRIES = 6
"""botocore's own attempts for throttling and 5xx (control-plane calls are few and cheap)."""


def error_code(exc: BaseException) -> str:
    """The AWS error code of an SDK exception, or ``""``."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class AwsClient:
    """The clients of one region, each opened on first use and closed by :meth:`aclose`."""

    def __init__(self, region: str, session: Any = None):
        self.region = region
        self._session = session
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = anyio.Lock()

    async def _client(self, service: str) -> Any:
        async with self._lock:
            if service not in self._clients:
                from tpi_aws import _session

                if self._session is None:
                    self._session = _session.new_session(self.region)
                client = self._session.client(
                    service, region_name=self.region,
                    config=_session.client_config(concurrency=4, retries=RETRIES))
                self._clients[service] = await self._stack.enter_async_context(client)
            return self._clients[service]

    async def call(self, service: str, operation: str, *, ok: Iterable[str] = (),
                   **params: Any) -> dict | None:
        """Run one API operation (snake_case name); a code listed in ``ok`` returns None."""
        try:
            client = await self._client(service)
            return await getattr(client, operation)(**params)
        except Exception as exc:
            if error_code(exc) in set(ok):
                return None
            raise translate(exc, _action(service, operation)) from exc

    async def pages(self, service: str, operation: str, key: str, **params: Any) -> list:
        """Every item under ``key`` of every page of a paginated operation."""
        items: list = []
        try:
            client = await self._client(service)
            async for page in client.get_paginator(operation).paginate(**params):
                items.extend(page.get(key, []))
        except Exception as exc:
            raise translate(exc, _action(service, operation)) from exc
        return items

    async def aclose(self) -> None:
        """Close every opened client. Safe to call twice."""
        async with self._lock:
            self._clients.clear()
            await self._stack.aclose()


def _action(service: str, operation: str) -> str:
    """The IAM action of an API call (``ec2``, ``create_security_group`` -> ``ec2:Create...``),
    so a permission error names what to grant."""
    return f"{service}:{''.join(part.capitalize() for part in operation.split('_'))}"

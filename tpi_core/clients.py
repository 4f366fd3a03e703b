"""A cloud's control-plane SDK clients behind one small surface, for its backend and agent.

A backend talks to several services of one region or project (EC2 and IAM; Compute and IAM;
Compute and Network). :class:`ServiceClients` opens each client on first use, closes them all
in :meth:`~ServiceClients.aclose`, and maps every SDK error once, here, into
:mod:`tpi_core.errors`: callers never see an SDK's exception. An error code a caller expects
("already exists" for a create, "not found" for a delete) is passed in ``ok`` and comes
back as ``None`` instead of an exception, which is what makes every step idempotent.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import anyio

from tpi_core.errors import TpiError


class ServiceClients(ABC):
    """The clients of one region (or project), each opened on first use."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = anyio.Lock()

    @abstractmethod
    def open_client(self, service: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """An async context manager that yields the SDK's client of ``service``."""

    @abstractmethod
    def error_code(self, exc: BaseException) -> str:
        """The service's error code of an SDK exception (``""`` when it has none)."""

    @abstractmethod
    def translate(self, exc: BaseException, service: str, operation: str) -> TpiError:
        """The tpi error for an SDK exception raised by ``operation``."""

    async def invoke(self, client: Any, operation: str, params: dict[str, Any]) -> Any:
        """Run one operation of a client (an async SDK's method; a blocking SDK runs it in
        a worker thread here)."""
        return await getattr(client, operation)(**params)

    async def client(self, service: str) -> Any:
        """The client of ``service`` (opened now if it is not yet)."""
        async with self._lock:
            if service not in self._clients:
                self._clients[service] = await self._stack.enter_async_context(
                    self.open_client(service))
            return self._clients[service]

    async def call(self, service: str, operation: str, *, ok: Iterable[str] = (),
                   **params: Any) -> Any:
        """Run one operation; an error whose code is listed in ``ok`` returns None."""
        try:
            return await self.invoke(await self.client(service), operation, params)
        except Exception as exc:
            if self.error_code(exc) in set(ok):
                return None
            raise self.translate(exc, service, operation) from exc

    async def aclose(self) -> None:
        """Close every opened client. Safe to call twice."""
        async with self._lock:
            self._clients.clear()
            await self._stack.aclose()

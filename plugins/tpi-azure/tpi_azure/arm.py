"""Azure Resource Manager (and Key Vault's secrets) as JSON requests on the core's HTTP pool,
for the backend and the agent alike.

Why not ``azure-mgmt-compute`` and its siblings: a scale set needs compute, and a task also
needs resource groups, networks, identities, role assignments, storage accounts, Key Vault
and autoscale, which are six more management packages (or ``send_request`` calls beside the
one client); ``azure.mgmt.compute.aio`` alone costs 0.24 s to import and 0.37 s to build, for
calls that are each one JSON request. Here every call is one request on
:class:`tpi_core.transport.pool.Pool`, errors are mapped once (:func:`error_for`), and
long-running operations are followed the way ARM documents them (``Azure-AsyncOperation``,
else ``Location``). ``TPI_AZURE_ENDPOINT`` sends every ARM request to one origin (the tests'
fake, which ``tests/integration/azure/test_fake_arm.py`` checks against azure-mgmt-compute's
own requests).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio

from tpi_core.errors import (
    BackendError,
    PermissionDenied,
    QuotaExceeded,
    ResourceNotFound,
    TpiError,
    TransientError,
)
from tpi_core.transport.apis import ApiPools, retry_after

ENDPOINT_ENV = "TPI_AZURE_ENDPOINT"
MANAGEMENT = "https://management.azure.com"
MANAGEMENT_RESOURCE = "https://management.azure.com/"
VAULT_RESOURCE = "https://vault.azure.net"
STORAGE_RESOURCE = "https://storage.azure.com/"
VERSIONS = {
    "resources": "2024-03-01",
    "Microsoft.Compute": "2026-04-01",  # azure-mgmt-compute 39's
    "Microsoft.Network": "2024-05-01",
    "Microsoft.ManagedIdentity": "2023-01-31",
    "Microsoft.Authorization": "2022-04-01",
    "Microsoft.Storage": "2023-05-01",
    "Microsoft.KeyVault": "2023-07-01",
    "Microsoft.Insights": "2022-10-01",
    "vault": "7.4",
}
"""The API version of each provider tpi calls."""
TokenSource = Callable[[str], Awaitable[str | None]]
"""An access token for a resource (``https://management.azure.com/``); None: send none."""

_KINDS: dict[str, type[TpiError]] = {
    "ResourceNotFound": ResourceNotFound, "ResourceGroupNotFound": ResourceNotFound,
    "NotFound": ResourceNotFound, "SecretNotFound": ResourceNotFound,
    "ParentResourceNotFound": ResourceNotFound, "VaultNotFound": ResourceNotFound,
    "AuthorizationFailed": PermissionDenied, "LinkedAuthorizationFailed": PermissionDenied,
    "AuthenticationFailed": PermissionDenied, "InvalidAuthenticationToken": PermissionDenied,
    "InvalidAuthenticationTokenAudience": PermissionDenied, "Forbidden": PermissionDenied,
    "ExpiredAuthenticationToken": PermissionDenied,
    "MissingSubscriptionRegistration": PermissionDenied,
    "SubscriptionNotFound": PermissionDenied,
    "QuotaExceeded": QuotaExceeded, "OperationNotAllowed": QuotaExceeded,
    "SkuNotAvailable": QuotaExceeded, "AllocationFailed": QuotaExceeded,
    "ZonalAllocationFailed": QuotaExceeded, "OverconstrainedAllocationRequest": QuotaExceeded,
    "TooManyRequests": TransientError, "RetryableError": TransientError,
    "InternalServerError": TransientError, "AnotherOperationInProgress": TransientError,
    "RetryableErrorDuringOperation": TransientError, "ServerTimeout": TransientError,
    "PrincipalNotFound": TransientError,  # a new identity not yet seen by Entra ID
}
_DONE = ("succeeded", "failed", "canceled", "cancelled")


def error_for(status: int, body: bytes, what: str) -> TpiError:
    """The tpi error of an ARM or Key Vault error answer (``{"error": {"code",
    "message"}}``), naming an unregistered provider as "Microsoft.Compute is not registered
    for this subscription"."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", body.decode("utf-8", "replace").strip()[:300]
    if code == "MissingSubscriptionRegistration":
        found = re.search(r"namespace '([^']+)'", message)
        namespace = found.group(1) if found else "a provider"
        error_ = PermissionDenied(f"{what}: {namespace} is not registered for this "
                                  f"subscription (az provider register --namespace "
                                  f"{namespace})")
        error_.code = code  # type: ignore[attr-defined]
        return error_
    kind = _KINDS.get(code)
    if kind is None:
        kind = {401: PermissionDenied, 403: PermissionDenied, 404: ResourceNotFound,
                429: TransientError}.get(status, TransientError if status >= 500
                                         else BackendError)
    error_ = kind(f"{what}: {code + ': ' if code else ''}{message or status}")
    error_.code = code  # type: ignore[attr-defined]
    return error_


def code_of(exc: BaseException) -> str:
    """The ARM error code of a mapped error (``ResourceNotFound``), or ""."""
    return getattr(exc, "code", "")


class Arm:
    """JSON requests to ARM for one subscription (``TPI_AZURE_ENDPOINT``: one origin), and
    to Key Vault's data plane at the URLs ARM gives."""

    def __init__(self, subscription: str, token: TokenSource, endpoint: str | None = None):
        self.subscription, self._token = subscription, token
        self.origin = (endpoint or os.environ.get(ENDPOINT_ENV) or MANAGEMENT).rstrip("/")
        self._apis = ApiPools()
        self.poll_interval = 2.0
        """Seconds between two looks at an operation (when it gives no Retry-After)."""

    def sub(self, path: str = "") -> str:
        """A path under the subscription."""
        return f"/subscriptions/{self.subscription}{path}"

    async def call(self, method: str, path: str, *, version: str, body: Any = None,
                   query: Mapping[str, Any] | None = None, ok: Iterable[str] = (),
                   what: str = "", resource: str = MANAGEMENT_RESOURCE,
                   wait: bool = True, timeout: float = 1800) -> dict | None:
        """One request (``path`` from ARM's root, or an absolute URL), its long-running
        operation followed to the end when ``wait``; an error whose code is in ``ok``
        (``ResourceNotFound``) returns None."""
        what = what or f"{method} {path}"
        query = {"api-version": version, **(query or {})}
        status, headers, payload = await self._send(method, path, query, body, resource,
                                                    what)
        if status >= 300:
            error = error_for(status, payload, what)
            if code_of(error) in ok or (status == 404 and "NotFound" in ok):
                return None
            raise error
        found = json.loads(payload) if payload.strip() else {}
        operation = headers.get("azure-asyncoperation") or (
            headers.get("location") if status == 202 else None)
        if wait and operation and (status == 202 or headers.get("azure-asyncoperation")):
            await self._follow(operation, bool(headers.get("azure-asyncoperation")),
                               resource, what, timeout)
            if method in ("PUT", "PATCH") and not path.startswith("http"):
                found = await self.call("GET", path, version=version, what=what,
                                        resource=resource) or found
        return found

    async def pages(self, path: str, *, version: str,
                    query: Mapping[str, Any] | None = None) -> AsyncIterator[dict]:
        """Every item of every page of a list (``value``, ``nextLink``)."""
        page = await self.call("GET", path, version=version, query=query) or {}
        while True:
            for item in page.get("value") or ():
                yield item
            if not page.get("nextLink"):
                return
            page = await self._get_url(page["nextLink"], "list")

    async def _follow(self, url: str, async_operation: bool, resource: str, what: str,
                      timeout: float) -> None:
        """Wait for an operation: ``Azure-AsyncOperation`` says its status in the body,
        ``Location`` answers 202 until done."""
        limit = time.monotonic() + timeout
        while True:
            status, headers, payload = await self._send("GET", url, {}, None, resource,
                                                        f"wait for {what}")
            if status >= 300:
                raise error_for(status, payload, what)
            found = json.loads(payload) if payload.strip() else {}
            if async_operation:
                state = str(found.get("status") or "").lower()
                if state in _DONE:
                    if state != "succeeded":
                        error = found.get("error") or {"code": state.title(), "message": ""}
                        raise error_for(400, json.dumps({"error": error}).encode(), what)
                    return
            elif status != 202:
                return
            if time.monotonic() > limit:
                raise TransientError(f"{what}: not done after {timeout:g} s")
            await anyio.sleep(retry_after(headers, self.poll_interval))

    async def _get_url(self, url: str, what: str) -> dict:
        status, _, payload = await self._send("GET", url, {}, None, MANAGEMENT_RESOURCE,
                                              what)
        if status >= 300:
            raise error_for(status, payload, what)
        return json.loads(payload) if payload.strip() else {}

    async def _send(self, method: str, path: str, query: Mapping[str, Any], body: Any,
                    resource: str, what: str) -> tuple[int, dict[str, str], bytes]:
        """One request, retried on the network's failures, 429 and 5xx (Retry-After
        honoured: :class:`~tpi_core.transport.apis.ApiPools`); its status, lowercased
        headers and body."""
        if path.startswith("http"):
            parts = urlsplit(path)
            origin, target = f"{parts.scheme}://{parts.netloc}", parts.path + (
                f"?{parts.query}" if parts.query else "")
            if query:
                target += ("&" if "?" in target else "?") + urlencode(query)
        else:
            origin, target = self.origin, path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Length": str(len(data or b""))}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if (token := await self._token(resource)) is not None:
            headers["Authorization"] = f"Bearer {token}"
        answer = await self._apis.exchange(origin, method, target, headers, data, what,
                                           attempts=5)
        return answer.status, dict(answer.headers), answer.body

    async def aclose(self) -> None:
        """Close the connections."""
        await self._apis.aclose()

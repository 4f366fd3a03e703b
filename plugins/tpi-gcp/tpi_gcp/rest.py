"""Google's control-plane REST APIs (Compute Engine, IAM, Resource Manager, Secret Manager)
on the core's HTTP pool, for the backend and the agent alike.

Why not ``google-cloud-compute``: its client is synchronous (every call a worker thread),
costs 1.5 s to import (grpc and protobuf, though it talks REST), and its operation polling
ignores the endpoint it was given; and IAM and Secret Manager would each bring another
client. Every call here is one JSON request on :class:`tpi_core.transport.pool.Pool`, errors
are mapped once (:func:`error_for`), and long-running operations are waited for with their
``wait`` method. ``TPI_GCE_ENDPOINT`` sends every API to one origin (the tests' fake, which
``tests/integration/gcp/test_fake_gce.py`` checks against the official client's requests).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from tpi_core.errors import (
    BackendError,
    PermissionDenied,
    QuotaExceeded,
    ResourceNotFound,
    TpiError,
    TransientError,
)
from tpi_core.transport.apis import Answer, ApiPools

ENDPOINT_ENV = "TPI_GCE_ENDPOINT"
HOSTS = {"compute": "https://compute.googleapis.com", "iam": "https://iam.googleapis.com",
         "resourcemanager": "https://cloudresourcemanager.googleapis.com",
         "secretmanager": "https://secretmanager.googleapis.com",
         "storage": "https://storage.googleapis.com"}
API_NAMES = {"compute": "Compute Engine API", "iam": "IAM API",
             "resourcemanager": "Cloud Resource Manager API",
             "secretmanager": "Secret Manager API", "storage": "Cloud Storage API"}
_OPERATION_CODES = {"RESOURCE_ALREADY_EXISTS": "alreadyExists",
                    "RESOURCE_NOT_FOUND": "notFound", "QUOTA_EXCEEDED": "quotaExceeded"}
"""An operation's error codes, as the reasons of a request's error."""
TokenSource = Callable[[], Awaitable[str | None]]
"""An access token for each request (None: send none, as to an emulator)."""

_REASONS: dict[str, type[TpiError]] = {
    "notFound": ResourceNotFound, "forbidden": PermissionDenied,
    "insufficientPermissions": PermissionDenied, "accessNotConfigured": PermissionDenied,
    "SERVICE_DISABLED": PermissionDenied, "quotaExceeded": QuotaExceeded,
    "QUOTA_EXCEEDED": QuotaExceeded, "ZONE_RESOURCE_POOL_EXHAUSTED": QuotaExceeded,
    "rateLimitExceeded": TransientError, "userRateLimitExceeded": TransientError,
    "resourceInUseByAnotherResource": TransientError, "resourceNotReady": TransientError,
    "backendError": TransientError, "RESOURCE_NOT_FOUND": ResourceNotFound,
}


def error_for(status: int, body: bytes, what: str, api: str = "compute",
              project: str = "") -> TpiError:
    """The tpi error of a Google error answer (``{"error": {"code", "message", "errors":
    [{"reason"}]}}``), naming a disabled API as "Compute Engine API not enabled for project X"."""
    try:
        error = json.loads(body)["error"]
        message = str(error.get("message") or "")
        reasons = [e.get("reason", "") for e in error.get("errors") or []]
        reasons += [d.get("reason", "") for d in error.get("details") or [] if isinstance(d, dict)]
    except (ValueError, KeyError, TypeError, AttributeError):
        message, reasons = body.decode("utf-8", "replace").strip()[:300], []
    if {"accessNotConfigured", "SERVICE_DISABLED"} & set(reasons):
        return PermissionDenied(f"{what}: {API_NAMES.get(api, api)} not enabled for project "
                                f"{project or '?'} (gcloud services enable "
                                f"{urlsplit(HOSTS.get(api, '')).hostname})")
    kind = next((_REASONS[r] for r in reasons if r in _REASONS), None)
    if kind is None:
        kind = {401: PermissionDenied, 403: PermissionDenied, 404: ResourceNotFound,
                429: TransientError}.get(status, TransientError if status >= 500
                                         else BackendError)
    reason = next((r for r in reasons if r), "")
    error = kind(f"{what}: {message or status}" + (f" ({reason})" if reason else ""))
    error.reason = reason  # type: ignore[attr-defined]
    return error


def reason_of(exc: BaseException) -> str:
    """The first reason of a mapped Google error (``alreadyExists``), or ""."""
    return getattr(exc, "reason", "")


class GoogleApis:
    """JSON requests to Google's APIs for one project (``TPI_GCE_ENDPOINT``: one origin)."""

    def __init__(self, project: str, token: TokenSource, endpoint: str | None = None):
        self.project, self._token = project, token
        self._endpoint = (endpoint or os.environ.get(ENDPOINT_ENV) or "").rstrip("/")
        self._apis = ApiPools()

    def origin(self, api: str) -> str:
        """Where requests to ``api`` go (storage: ``STORAGE_EMULATOR_HOST`` when set, as the
        Google SDKs read it)."""
        if api == "storage":
            emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
            return emulator or HOSTS[api]
        return self._endpoint or HOSTS[api]

    async def call(self, method: str, path: str, *, api: str = "compute",
                   query: Mapping[str, Any] | None = None, body: Any = None,
                   ok: Iterable[str] = (), what: str = "") -> dict | None:
        """One request (``path`` from the API's root); an error whose reason is in ``ok``
        (``alreadyExists``, ``notFound``) returns None."""
        what = what or f"{method} {path}"
        origin = self.origin(api)
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if (token := await self._token()) is not None:
            headers["Authorization"] = f"Bearer {token}"

        def transient(answer: Answer) -> bool:
            error = error_for(answer.status, answer.body, what, api, self.project)
            return isinstance(error, TransientError) and not _expected(error, answer.status,
                                                                       ok)

        answer = await self._apis.exchange(origin, method, target, headers, data, what,
                                           retry=transient)
        if answer.status < 300:
            return json.loads(answer.body) if answer.body.strip() else {}
        error = error_for(answer.status, answer.body, what, api, self.project)
        if _expected(error, answer.status, ok):
            return None
        raise error

    async def pages(self, path: str, key: str, *, api: str = "compute",
                    query: Mapping[str, Any] | None = None) -> AsyncIterator[dict]:
        """Every item under ``key`` of every page of a list (``pageToken``)."""
        query = dict(query or {})
        while True:
            page = await self.call("GET", path, api=api, query=query) or {}
            for item in page.get(key) or ():
                yield item
            if not page.get("nextPageToken"):
                return
            query["pageToken"] = page["nextPageToken"]

    async def operate(self, method: str, path: str, *, body: Any = None,
                      ok: Iterable[str] = (), what: str = "",
                      timeout: float = 600) -> dict | None:
        """A Compute Engine request that answers an operation, waited for until DONE; its
        error raised as the request's would be."""
        operation = await self.call(method, path, body=body, ok=ok, what=what)
        if operation is None:
            return None
        limit = time.monotonic() + timeout
        while operation.get("status") != "DONE":
            if time.monotonic() > limit:
                raise TransientError(f"{what or path}: not done after {timeout:g} s")
            operation = await self.call("POST", _scope(operation) + "/wait",
                                        what=f"wait for {what or path}") or {}
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            body_ = json.dumps({"error": {"code": operation.get("httpErrorStatusCode", 400),
                                          "message": errors[0].get("message", ""),
                                          "errors": [{"reason": _OPERATION_CODES.get(
                                              e.get("code", ""), e.get("code", ""))}
                                              for e in errors]}}).encode()
            error = error_for(int(operation.get("httpErrorStatusCode") or 400), body_,
                              what or path, "compute", self.project)
            if _expected(error, 0, ok):
                return None
            raise error
        return operation

    async def aclose(self) -> None:
        """Close the connections."""
        await self._apis.aclose()


def _expected(error: TpiError, status: int, ok: Iterable[str]) -> bool:
    """Whether an error is one the caller expects (reasons compared in any case: GCS says
    ``conflict`` where fake-gcs-server says ``Conflict``)."""
    wanted = {r.lower() for r in ok}
    return reason_of(error).lower() in wanted or (status == 404 and "notfound" in wanted)


def _scope(operation: Mapping[str, Any]) -> str:
    """The path of an operation, from its selfLink (zone, region or global)."""
    return urlsplit(operation.get("selfLink", "")).path

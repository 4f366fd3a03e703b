"""The Kubernetes API behind one small surface: the only module that touches kubernetes_asyncio.

kubernetes_asyncio loads the configuration (``KUBECONFIG`` or ``~/.kube/config``, TPI's
``KUBECONFIG_DATA``, in-cluster otherwise) and authenticates every request (tokens, client
certificates, exec plugins, their refresh). Requests themselves go through its aiohttp session
as plain JSON, so callers build and read ordinary manifests (dicts), and the storage client
streams bodies through the pod proxy. Every failure is mapped here, once
(:mod:`tpi_k8s.errors`); a status listed in ``ok`` comes back as ``None`` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio

from tpi_core.errors import TransientError, UsageError
from tpi_k8s.errors import connection_error, translate

RETRY_DELAYS = (0.5, 1.0, 2.0)
"""Pauses before the retries of an API call that failed transiently (429, 5xx, reset)."""
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH = "application/merge-patch+json"


class K8sClient:
    """One cluster and namespace, from the ambient configuration, opened on first use."""

    def __init__(self, context: str | None = None, namespace: str | None = None):
        self.context = context
        self._namespace = namespace
        self._api: Any = None
        self._lock = anyio.Lock()

    async def api(self) -> Any:
        """The configured ``ApiClient``."""
        async with self._lock:
            if self._api is None:
                from kubernetes_asyncio import client

                configuration = client.Configuration()
                namespace = await _configure(configuration, self.context)
                self._namespace = self._namespace or namespace
                self._api = client.ApiClient(configuration=configuration)
            return self._api

    async def namespace(self) -> str:
        """The namespace of the configuration's current context (``default`` when unset)."""
        await self.api()
        return self._namespace or "default"

    async def call(self, method: str, path: str, *, body: Any = None,
                   query: Mapping[str, str] | None = None, ok: Iterable[int] = (),
                   what: str = "", content_type: str = "application/json") -> dict | None:
        """One JSON request, retried on transient failures; None for a status in ``ok``."""
        for delay in (*RETRY_DELAYS, None):
            try:
                return await self._once(method, path, body, query, set(ok), what, content_type)
            except TransientError:
                if delay is None:
                    raise
                await anyio.sleep(delay)
        raise AssertionError("unreachable")

    async def _once(self, method: str, path: str, body: Any, query, ok: set[int], what: str,
                    content_type: str) -> dict | None:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        async with self.stream(method, path, query=query, data=data, headers=headers) as reply:
            payload = await reply.read()
        if reply.status in ok:
            return None
        if reply.status >= 400:
            raise translate(reply.status, payload, what or f"{method} {path}")
        return json.loads(payload) if payload.strip() else {}

    async def text(self, path: str, *, query: Mapping[str, str] | None = None,
                   what: str = "") -> str:
        """A plain-text answer (pod logs)."""
        async with self.stream("GET", path, query=query, headers={"Accept": "*/*"}) as reply:
            payload = await reply.read()
        if reply.status >= 400:
            raise translate(reply.status, payload, what or f"GET {path}")
        return payload.decode("utf-8", "replace")

    async def items(self, path: str, *, labels: Mapping[str, str] | None = None,
                    what: str = "") -> list[dict]:
        """Every object of a list, page after page, selected by ``labels``."""
        query: dict[str, str] = {"limit": "500"}
        if labels:
            query["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        found: list[dict] = []
        while True:
            page = await self.call("GET", path, query=query, what=what) or {}
            found.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found
            query["continue"] = token

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                     data: Any = None, headers: Mapping[str, str] | None = None,
                     timeout: float | None = None) -> AsyncIterator[Any]:
        """A raw request (no retry, no status check): the aiohttp response, body unread.

        ``data`` may be bytes or an async iterator of bytes (streamed uploads).
        """
        import aiohttp

        api = await self.api()
        sent = {**api.default_headers, **(headers or {})}
        await api.update_params_for_auth(sent, [], ["BearerToken"])
        rest = api.rest_client
        options: dict[str, Any] = {}
        if rest.proxy:
            options.update(proxy=rest.proxy, proxy_headers=rest.proxy_headers)
        if rest.server_hostname:
            options["server_hostname"] = rest.server_hostname
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=30)
        try:
            async with rest.pool_manager.request(
                    method, api.configuration.host + path, params=dict(query or {}), data=data,
                    headers=sent, timeout=limits, **options) as reply:
                yield reply
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise connection_error(exc, api.configuration.host) from exc

    async def aclose(self) -> None:
        """Close the HTTP session. Safe to call twice."""
        async with self._lock:
            if self._api is not None:
                api, self._api = self._api, None
                await api.close()


async def _configure(configuration: Any, context: str | None) -> str | None:
    """Load the ambient configuration into ``configuration``; the context's namespace."""
    from kubernetes_asyncio import config

    try:
        if os.environ.get("KUBECONFIG_DATA"):
            import yaml

            loader = await config.load_kube_config_from_dict(
                yaml.safe_load(os.environ["KUBECONFIG_DATA"]), context=context,
                client_configuration=configuration)
            return _context_namespace(loader)
        if files := _kubeconfig_files():
            # kubernetes_asyncio reads $KUBECONFIG once, at import: name the files each time
            loader = await config.load_kube_config(
                config_file=os.pathsep.join(files), context=context,
                client_configuration=configuration, persist_config=False)
            return _context_namespace(loader)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            return _in_cluster_namespace()
    except (config.ConfigException, OSError, ValueError) as exc:
        raise UsageError(f"Kubernetes configuration: {exc}") from exc
    raise UsageError("no Kubernetes configuration: set KUBECONFIG (or KUBECONFIG_DATA), "
                     "write ~/.kube/config, or run inside a cluster")


def _kubeconfig_files() -> list[str]:
    paths = os.environ.get("KUBECONFIG", "")
    if paths:
        found = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        if not found:
            raise UsageError(f"KUBECONFIG names no readable file ({paths})")
        return found
    default = Path("~/.kube/config").expanduser()
    return [str(default)] if default.is_file() else []


def _context_namespace(loader: Any) -> str | None:
    current = loader.current_context or {}
    return (current.get("context") or {}).get("namespace")


def _in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or None
    except OSError:
        return None

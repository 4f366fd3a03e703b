"""``k8s://NAMESPACE/TASK-ID[/PREFIX]``: a task's claim, through the API server's pod proxy.

The task's storage server (:mod:`tpi_k8s.server`, one pod of the Deployment
``<task-id>-storage``) serves the claim; this client finds its ready pod by labels, reads its
token from the Secret ``<task-id>-storage`` and sends every request through
``/api/v1/namespaces/NS/pods/POD:8080/proxy/v1/...`` with the kubeconfig's credentials.
A pod that moved is looked up again. No storage server means no storage:
:class:`~tpi_core.errors.ResourceNotFound` (the task was not applied, or was destroyed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio

from tpi_core.errors import (BackendError, ObjectNotFound, PermissionDenied, ResourceNotFound,
                             TransientError, UnsafePathError)
from tpi_core.storage import ObjectInfo, Progress, Storage, join
from tpi_core.storage.local import checked_key
from tpi_k8s import launch, manifests
from tpi_k8s.client import K8sClient
from tpi_k8s.errors import status_message, translate
from tpi_k8s.observe import STUCK
from tpi_k8s.wire import CHUNK, MARK_HEADER, TOKEN_HEADER

SCHEME = "k8s"
DELETE_BATCH = 1000


def storage_url(namespace: str, task_id: str, prefix: str = "") -> str:
    """The URL of a task's claim storage."""
    return f"{SCHEME}://{join(namespace, task_id, prefix)}"


class Endpoint:
    """One task's storage server: its ready pod (looked up again when it moves), its token."""

    def __init__(self, client: K8sClient, namespace: str, task_id: str):
        self.client, self.namespace, self.task_id = client, namespace, task_id
        self._pod: str | None = None
        self._token: str | None = None
        self._lock = anyio.Lock()

    async def pod(self, refresh: bool = False) -> str:
        """The name of a ready storage-server pod."""
        async with self._lock:
            if refresh or self._pod is None:
                self._pod = ready_pod(await self._pods()) or None
                if self._pod is None:
                    await self._explain()
            return self._pod

    async def _pods(self) -> list[dict]:
        labels = {manifests.LABEL_TASK: self.task_id,
                  manifests.LABEL_ROLE: manifests.ROLE_STORAGE}
        return await self.client.items(f"/api/v1/namespaces/{self.namespace}/pods",
                                       labels=labels, what="storage server pods")

    async def _explain(self) -> None:
        path = (f"/apis/apps/v1/namespaces/{self.namespace}/deployments/"
                f"{manifests.server_name(self.task_id)}")
        if await self.client.call("GET", path, ok=(404,)) is None:
            raise ResourceNotFound(f"task {self.task_id} has no storage in namespace "
                                   f"{self.namespace} (not applied, or destroyed)")
        raise TransientError(f"the storage server of task {self.task_id} is not ready"
                             f"{pod_problem(await self._pods())}")

    async def token(self) -> str:
        """The storage server's token (read once from its Secret)."""
        if self._token is None:
            path = (f"/api/v1/namespaces/{self.namespace}/secrets/"
                    f"{manifests.token_name(self.task_id)}")
            secret = await self.client.call("GET", path, what="storage token secret")
            value = (secret or {}).get("data", {}).get(manifests.TOKEN_KEY, "")
            self._token = base64.b64decode(value).decode()
        return self._token

    async def wait_ready(self, timeout: float) -> None:
        """Wait until a storage-server pod is ready; fail at once on a stuck container."""
        limit = time.monotonic() + timeout
        while True:
            try:
                await self.pod(refresh=True)
                return
            except TransientError as exc:
                problem = pod_problem(await self._pods(), stuck_only=True)
                if problem:
                    raise BackendError(f"the storage server of task {self.task_id} cannot "
                                       f"start{problem}") from exc
                if time.monotonic() > limit:
                    raise
            await anyio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def request(self, method: str, route: str, *, query: dict[str, str],
                      data: Callable[[], Any] | None = None) -> AsyncIterator[Any]:
        """A request to the server; a pod that moved (or a token that changed, the task
        made again) is looked up again once."""
        moved = False
        for attempt in (0, 1):
            pod = await self.pod(refresh=moved)
            path = (f"/api/v1/namespaces/{self.namespace}/pods/{pod}:{launch.SERVER_PORT}"
                    f"/proxy/v1/{route}")
            headers = {TOKEN_HEADER: await self.token(), "Accept": "*/*",
                       "Content-Type": "application/octet-stream"}
            async with self.client.stream(method, path, query=query, headers=headers,
                                          data=data() if data else None) as reply:
                if reply.status < 400:
                    yield reply
                    return
                body = await reply.read()
                ours = bool(reply.headers.get(MARK_HEADER))
                moved = not ours and reply.status in (404, 502, 503)
                if attempt or not (moved or (ours and reply.status == 401)):
                    raise _server_error(reply.status, reply.headers, body, query.get("key", ""))
                self._token = None if ours else self._token


def ready_pod(pods: list[dict]) -> str:
    """The name of a running, ready pod that is not being deleted; "" when none."""
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if (status.get("phase") == "Running" and conditions.get("Ready") == "True"
                and not meta.get("deletionTimestamp")):
            return meta.get("name", "")
    return ""


def pod_problem(pods: list[dict], stuck_only: bool = False) -> str:
    """Why the storage-server pods are not ready, as ``": reason: message"``; with
    ``stuck_only``, only what will not mend by waiting ("" otherwise)."""
    live = [p for p in pods if (p.get("status") or {}).get("phase") != "Failed"]
    if pods and not live:
        return f": pod {pods[-1].get('metadata', {}).get('name', '?')} failed"
    for pod in live:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return f": {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        if stuck_only:
            continue
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f": unschedulable: {condition.get('message', '')}".rstrip(": ")
        return f": pod {pod.get('metadata', {}).get('name', '?')} is {status.get('phase', '?')}"
    return "" if stuck_only else ": no pod yet"


def _server_error(status: int, headers, body: bytes, key: str) -> Exception:
    if not headers.get(MARK_HEADER):
        return translate(status, body, "storage server (pod proxy)")
    _, message = status_message(body)
    if status == 404:
        return ObjectNotFound(key)
    if status == 400:
        return UnsafePathError(message)
    if status == 401:
        return PermissionDenied(f"the storage server refused the token: {message}")
    return TransientError(f"storage server: HTTP {status}: {message}")


class K8sStorage(Storage):
    """A task's claim storage (see the module docstring)."""

    SCHEME = SCHEME

    def __init__(self, endpoint: Endpoint, prefix: str = "", owns_client: bool = False):
        self.endpoint = endpoint
        self.prefix = prefix.strip("/")
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, **options: str) -> K8sStorage:
        namespace, _, rest = url.removeprefix(f"{SCHEME}://").partition("/")
        task_id, _, prefix = rest.partition("/")
        if not url.startswith(f"{SCHEME}://") or not namespace or not task_id:
            raise UnsafePathError(f"not a {SCHEME}://NAMESPACE/TASK-ID URL: {url!r}")
        client = K8sClient(options.get("context"), namespace)
        return cls(Endpoint(client, namespace, task_id), prefix, owns_client=True)

    @property
    def url(self) -> str:
        return storage_url(self.endpoint.namespace, self.endpoint.task_id, self.prefix)

    def child(self, prefix: str) -> K8sStorage:
        return K8sStorage(self.endpoint, join(self.prefix, checked_key(prefix.strip("/"))))

    def _key(self, key: str) -> str:
        return join(self.prefix, checked_key(key))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        base = self.prefix + "/" if self.prefix else ""
        query = {"prefix": base + prefix}
        async with self.endpoint.request("GET", "list", query=query) as reply:
            async for line in reply.content:
                if line.strip():
                    doc = json.loads(line)
                    yield ObjectInfo(doc["key"][len(base):], doc["size"], None, doc.get("mtime"))

    async def read(self, key: str) -> bytes:
        async with self.endpoint.request("GET", "object", query={"key": self._key(key)}) as reply:
            return await reply.read()

    async def write(self, key: str, data: bytes) -> None:
        async with self.endpoint.request("PUT", "object", query={"key": self._key(key)},
                                         data=lambda: data):
            pass

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> None:
        async with self.endpoint.request("PUT", "object", query={"key": self._key(key)},
                                         data=lambda: _chunks(Path(path), progress)):
            pass

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        async with self.endpoint.request("GET", "object", query={"key": self._key(key)}) as reply:
            handle = await anyio.open_file(path, "wb")
            async with handle:
                async for chunk in reply.content.iter_chunked(CHUNK):
                    await handle.write(chunk)
                    if progress:
                        progress(len(chunk))

    async def delete(self, keys: Iterable[str]) -> None:
        full = [self._key(k) for k in keys]
        try:
            for start in range(0, len(full), DELETE_BATCH):
                body = json.dumps({"keys": full[start:start + DELETE_BATCH]}).encode()
                async with self.endpoint.request("POST", "delete", query={},
                                                 data=lambda b=body: b):
                    pass
        except ResourceNotFound:
            pass  # no storage server: the claim, and every key on it, is gone

    async def aclose(self) -> None:
        if self._owns_client:
            await self.endpoint.client.aclose()


async def _chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    handle = await anyio.open_file(path, "rb")
    async with handle:
        while chunk := await handle.read(CHUNK):
            if progress:
                progress(len(chunk))
            yield chunk

"""One small async function per Kubernetes object of a task (TPI's ``task/k8s/resources``).

Creates treat "already exists" as done (an existing Job is resumed, an existing environment
Secret gets the new values) and deletes treat "not found" as done, so every function may
run twice. Deletes propagate in the background: the garbage collector removes a Job's pods
and a Deployment's ReplicaSets; :func:`wait_gone` waits for the pods where it matters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio

from tpi_core.errors import BackendError, ResourceNotFound, TpiError, TransientError
from tpi_k8s import manifests
from tpi_k8s.client import MERGE_PATCH, K8sClient

GROUPS = {"secrets": "/api/v1", "persistentvolumeclaims": "/api/v1", "pods": "/api/v1",
          "events": "/api/v1", "serviceaccounts": "/api/v1", "configmaps": "/api/v1",
          "jobs": "/apis/batch/v1",
          "deployments": "/apis/apps/v1"}
BACKGROUND = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


def path(namespace: str, plural: str, name: str = "") -> str:
    """The API path of a namespaced collection, or of one object in it."""
    base = f"{GROUPS[plural]}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


async def create(c: K8sClient, namespace: str, plural: str, body: dict) -> bool:
    """Create an object; False when it exists already."""
    name = body["metadata"]["name"]
    found = await c.call("POST", path(namespace, plural), body=body, ok=(409,),
                         what=f"create {plural} {name}")
    return found is not None


async def patch(c: K8sClient, namespace: str, plural: str, name: str, body: dict) -> dict:
    """A JSON merge patch."""
    return await c.call("PATCH", path(namespace, plural, name), body=body,
                        content_type=MERGE_PATCH, what=f"update {plural} {name}") or {}


async def read(c: K8sClient, namespace: str, plural: str, name: str) -> dict | None:
    """An object, or None when it does not exist."""
    return await c.call("GET", path(namespace, plural, name), ok=(404,),
                        what=f"read {plural} {name}")


async def delete(c: K8sClient, namespace: str, plural: str, name: str) -> None:
    """Delete an object and, in the background, what it owns; gone already is fine."""
    await c.call("DELETE", path(namespace, plural, name), body=BACKGROUND, ok=(404,),
                 what=f"delete {plural} {name}")


async def labelled(c: K8sClient, namespace: str, plural: str,
                   labels: Mapping[str, str]) -> list[dict]:
    """Every object of a kind with these labels."""
    return await c.items(path(namespace, plural), labels=labels, what=f"list {plural}")


# one function per object ---------------------------------------------------------------

async def ensure_secret(c: K8sClient, namespace: str, body: dict) -> None:
    """Create the environment Secret, or give an existing one the new values."""
    name = body["metadata"]["name"]
    if not await create(c, namespace, "secrets", body):
        old = (await read(c, namespace, "secrets", name) or {}).get("data") or {}
        data = {**{key: None for key in old}, **body["data"]}  # None removes a key
        await patch(c, namespace, "secrets", name, {"data": data})


async def ensure_token(c: K8sClient, namespace: str, body: dict) -> None:
    """Create the storage token's Secret; an existing token is kept (its server uses it)."""
    await create(c, namespace, "secrets", body)


async def ensure_claim(c: K8sClient, namespace: str, body: dict, timeout: float = 120) -> None:
    """Create the task's claim (kept as it is when it exists). A claim still being deleted
    (its last pods stopping: a task replaced) is waited for, then made again."""
    limit = time.monotonic() + timeout
    while not await create(c, namespace, "persistentvolumeclaims", body):
        found = await read(c, namespace, "persistentvolumeclaims", body["metadata"]["name"])
        if found is not None and not found["metadata"].get("deletionTimestamp"):
            return
        if time.monotonic() > limit:
            raise TransientError(f"claim {body['metadata']['name']} is still being deleted")
        await anyio.sleep(1.0)


async def check_claim(c: K8sClient, namespace: str, name: str) -> None:
    """Raise ResourceNotFound unless the named claim (``storage.container``) exists."""
    if await read(c, namespace, "persistentvolumeclaims", name) is None:
        raise ResourceNotFound(f"storage.container: no PersistentVolumeClaim {name!r} in "
                               f"namespace {namespace}")


async def check_service_account(c: K8sClient, namespace: str, name: str) -> None:
    """Raise ResourceNotFound unless ``permission_set`` names an existing ServiceAccount."""
    if name and await read(c, namespace, "serviceaccounts", name) is None:
        raise ResourceNotFound(f"permission_set: no ServiceAccount {name!r} in namespace "
                               f"{namespace}")


async def ensure_job(c: K8sClient, namespace: str, body: dict) -> None:
    """Create the Job, or resume it when it exists (``tpi start`` after ``tpi stop``)."""
    if not await create(c, namespace, "jobs", body):
        await set_suspended(c, namespace, body["metadata"]["name"], False)


async def set_suspended(c: K8sClient, namespace: str, name: str, suspended: bool) -> None:
    """Suspend a Job (its pods get SIGTERM and flush) or resume it."""
    await patch(c, namespace, "jobs", name, {"spec": {"suspend": suspended}})


async def wait_gone(c: K8sClient, namespace: str, labels: Mapping[str, str],
                    timeout: float, interval: float = 0.5) -> bool:
    """Wait until no pod has these labels; False when some remain after ``timeout``."""
    limit = time.monotonic() + timeout
    while await labelled(c, namespace, "pods", labels):
        if time.monotonic() > limit:
            return False
        await anyio.sleep(interval)
    return True


async def pod_log(c: K8sClient, namespace: str, pod: str, lines: int,
                  container: str = manifests.AGENT_CONTAINER) -> str:
    """The last ``lines`` lines of a pod's container ("" when there is no log)."""
    try:
        return await c.text(f"{path(namespace, 'pods', pod)}/log",
                            query={"container": container, "tailLines": str(lines)},
                            what=f"log of pod {pod}")
    except (ResourceNotFound, BackendError):  # a container that never started has none
        return ""


async def ensure_bundle(c: K8sClient, namespace: str, body: dict) -> bool:
    """Create the agent bundle's ConfigMap unless it exists (it is immutable, named by its
    digest); True when it was created now."""
    if await read(c, namespace, "configmaps", body["metadata"]["name"]) is not None:
        return False
    return await create(c, namespace, "configmaps", body)


async def server_version(c: K8sClient) -> tuple[int, int] | None:
    """The API server's ``(major, minor)`` (``1.29+`` is ``(1, 29)``), None when it does not
    say."""
    try:
        found = await c.call("GET", "/version", what="API server version")
    except TpiError:
        return None
    try:
        return int(found["major"]), int(str(found["minor"]).rstrip("+"))
    except (KeyError, TypeError, ValueError):
        return None


async def events(c: K8sClient, namespace: str) -> list[dict]:
    """The namespace's events (the API server keeps about an hour of them)."""
    return await c.items(path(namespace, "events"), what="list events")

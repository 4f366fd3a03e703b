"""The claim storage through the API server's pod proxy: the storage contract, and what
happens when the server moves, goes, or is asked for something outside its root."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from tpi_core.errors import (ObjectNotFound, PermissionDenied, ResourceNotFound,
                             TransientError, UnsafePathError)
from tpi_core.testing.contract import StorageContract
from tpi_k8s import manifests
from tpi_k8s.server import serve
from tpi_k8s.storage import K8sStorage

from .conftest import NAMESPACE, seed

pytestmark = pytest.mark.integration

TASK = "tpi-store-abcdefgh-12345678"
SERVER_TOKEN = "storage-token-xyz"


def pod_doc(name: str, ready: bool = True, phase: str = "Running") -> dict:
    owner = manifests.Owner(TASK)
    return {"metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": owner.labels(manifests.ROLE_STORAGE)},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


class Served:
    """The storage server in a thread of this process, as the pod runs it."""

    def __init__(self, root: Path, token: str):
        self.server = serve(root, token, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def cleanup(self) -> None:
        await anyio.to_thread.run_sync(self.server.shutdown)
        self.server.server_close()


async def start_server(root: Path, token: str = SERVER_TOKEN):
    root.mkdir(parents=True, exist_ok=True)
    served = Served(root, token)
    return served, served.server.server_address[1]


@pytest.fixture
async def served(api, kmock_url, kubeconfig, tmp_path):
    """A task's storage server: token Secret, Deployment, one ready pod, served in process."""
    owner = manifests.Owner(TASK)
    await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/secrets",
               manifests.token_secret(owner, SERVER_TOKEN))
    await seed(kmock_url, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
               {"metadata": {"name": manifests.server_name(TASK)}})
    await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_doc("srv-1"))
    root = tmp_path / "claim"
    runner, port = await start_server(root)
    api.ports[(NAMESPACE, "srv-1", 8080)] = port
    yield root
    await runner.cleanup()


class TestK8sStorage(StorageContract):
    @pytest.fixture
    async def storage(self, served):
        async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}/prefix") as storage:
            yield storage


@pytest.mark.anyio
async def test_objects_land_on_the_claim_under_the_prefix(served, api):
    async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
        await storage.child("data").write("dir/file.txt", b"on the claim")
    assert (served / "data" / "dir" / "file.txt").read_bytes() == b"on the claim"
    assert ("PUT", "srv-1", "/v1/object") in api.proxied


@pytest.mark.anyio
async def test_keys_that_leave_the_root_are_refused_on_both_sides(served, api):
    outside = served.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (served / "data").mkdir(parents=True)
    os.symlink(outside, served / "data" / "link")
    async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
        for key in ("../outside/secret.txt", "/etc/passwd", "a/../../b"):
            with pytest.raises(UnsafePathError):
                await storage.read(key)
        endpoint = storage.endpoint
        async with endpoint.client.stream(
                "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/srv-1:8080/proxy/v1/object",
                query={"key": "../outside/secret.txt"},
                headers={"X-Tpi-Token": SERVER_TOKEN}) as reply:
            assert reply.status == 400  # the server checks keys itself
        with pytest.raises(UnsafePathError):
            await storage.read("data/link/secret.txt")
        with pytest.raises(UnsafePathError):
            await storage.write("data/link/planted.txt", b"x")
        assert [i.key async for i in storage.list("data/")] == []  # links are not listed
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.anyio
async def test_a_wrong_token_is_refused(served, api, kmock_url):
    runner, port = await start_server(served, token="another-token")
    api.ports[(NAMESPACE, "srv-1", 8080)] = port
    try:
        async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
            with pytest.raises(PermissionDenied, match="token"):
                await storage.read("anything")
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_a_moved_server_is_found_again(served, api, kmock_url):
    async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
        await storage.write("k", b"before")
        port = api.ports.pop((NAMESPACE, "srv-1", 8080))
        async with __import__("aiohttp").ClientSession() as http:
            await http.delete(f"{kmock_url}/api/v1/namespaces/{NAMESPACE}/pods/srv-1")
        await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_doc("srv-2"))
        api.ports[(NAMESPACE, "srv-2", 8080)] = port
        assert await storage.read("k") == b"before"
    assert api.proxied[-1] == ("GET", "srv-2", "/v1/object")


@pytest.mark.anyio
async def test_no_server_means_no_storage(api, kmock_url, kubeconfig):
    async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
        with pytest.raises(ResourceNotFound, match="not applied, or destroyed"):
            await storage.read("spec.json")
        await storage.delete(["spec.json"])  # nothing to delete: no error
        await seed(kmock_url, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
                   {"metadata": {"name": manifests.server_name(TASK)}})
        await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/pods",
                   pod_doc("srv-3", ready=False, phase="Pending"))
        with pytest.raises(TransientError, match="not ready.*srv-3 is Pending"):
            await storage.read("spec.json")


@pytest.mark.anyio
async def test_missing_objects_and_large_files(served, tmp_path):
    data = os.urandom((5 << 20) + 3)
    (tmp_path / "big").write_bytes(data)
    async with K8sStorage.from_url(f"k8s://{NAMESPACE}/{TASK}") as storage:
        with pytest.raises(ObjectNotFound):
            await storage.read("nothing")
        await storage.upload("big", tmp_path / "big")
        await storage.download("big", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data == (served / "big").read_bytes()

"""The backend's objects on the emulated API server: create twice, find, stop and start,
observe, delete twice; errors mapped once; storage on a claim the user owns."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import anyio
import pytest
from aiohttp import web

from tpi_core.backend import Launch, TaskRef
from tpi_core.errors import (FieldError, PermissionDenied, QuotaExceeded, ResourceNotFound,
                             TransientError, UsageError)
from tpi_core.identifier import deterministic
from tpi_core.model import Secrets, StorageSpec, Task, frozen_map
from tpi_core.steps import delete_steps, run_steps
from tpi_k8s import manifests, resources
from tpi_k8s.backend import K8sBackend, claim_of

from .conftest import NAMESPACE, agent_env, kubeconfig_doc, objects, seed
from .fakes import status
from .harness import fake_cluster

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]

TASK_ID = deterministic("train", seed="k8s-resources").long
COLLECTIONS = ("/api/v1/secrets", "/api/v1/persistentvolumeclaims", "/api/v1/pods",
               "/apis/apps/v1/deployments", "/apis/batch/v1/jobs")


def task(**changes) -> Task:
    storage = StorageSpec(**changes.pop("storage", {}))
    fields = {"environment": Secrets({"TOKEN": "first"}), "tags": frozen_map({"team": "ml"}),
              **changes}
    return Task(name="train", cloud="k8s", script="#!/bin/sh\ntrue", id=TASK_ID,
                storage=storage, **fields)


def launch() -> Launch:
    return Launch(f"k8s://{NAMESPACE}/{TASK_ID}", time.time() + 600,
                  agent_digest="0123456789abcdef" * 4)


class _backend:
    """A backend closed at the end of the block."""

    async def __aenter__(self) -> K8sBackend:
        self.backend = K8sBackend()
        return self.backend

    async def __aexit__(self, *exc) -> None:
        await self.backend.aclose()


async def tpi_objects(kmock_url: str) -> dict[str, list[str]]:
    found = {}
    for path in COLLECTIONS:
        found[path.rsplit("/", 1)[1]] = sorted(
            o["metadata"]["name"] for o in await objects(kmock_url, path)
            if (o["metadata"].get("labels") or {}).get(manifests.LABEL_TASK) == TASK_ID)
    return found


async def test_create_find_stop_start_delete(api, kmock_url, kubeconfig):
    async with _backend() as backend:
        await run_steps(backend.create_steps(task(), launch()))
        await run_steps(backend.create_steps(task(environment=Secrets({"OTHER": "2"})),
                                             launch()))  # again: the same objects
        assert await tpi_objects(kmock_url) == {
            "secrets": [TASK_ID, f"{TASK_ID}-storage"], "persistentvolumeclaims": [TASK_ID],
            "pods": [], "deployments": [f"{TASK_ID}-storage"], "jobs": [TASK_ID]}
        secret = next(o for o in await objects(kmock_url, "/api/v1/secrets")
                      if o["metadata"]["name"] == TASK_ID)
        assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
            "OTHER": "2"}  # the second apply's values, and only those
        (found,) = await backend.find()
        assert found == TaskRef(TASK_ID, "k8s", "us-west", "train", "")
        ref = TaskRef.of(task())
        await backend.set_capacity(ref, 0)
        assert (await backend.observe(ref)).desired == 0
        await backend.set_capacity(ref, 1)
        seen = await backend.observe(ref)
        assert (seen.exists, seen.desired, seen.machines) == (True, 1, 0)
        await delete_steps(backend.delete_steps(ref))
        await delete_steps(backend.delete_steps(ref))  # gone already: fine
        assert not any((await tpi_objects(kmock_url)).values())
        assert await backend.find() == []
        assert not (await backend.observe(ref)).exists
        with pytest.raises(Exception, match="no Job"):
            await backend.set_capacity(ref, 0)


async def test_a_refused_job_rolls_back_and_names_the_permission(api, kmock_url, kubeconfig):
    message = ('jobs.batch is forbidden: User "ci" cannot create resource "jobs" in API group '
               '"batch" in the namespace "tpi-test"')
    api.on_request = lambda r: status(403, "Forbidden", message) if (
        r.method == "POST" and r.path.endswith("/jobs")) else None
    async with _backend() as backend:
        with pytest.raises(PermissionDenied, match="cannot create resource \"jobs\""):
            await run_steps(backend.create_steps(task(), launch()))
    assert not any((await tpi_objects(kmock_url)).values())


async def test_quota_transient_and_auth_errors(api, kmock_url, kubeconfig, tmp_path,
                                               monkeypatch):
    calls = []

    def answer(request: web.Request):
        if request.method == "POST" and request.path.endswith("/persistentvolumeclaims"):
            return status(403, "Forbidden", 'persistentvolumeclaims "x" is forbidden: '
                          "exceeded quota: storage, requested: requests.storage=1Gi")
        if request.path.endswith("/jobs/" + TASK_ID):
            calls.append(request.path)
            return status(503, "ServiceUnavailable", "etcd is down")
        return None

    api.on_request = answer
    monkeypatch.setattr("tpi_k8s.client.RETRY_DELAYS", (0.01, 0.01, 0.01))
    async with _backend() as backend:
        with pytest.raises(QuotaExceeded, match="exceeded quota"):
            await run_steps(backend.create_steps(task(), launch()))
        with pytest.raises(TransientError, match="etcd is down"):
            await backend.observe(TaskRef.of(task()))
        assert len(calls) == 4  # retried three times
    (tmp_path / "bad.yaml").write_text(json.dumps(kubeconfig_doc(api.url, token="wrong")))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "bad.yaml"))
    async with _backend() as backend:
        with pytest.raises(PermissionDenied, match="kubeconfig"):
            await backend.find()
    (tmp_path / "closed.yaml").write_text(json.dumps(kubeconfig_doc("http://127.0.0.1:9")))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "closed.yaml"))
    async with _backend() as backend:
        with pytest.raises(TransientError, match="cannot reach the Kubernetes API server"):
            await backend.find()


async def test_configuration_sources(api, kmock_url, kubeconfig, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    async with _backend() as backend:
        with pytest.raises(UsageError, match="no Kubernetes configuration"):
            await backend.find()
    monkeypatch.setenv("KUBECONFIG_DATA", json.dumps(kubeconfig_doc(api.url, namespace="other")))
    async with _backend() as backend:
        assert await backend.client().namespace() == "other"
        assert await backend.find() == []
    monkeypatch.delenv("KUBECONFIG_DATA")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing.yaml"))
    async with _backend() as backend:
        with pytest.raises(UsageError, match="KUBECONFIG names no readable file"):
            await backend.find()


async def test_a_missing_service_account_is_named(api, kmock_url, kubeconfig):
    async with _backend() as backend:
        with pytest.raises(ResourceNotFound, match="no ServiceAccount 'trainer'"):
            await run_steps(backend.create_steps(task(permission_set="trainer"), launch()))
        await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
                   {"metadata": {"name": "trainer"}})
        await run_steps(backend.create_steps(task(permission_set="trainer"), launch()))
    (job,) = await objects(kmock_url, "/apis/batch/v1/jobs")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"


async def test_observe_brings_failed_pods_log_tail(api, kmock_url, kubeconfig, tmp_path):
    await seed(kmock_url, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
               {"metadata": {"name": TASK_ID}, "spec": {"parallelism": 1}})
    pod = f"{TASK_ID}-0-abcde"
    await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "metadata": {"name": pod, "labels": manifests.Owner(TASK_ID).labels("agent"),
                     "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "agent", "state": {
            "terminated": {"exitCode": 127, "reason": "Error"}}}]}})
    await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/events", {
        "metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": pod},
        "reason": "Pulled", "message": "Successfully pulled image", "count": 1})
    log = tmp_path / "pod.log"
    log.write_text("".join(f"line {i}\n" for i in range(20)) + "tpi: this image has no python3")
    api.logs[(NAMESPACE, pod, "agent")] = log
    async with _backend() as backend:
        seen = await backend.observe(TaskRef.of(task()))
    codes = {e.code: e for e in seen.events}
    assert {"pulled", "pod-created", "pod-failed", "pod-log"} <= set(codes)
    assert codes["pod-log"].message.endswith("tpi: this image has no python3")
    assert "line 14" not in codes["pod-log"].message and codes["pod-log"].replica == 0


async def test_storage_on_a_claim_the_user_owns(api, kmock_url, kubeconfig, tmp_path,
                                                stand_ins):
    async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                            *stand_ins) as cluster:
        owned = task(storage={"container": "shared/runs/a"})
        async with _backend() as backend:
            backend.validate(owned)
            with pytest.raises(ResourceNotFound, match="no PersistentVolumeClaim 'shared'"):
                await backend.storage(TaskRef.of(owned), create=owned)
            await seed(kmock_url, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
                       {"metadata": {"name": "shared"}, "spec": {}})
            keep = cluster.claim_dir(NAMESPACE, "shared") / "keep.txt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text("not tpi's")
            storage = await backend.storage(TaskRef.of(owned), create=owned)
            await storage.write("data/x.txt", b"on the user's claim")
            landed = cluster.claim_dir(NAMESPACE, "shared") / "runs" / "a" / "data" / "x.txt"
            assert landed.read_bytes() == b"on the user's claim"
            await run_steps(backend.create_steps(owned, launch()))
            (job,) = await objects(kmock_url, "/apis/batch/v1/jobs")
            mounts = job["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"]
            assert {"name": "storage", "mountPath": "/tpi/storage", "subPath": "runs/a"} in mounts
            await delete_steps(backend.delete_steps(TaskRef.of(owned)))
        assert not landed.exists() and keep.read_text() == "not tpi's"
        assert [c["metadata"]["name"] for c in await objects(
            kmock_url, "/api/v1/persistentvolumeclaims")] == ["shared"]


async def test_a_claim_still_being_deleted_is_waited_for(api, kmock_url, kubeconfig):
    path = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"
    await seed(kmock_url, path, {"metadata": {"name": TASK_ID, "finalizers": [
        "kubernetes.io/pvc-protection"]}, "spec": {"old": True}})
    async with aiohttp.ClientSession() as http:
        await http.delete(f"{kmock_url}{path}/{TASK_ID}")  # held by its finalizer

        async def release() -> None:
            await anyio.sleep(1.5)
            await http.patch(f"{kmock_url}{path}/{TASK_ID}", json={"metadata": {
                "finalizers": []}}, headers={"Content-Type": "application/merge-patch+json"})

        async with _backend() as backend, anyio.create_task_group() as tg:
            tg.start_soon(release)
            body = manifests.claim(manifests.Owner(TASK_ID), claim_of(TaskRef.of(task()), task()))
            started = time.monotonic()
            await resources.ensure_claim(backend.client(), NAMESPACE, body)
            assert time.monotonic() - started > 1
    (claim,) = await objects(kmock_url, path)
    assert "old" not in claim["spec"] and not claim["metadata"].get("deletionTimestamp")


async def test_a_bucket_container_replaces_the_claim(api, kmock_url, kubeconfig, monkeypatch):
    pytest.importorskip("tpi_aws")
    in_bucket = task(storage={"container": "s3://team-bucket/runs",
                              "container_opts": frozen_map({"region": "eu-west-1"})})
    async with _backend() as backend:
        with pytest.raises(FieldError, match="TPI_K8S_AGENT_INDEX=1"):
            backend.validate(in_bucket)  # its SDK is no pure Python: the pod needs an index
        monkeypatch.setenv("TPI_K8S_AGENT_INDEX", "1")
        backend.validate(in_bucket)
        storage = await backend.storage(TaskRef.of(in_bucket), create=in_bucket)
        assert storage.url == "s3://team-bucket/runs"
        ref = TaskRef.of(in_bucket)
        built = backend.agent_bundle(ref)
        assert any(w.startswith("tpi_aws-") for w in built.wheels)  # the bucket's plugin
        url, _ = await backend.publish_agent(ref, built)
        await run_steps(backend.create_steps(in_bucket, Launch(
            storage.url, time.time() + 60, url, built.digest, built.wheels)))
        assert await tpi_objects(kmock_url) == {
            "secrets": [TASK_ID], "persistentvolumeclaims": [], "pods": [], "deployments": [],
            "jobs": [TASK_ID]}
        (job,) = await objects(kmock_url, "/apis/batch/v1/jobs")
        pod = job["spec"]["template"]["spec"]
        (agent,), (user,) = pod["initContainers"], pod["containers"]
        assert agent["args"][agent["args"].index("--storage") + 1] == "s3://team-bucket/runs"
        assert {"name": "TPI_AGENT_INDEX", "value": "1"} in agent["env"]
        assert [m["mountPath"] for m in agent["volumeMounts"]] == [
            "/tpi/work", "/tpi/run", "/tpi/agent", "/tpi/bundle"]
        assert [m["mountPath"] for m in user["volumeMounts"]] == ["/tpi/work", "/tpi/run"]
        await delete_steps(backend.delete_steps(TaskRef.of(in_bucket)))
    assert not any((await tpi_objects(kmock_url)).values())

"""A fake control plane for kmock: controllers that make pods, and a kubelet that runs them.

kmock stores objects and nothing happens to them. :class:`FakeCluster` polls it and plays:

- the **Job controller** (Indexed Jobs): a pod per missing index (``<job>-<index>-<rand>``,
  annotation and label ``batch.kubernetes.io/job-completion-index``, env
  ``JOB_COMPLETION_INDEX`` from that annotation, as the real controller adds), a replacement
  for a deleted pod (once its container stopped, with ``podReplacementPolicy: Failed``),
  failures counted through the Job's ``podFailurePolicy``, ``suspend``, ``backoffLimit``,
  ``activeDeadlineSeconds``, the Job's status, and ``SuccessfulCreate``/``Completed`` events;
- the **Deployment controller**: one pod per Deployment (no ReplicaSet in between);
- the **garbage collector**: pods whose owner is gone are deleted;
- the **volume provisioner**: a claim is bound to a directory ``claims/<ns>/<name>``,
  removed once the claim is deleted and no running container mounts it;
- the **kubelet**: :mod:`.kubelet`, which runs each container as its image would
  (:class:`.kubelet.Image`).
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio

from .fakes import FakeApiServer
from .kubelet import INDEX_KEY, Image, Kubelet, PodRun, now_stamp, phase, pod_path

INDEX_FIELD = f"metadata.annotations['{INDEX_KEY}']"
MERGE = {"Content-Type": "application/merge-patch+json"}


def stamp(meta: dict, namespace: str) -> dict:
    """What the API server adds to a new object's metadata."""
    meta.update(namespace=namespace, uid=secrets.token_hex(8), creationTimestamp=now_stamp(),
                resourceVersion=str(time.time_ns()))
    return meta


@dataclass
class FakeCluster(Kubelet):
    """Controllers and kubelet over kmock (see the module docstring)."""

    kmock: str
    front: FakeApiServer
    root: Path
    env: dict[str, str]
    images: dict[str, Image]
    """Stand-in roots by image name; any other image is :attr:`default_image`."""
    default_image: Image
    pods: dict[tuple[str, str], PodRun] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    """Names of every pod the controllers made, in order."""

    # API plumbing --------------------------------------------------------------------------

    async def get(self, path: str) -> dict | None:
        async with self.http.get(self.kmock + path) as reply:
            return await reply.json(content_type=None) if reply.status == 200 else None

    async def items(self, path: str) -> list[dict]:
        found = await self.get(path)
        return [i for i in (found or {}).get("items", []) if i]

    async def post(self, path: str, body: dict) -> None:
        async with self.http.post(self.kmock + path, json=body) as reply:
            if reply.status >= 300:
                self.errors.append(f"POST {path}: {reply.status} {await reply.text()}")

    async def patch(self, path: str, body: dict) -> None:
        async with self.http.patch(self.kmock + path, json=body, headers=MERGE) as reply:
            if reply.status >= 300 and reply.status != 404:
                self.errors.append(f"PATCH {path}: {reply.status}")

    async def delete(self, path: str) -> None:
        async with self.http.delete(self.kmock + path):
            pass

    async def event(self, obj: dict, kind: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        body = {"metadata": stamp({"name": f"{meta['name']}.{secrets.token_hex(6)}"},
                                  meta["namespace"]),
                "involvedObject": {"kind": kind, "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta.get("uid")},
                "reason": reason, "message": message, "type": "Normal", "count": 1,
                "firstTimestamp": now_stamp(), "lastTimestamp": now_stamp()}
        await self.post(f"/api/v1/namespaces/{meta['namespace']}/events", body)

    # the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession() as self.http:
            while True:
                try:
                    await self.step()
                except Exception as exc:  # keep playing; tests read the errors
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                await anyio.sleep(0.1)

    async def step(self) -> None:
        pods = await self.items("/api/v1/pods")
        jobs = await self.items("/apis/batch/v1/jobs")
        deployments = await self.items("/apis/apps/v1/deployments")
        await self.collect_garbage(pods, [*jobs, *deployments])
        await self.provision(await self.items("/api/v1/persistentvolumeclaims"))
        for deployment in deployments:
            await self.deployment(deployment, pods)
        for job in jobs:
            await self.job(job, pods)
        await self.kubelet(await self.items("/api/v1/pods"))

    # controllers ---------------------------------------------------------------------------

    async def collect_garbage(self, pods: list[dict], owners: list[dict]) -> None:
        alive = {o["metadata"].get("uid") for o in owners}
        for pod in pods:
            refs = pod["metadata"].get("ownerReferences") or []
            if refs and not any(r.get("uid") in alive for r in refs):
                await self.delete(pod_path(pod))

    async def provision(self, claims: list[dict]) -> None:
        bound = set()
        for claim in claims:
            meta = claim["metadata"]
            bound.add((meta["namespace"], meta["name"]))
            self.claim_dir(meta["namespace"], meta["name"]).mkdir(parents=True, exist_ok=True)
            if (claim.get("status") or {}).get("phase") != "Bound":
                await self.patch(f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/"
                                 f"{meta['name']}/status", {"status": {"phase": "Bound"}})
        mounted = {c for run in self.pods.values() if run.alive() for c in run.claims}
        for directory in (self.root / "claims").glob("*/*"):
            key = (directory.parent.name, directory.name)
            if key not in bound and key not in mounted:
                shutil.rmtree(directory, ignore_errors=True)

    def claim_dir(self, namespace: str, name: str) -> Path:
        return self.root / "claims" / namespace / name

    async def deployment(self, deployment: dict, pods: list[dict]) -> None:
        meta = deployment["metadata"]
        mine = [p for p in _owned(pods, meta["uid"]) if phase(p) not in ("Succeeded", "Failed")]
        if not mine and (deployment["spec"].get("replicas", 1) or 0) > 0:
            name = f"{meta['name']}-{secrets.token_hex(4)}-{secrets.token_hex(3)[:5]}"
            await self.create_pod(deployment, "apps/v1", "Deployment", name, {}, {})

    async def create_pod(self, owner: dict, api: str, kind: str, name: str,
                         labels: dict, annotations: dict, index: int | None = None) -> None:
        meta, template = owner["metadata"], owner["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        if index is not None:
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX",
                                                        "valueFrom": {"fieldRef": {
                                                            "fieldPath": INDEX_FIELD}}})
        pod_meta = stamp({"name": name, "labels": {
            **template["metadata"].get("labels", {}), **labels}, "annotations": {
            **template["metadata"].get("annotations", {}), **annotations},
            "ownerReferences": [{"apiVersion": api, "kind": kind, "name": meta["name"],
                                 "uid": meta["uid"], "controller": True}]}, meta["namespace"])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec,
                "status": {"phase": "Pending"}}
        await self.post(f"/api/v1/namespaces/{meta['namespace']}/pods", body)
        self.created.append(name)
        await self.event(owner, kind, "SuccessfulCreate", f"Created pod: {name}")

    async def job(self, job: dict, pods: list[dict]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = job.get("status") or {}
        if _finished(job):
            return
        mine = _owned(pods, meta["uid"])
        done = {_index(p) for p in mine if phase(p) == "Succeeded"}
        active = [p for p in mine if phase(p) not in ("Succeeded", "Failed")]
        failed = [p for p in mine if phase(p) == "Failed"]
        actions = {p["metadata"]["name"]: _policy_action(p, spec) for p in failed}
        counted = [p for p in failed if actions[p["metadata"]["name"]][0] != "Ignore"]
        fatal = [why for action, why in actions.values() if action == "FailJob"]
        started = status.get("startTime") or now_stamp()
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        if spec.get("suspend"):
            return await self._stop_job(job, active, path, None)
        elapsed = time.time() - _seconds(started)
        if spec.get("activeDeadlineSeconds") and elapsed > spec["activeDeadlineSeconds"]:
            return await self._stop_job(job, active, path, "DeadlineExceeded")
        if fatal:
            return await self._stop_job(job, active, path, "PodFailurePolicy", fatal[0])
        if len(counted) > spec.get("backoffLimit", 6):
            return await self._stop_job(job, active, path, "BackoffLimitExceeded")
        if len(done) >= spec["completions"]:
            await self.event(job, "Job", "Completed", "Job completed")
            return await self.patch(path, {"status": {
                "active": 0, "succeeded": len(done), "completionTime": now_stamp(),
                "conditions": [_condition("Complete", "Completed")]}})
        await self._fill(job, done, active)
        await self.patch(path, {"status": {
            "startTime": started, "active": len(active), "succeeded": len(done),
            "failed": len(failed), "completedIndexes": ",".join(map(str, sorted(done)))}})

    def terminating(self, job: dict) -> set[int]:
        """Indexes whose deleted pod still runs (podReplacementPolicy: Failed waits)."""
        if job["spec"].get("podReplacementPolicy") != "Failed":
            return set()
        return {r.index for r in self.pods.values() if r.owner == job["metadata"]["uid"]
                and r.kill_at is not None and r.alive()}

    async def _fill(self, job: dict, done: set, active: list[dict]) -> None:
        running = {_index(p) for p in active} | self.terminating(job)
        room = job["spec"]["parallelism"] - len(active)
        for index in range(job["spec"]["completions"]):
            if room <= 0:
                return
            if index not in done and index not in running:
                name = f"{job['metadata']['name']}-{index}-{secrets.token_hex(3)[:5]}"
                marks = {INDEX_KEY: str(index)}
                await self.create_pod(job, "batch/v1", "Job", name, {
                    **marks, "batch.kubernetes.io/job-name": job["metadata"]["name"]}, marks,
                    index)
                room -= 1

    async def _stop_job(self, job: dict, active: list[dict], path: str,
                        failure: str | None, message: str = "") -> None:
        for pod in active:
            await self.delete(pod_path(pod))
        conditions = [_condition("Suspended", "JobSuspended")] if failure is None else [
            {**_condition("Failed", failure), "message": message}]
        await self.patch(path, {"status": {"active": 0, "conditions": conditions}})


@contextlib.asynccontextmanager
async def fake_cluster(kmock_url: str, front: FakeApiServer, root: Path, env: dict[str, str],
                       images: dict[str, Image], default_image: Image):
    """Run a :class:`FakeCluster` in the background for the duration of the block."""
    cluster = FakeCluster(kmock_url.rstrip("/"), front, root, env, images, default_image)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cluster.run)
        try:
            yield cluster
        finally:
            tg.cancel_scope.cancel()
            cluster.stop_all()


def _owned(pods: list[dict], uid: str) -> list[dict]:
    return [p for p in pods if any(r.get("uid") == uid
                                   for r in p["metadata"].get("ownerReferences") or [])]


def _index(pod: dict) -> int:
    return int(pod["metadata"]["annotations"][INDEX_KEY])


def _finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _condition(kind: str, reason: str) -> dict:
    return {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": now_stamp()}


def _policy_action(pod: dict, spec: dict) -> tuple[str, str]:
    """What the Job's podFailurePolicy says of a failed pod ("Count" when no rule matches),
    and the Job controller's message for a FailJob."""
    states = {c["name"]: (c.get("state") or {}).get("terminated") or {}
              for c in (pod.get("status") or {}).get("containerStatuses") or []}
    conditions = {c.get("type") for c in (pod.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    for number, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
        codes = rule.get("onExitCodes")
        for container, state in states.items():
            if codes and codes.get("containerName") in (None, container) and (
                    state.get("exitCode") in codes["values"]):
                return rule["action"], (
                    f"Container {container} for pod {name} failed with exit code "
                    f"{state['exitCode']} matching {rule['action']} rule at index {number}")
        if any(c.get("type") in conditions for c in rule.get("onPodConditions") or []):
            return rule["action"], ""
    return "Count", ""


def _seconds(stamp_: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(stamp_.replace("Z", "+00:00")).timestamp()

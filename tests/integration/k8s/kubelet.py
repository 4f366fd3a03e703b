"""The fake kubelet of :mod:`.harness`: each pod's container as a local process group.

A new pod's container runs as the real command and arguments of its spec, with mount paths
rewritten to local directories (a claim is ``claims/<ns>/<name>[/<subPath>]``, any other
volume a directory of the pod), env resolved (``secretKeyRef`` from the API's Secrets,
``fieldRef`` from the pod), ``PATH`` led by this venv so the bootstrap finds a python3 with
tpi, and each declared container port mapped to a free local port (the container gets
``--host 127.0.0.1 --port <local>`` appended: its network namespace). Readiness follows the
``httpGet`` readiness probe. A pod deleted from the API gets SIGTERM, then SIGKILL after 30 s.
Pod status and the ``Started`` and ``Killing`` events are written back.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tpi_core.testing.emulators import free_port

INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def now_stamp() -> str:
    """The API server's time format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Container:
    """One pod's running container: a local process group."""

    namespace: str
    pod: str
    uid: str
    process: subprocess.Popen
    log: Path
    claims: set[tuple[str, str]]
    probe: str = ""
    owner: str = ""
    index: int | None = None
    ready: bool = False
    reported: bool = False
    kill_at: float | None = None
    meta: dict | None = None
    """The pod's metadata at start, for the events of a pod the API no longer has."""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def phase(pod: dict) -> str:
    """A pod's phase (Pending until a kubelet says otherwise)."""
    return (pod.get("status") or {}).get("phase", "Pending")


class Kubelet:
    """The kubelet half of :class:`.harness.FakeCluster`, which provides the API plumbing
    (``get``, ``patch``, ``delete``, ``event``) and ``containers``, ``front``, ``root``,
    ``env``, ``http``."""

    async def kubelet(self, pods: list[dict]) -> None:
        live = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        for key, container in self.containers.items():
            pod = live.get(key)
            if (pod is None or pod["metadata"].get("uid") != container.uid) and (
                    container.kill_at is None):
                container.signal(signal.SIGTERM)
                container.kill_at = time.monotonic() + 30
                if container.meta is not None and not self.killed(container):
                    await self.event({"metadata": container.meta}, "Pod", "Killing",
                                     "Stopping container agent")
            elif container.kill_at and time.monotonic() > container.kill_at:
                container.signal(signal.SIGKILL)
        for key, pod in live.items():
            container = self.containers.get(key)
            if container is None and phase(pod) == "Pending":
                await self.start(pod)
            elif container is not None and container.uid == pod["metadata"].get("uid"):
                await self.watch(pod, container)

    async def start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        key = (meta["namespace"], meta["name"])
        box = self.root / "pods" / meta["uid"]
        box.mkdir(parents=True)
        (container,) = spec["containers"]
        mounts, claims = self.mounts(pod, container, box)
        env = {**self.env, "HOME": str(box), "HOSTNAME": meta["name"],
               "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
        env.update(await self.resolve_env(pod, container))
        argv = [_rewrite(a, mounts) for a in container.get("command", []) + container.get(
            "args", [])]
        probe = ""
        for port in container.get("ports") or []:
            local = free_port()
            self.front.ports[(*key, port["containerPort"])] = local
            argv += ["--host", "127.0.0.1", "--port", str(local)]
            get = (container.get("readinessProbe") or {}).get("httpGet")
            if get and get.get("port") == port["containerPort"]:
                probe = f"http://127.0.0.1:{local}{get.get('path', '/')}"
        log = box / "container.log"
        self.front.logs[key] = log
        with log.open("wb") as out:
            process = subprocess.Popen(argv, env=env, cwd=box, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        owners = [r.get("uid", "") for r in meta.get("ownerReferences") or []]
        index = meta.get("annotations", {}).get(INDEX_KEY)
        self.containers[key] = Container(*key, meta["uid"], process, log, claims, probe,
                                         owners[0] if owners else "",
                                         int(index) if index is not None else None,
                                         meta=dict(meta))
        await self.patch(pod_path(pod) + "/status", {"status": _running(container, False)})
        await self.event(pod, "Pod", "Started", f"Started container {container['name']}")

    def mounts(self, pod: dict, container: dict, box: Path) -> tuple[dict[str, Path], set]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts, claims = {}, set()
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                claims.add((pod["metadata"]["namespace"], name))
                local = self.claim_dir(pod["metadata"]["namespace"], name) / mount.get(
                    "subPath", "")
            else:
                local = box / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        return mounts, claims

    async def resolve_env(self, pod: dict, container: dict) -> dict[str, str]:
        env = {}
        for item in container.get("env", []):
            source = item.get("valueFrom") or {}
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = await self.get(f"/api/v1/namespaces/{pod['metadata']['namespace']}"
                                        f"/secrets/{ref['name']}") or {}
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        return env

    async def watch(self, pod: dict, container: Container) -> None:
        code = container.process.poll()
        if code is None and not container.ready and await self._probe(container.probe):
            container.ready = True
            await self.patch(pod_path(pod) + "/status", {"status": _running(
                pod["spec"]["containers"][0], True)})
        if code is not None and not container.reported:
            container.reported = True
            code = 128 - code if code < 0 else code
            await self.patch(pod_path(pod) + "/status", {"status": _terminated(
                pod["spec"]["containers"][0], code)})

    async def _probe(self, url: str) -> bool:
        if not url:
            return True
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def delete_pod(self, namespace: str, name: str) -> None:
        """What ``kubectl delete pod`` does: the pod goes, its container gets SIGTERM."""
        pod = await self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        await self.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
        await self.event(pod, "Pod", "Killing", "Stopping container agent")
        if (container := self.containers.get((namespace, name))) is not None:
            container.meta = None  # its Killing event is said

    def killed(self, container: Container) -> bool:
        """Whether the container's process ended already (no Killing event for it)."""
        return container.process.poll() is not None

    def stop_all(self) -> None:
        for container in self.containers.values():
            container.signal(signal.SIGTERM)
        limit = time.monotonic() + 10
        for container in self.containers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                container.process.wait(max(0.1, limit - time.monotonic()))
            container.signal(signal.SIGKILL)


def pod_path(pod: dict) -> str:
    """The API path of a pod."""
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


def _running(container: dict, ready: bool) -> dict:
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": "127.0.0.1", "startTime": now_stamp(),
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": flag}],
            "containerStatuses": [{"name": container["name"], "ready": ready, "restartCount": 0,
                                   "state": {"running": {"startedAt": now_stamp()}}}]}


def _terminated(container: dict, code: int) -> dict:
    return {"phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": container["name"], "ready": False, "restartCount": 0,
                                   "state": {"terminated": {
                                       "exitCode": code, "finishedAt": now_stamp(),
                                       "reason": "Completed" if code == 0 else "Error"}}}]}


def _field(pod: dict, path: str) -> str:
    found = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if found:
        return pod["metadata"].get(found.group(1), {}).get(found.group(2), "")
    return str(pod["metadata"].get(path.removeprefix("metadata."), ""))


def _rewrite(arg: str, mounts: dict[str, Path]) -> str:
    for path in sorted(mounts, key=len, reverse=True):
        arg = re.sub(re.escape(path) + r"(?=/|$|\s|')", str(mounts[path]), arg)
    return arg



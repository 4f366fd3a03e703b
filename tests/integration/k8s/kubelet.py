"""The fake kubelet of :mod:`.harness`: each container of a pod as a local process group,
run as its image would run it.

An image is a stand-in root (:class:`Image`): a ``bin`` directory that is the container's
whole ``PATH`` and where its ``/bin/sh`` is found. The agent image's holds a ``python3`` of
a clean virtual environment (pip and nothing else: no tpi), a user's image a shell and
coreutils (no Python, no bash), and an image without a shell nothing but coreutils, so its
container fails to start as a runtime reports it (``StartError``, exit code 128).

A pod's native sidecars (``initContainers`` with ``restartPolicy: Always``) start first, then
its containers, each with the real command and arguments of its spec, mount paths rewritten
to local directories (a claim is ``claims/<ns>/<name>[/<subPath>]``, a ConfigMap volume its
files, any other volume a directory of the pod), env resolved (``secretKeyRef`` from the
API's Secrets, ``fieldRef`` from the pod), its ``workingDir``, and each declared container
port mapped to a free local port (the container gets ``--host 127.0.0.1 --port <local>``
appended: its network namespace). Readiness follows the ``httpGet`` readiness probe. When
every container has ended, the sidecars get SIGTERM and the pod its phase. A pod deleted from
the API gets SIGTERM in its containers, its sidecars once those ended, then SIGKILL after
30 s. Pod status and the ``Started`` and ``Killing`` events are written back.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tpi_core.testing.emulators import free_port

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
COREUTILS = ("cat", "cp", "date", "echo", "env", "head", "id", "ls", "mkdir", "mv", "rm",
             "sleep", "tail", "touch", "true", "false", "wc")
GRACE = 30.0


def now_stamp() -> str:
    """The API server's time format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Image:
    """A stand-in root: its ``bin`` is the container's PATH and holds its ``/bin/sh``."""

    bin: Path
    pullable: bool = True
    """False: the registry refuses it (the container waits in ImagePullBackOff)."""

    @classmethod
    def build(cls, root: Path, tools: dict[str, str]) -> Image:
        """A root whose ``bin`` links each tool name to a program of this machine."""
        (root / "bin").mkdir(parents=True, exist_ok=True)
        for name, target in tools.items():
            link = root / "bin" / name
            if not link.exists():
                link.symlink_to(target)
        return cls(root / "bin")


def bare_tools(shell: bool = True) -> dict[str, str]:
    """coreutils, and a POSIX shell unless ``shell`` is False."""
    tools = {name: shutil.which(name) for name in COREUTILS}
    if shell:
        tools["sh"] = shutil.which("sh")
    return tools


@dataclass
class Container:
    """One running container of a pod: a local process group."""

    name: str
    process: subprocess.Popen | None
    log: Path
    sidecar: bool = False
    probe: str = ""
    ready: bool = False
    start_error: str = ""
    """Why the runtime could not start it (its exit code is then 128)."""
    waiting: str = ""
    """Why it has not started (its image cannot be pulled), until its pod goes."""
    signalled: bool = False

    @property
    def code(self) -> int | None:
        if self.waiting:
            return 137 if self.signalled else None
        if self.process is None:
            return 128
        code = self.process.poll()
        return None if code is None else (128 - code if code < 0 else code)

    def signal(self, sig: int) -> None:
        self.signalled = self.signalled or bool(self.waiting)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


@dataclass
class PodRun:
    """The containers of one pod on this node."""

    namespace: str
    pod: str
    uid: str
    containers: list[Container]
    claims: set[tuple[str, str]]
    owner: str = ""
    index: int | None = None
    kill_at: float | None = None
    """Deleted: when its processes get SIGKILL."""
    reported: bool = False
    meta: dict | None = None
    """The pod's metadata at start, for the events of a pod the API no longer has."""
    statuses: dict = field(default_factory=dict)

    @property
    def mains(self) -> list[Container]:
        return [c for c in self.containers if not c.sidecar]

    @property
    def sidecars(self) -> list[Container]:
        return [c for c in self.containers if c.sidecar]

    def alive(self) -> bool:
        return any(c.code is None for c in self.containers)

    def signal_all(self, sig: int) -> None:
        for container in self.containers:
            container.signal(sig)


def phase(pod: dict) -> str:
    """A pod's phase (Pending until a kubelet says otherwise)."""
    return (pod.get("status") or {}).get("phase", "Pending")


class Kubelet:
    """The kubelet half of :class:`.harness.FakeCluster`, which provides the API plumbing
    (``get``, ``patch``, ``delete``, ``event``) and ``pods``, ``front``, ``root``, ``env``,
    ``http``, ``images``, ``default_image``."""

    async def kubelet(self, pods: list[dict]) -> None:
        live = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        for key, run in self.pods.items():
            pod = live.get(key)
            if (pod is None or pod["metadata"].get("uid") != run.uid) and run.kill_at is None:
                await self.stop(run)
            elif run.kill_at is not None:
                self._stopping(run)
        for key, pod in live.items():
            run = self.pods.get(key)
            if run is None and phase(pod) == "Pending":
                await self.start(pod)
            elif run is not None and run.uid == pod["metadata"].get("uid"):
                await self.watch(pod, run)

    async def stop(self, run: PodRun) -> None:
        """A deleted pod: SIGTERM to its containers, its sidecars once those ended."""
        run.kill_at = time.monotonic() + GRACE
        for container in run.mains:
            container.signal(signal.SIGTERM)
        if run.meta is not None and not self.killed(run):
            await self.event({"metadata": run.meta}, "Pod", "Killing",
                             "Stopping container " + ", ".join(c.name for c in run.mains))
        self._stopping(run)

    def _stopping(self, run: PodRun) -> None:
        if all(c.code is not None for c in run.mains):
            for sidecar in run.sidecars:
                if not sidecar.signalled:
                    sidecar.signalled = True
                    sidecar.signal(signal.SIGTERM)
        if run.kill_at is not None and time.monotonic() > run.kill_at:
            run.signal_all(signal.SIGKILL)

    # starting ------------------------------------------------------------------------------

    async def start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        key = (meta["namespace"], meta["name"])
        box = self.root / "pods" / meta["uid"]
        box.mkdir(parents=True)
        volumes = await self.volumes(pod, box)
        if volumes is None:
            return  # a ConfigMap not there yet: mounted once it is (FailedMount meanwhile)
        paths, claims = volumes
        specs = [(c, True) for c in spec.get("initContainers", [])
                 if c.get("restartPolicy") == "Always"]
        specs += [(c, False) for c in spec["containers"]]
        containers = []
        for container, sidecar in specs:
            containers.append(await self.run_container(pod, container, sidecar, paths, box))
        owners = [r.get("uid", "") for r in meta.get("ownerReferences") or []]
        index = meta.get("annotations", {}).get(INDEX_KEY)
        run = PodRun(*key, meta["uid"], containers, claims, owners[0] if owners else "",
                     int(index) if index is not None else None, meta=dict(meta))
        self.pods[key] = run
        await self.report(pod, run)
        for container in containers:
            await self.event(pod, "Pod", "Started", f"Started container {container.name}")

    async def volumes(self, pod: dict, box: Path) -> tuple[dict, set] | None:
        """Every volume of the pod as a local directory, by volume name."""
        paths, claims = {}, set()
        namespace = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                name = volume["persistentVolumeClaim"]["claimName"]
                claims.add((namespace, name))
                paths[volume["name"]] = self.claim_dir(namespace, name)
            elif "configMap" in volume:
                found = await self.get(f"/api/v1/namespaces/{namespace}/configmaps/"
                                       f"{volume['configMap']['name']}")
                if found is None:
                    return None
                local = box / "volumes" / volume["name"]
                local.mkdir(parents=True)
                for name, data in (found.get("binaryData") or {}).items():
                    (local / name).write_bytes(base64.b64decode(data))
                for name, text in (found.get("data") or {}).items():
                    (local / name).write_text(text)
                paths[volume["name"]] = local
            else:
                paths[volume["name"]] = box / "volumes" / volume["name"]
        return paths, claims

    async def run_container(self, pod: dict, container: dict, sidecar: bool,
                            volumes: dict[str, Path], box: Path) -> Container:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        mounts = {}
        for mount in container.get("volumeMounts", []):
            local = volumes[mount["name"]] / mount.get("subPath", "")
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local
        image = self.images.get(container.get("image", "")) or self.default_image
        env = {**self.env, "HOME": "/", "HOSTNAME": meta["name"], "PATH": str(image.bin)}
        env.update({k: _rewrite(v, mounts)
                    for k, v in (await self.resolve_env(pod, container)).items()})
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
        log = box / f"{container['name']}.log"
        self.front.logs[(*key, container["name"])] = log
        cwd = mounts.get(container.get("workingDir", ""), box)
        if not image.pullable:
            log.touch()
            return Container(container["name"], None, log, sidecar, waiting=(
                f'Back-off pulling image "{container.get("image", "")}"'))
        program = _in_image(argv[0], image)
        if program is None:
            log.touch()
            return Container(container["name"], None, log, sidecar, start_error=(
                f'failed to create containerd task: failed to create shim task: OCI runtime '
                f'create failed: exec: "{argv[0]}": stat {argv[0]}: no such file or '
                f'directory: unknown'))
        with log.open("wb") as out:
            process = subprocess.Popen([program, *argv[1:]], env=env, cwd=cwd, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return Container(container["name"], process, log, sidecar, probe)

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

    # status ------------------------------------------------------------------------------

    async def watch(self, pod: dict, run: PodRun) -> None:
        for container in run.containers:
            if (container.code is None and not container.ready
                    and await self._probe(container.probe)):
                container.ready = True
        if all(c.code is not None for c in run.mains):
            self._stopping(run)  # the pod is done: its sidecars go
        await self.report(pod, run)

    async def report(self, pod: dict, run: PodRun) -> None:
        """Write the pod's status back when it changed."""
        statuses = {c.name: _state(c) for c in run.containers}
        if statuses == run.statuses:
            return
        run.statuses = statuses
        done = all(c.code is not None for c in run.mains)
        ready = not done and all(c.ready for c in run.containers if c.code is None)
        if done:
            run.reported = True
            phase_ = "Succeeded" if all(c.code == 0 for c in run.mains) else "Failed"
        elif any(c.waiting and c.code is None for c in run.containers):
            phase_ = "Pending"
        else:
            phase_ = "Running"
        flag = "True" if ready else "False"
        status = {"phase": phase_, "podIP": "127.0.0.1", "startTime": now_stamp(),
                  "conditions": [{"type": "PodScheduled", "status": "True"},
                                 {"type": "Ready", "status": flag}],
                  "initContainerStatuses": [statuses[c.name] for c in run.sidecars],
                  "containerStatuses": [statuses[c.name] for c in run.mains]}
        await self.patch(pod_path(pod) + "/status", {"status": status})

    async def _probe(self, url: str) -> bool:
        if not url:
            return True
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def delete_pod(self, namespace: str, name: str) -> None:
        """What ``kubectl delete pod`` does: the pod goes, its containers get SIGTERM."""
        pod = await self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        await self.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
        await self.event(pod, "Pod", "Killing", "Stopping container task")
        if (run := self.pods.get((namespace, name))) is not None:
            run.meta = None  # its Killing event is said

    def killed(self, run: PodRun) -> bool:
        """Whether the pod's containers ended already (no Killing event for it)."""
        return not run.alive()

    def stop_all(self) -> None:
        for run in self.pods.values():
            run.signal_all(signal.SIGTERM)
        limit = time.monotonic() + 10
        for run in self.pods.values():
            for container in run.containers:
                if container.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        container.process.wait(max(0.1, limit - time.monotonic()))
            run.signal_all(signal.SIGKILL)


def pod_path(pod: dict) -> str:
    """The API path of a pod."""
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


def _state(container: Container) -> dict:
    code = container.code
    if code is None and container.waiting:
        state = {"waiting": {"reason": "ImagePullBackOff", "message": container.waiting}}
    elif code is None:
        state = {"running": {"startedAt": now_stamp()}}
    elif container.start_error:
        state = {"terminated": {"exitCode": 128, "reason": "StartError",
                                "message": container.start_error, "finishedAt": now_stamp()}}
    else:
        state = {"terminated": {"exitCode": code, "finishedAt": now_stamp(),
                                "reason": "Completed" if code == 0 else "Error"}}
    return {"name": container.name, "ready": container.ready and code is None,
            "restartCount": 0, "state": state}


def _in_image(program: str, image: Image) -> str | None:
    """Where a container's program is in its image (``/bin/sh`` is its ``bin/sh``)."""
    found = image.bin / Path(program).name
    return str(found) if found.exists() else None


def _field(pod: dict, path: str) -> str:
    found = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if found:
        return pod["metadata"].get(found.group(1), {}).get(found.group(2), "")
    return str(pod["metadata"].get(path.removeprefix("metadata."), ""))


def _rewrite(arg: str, mounts: dict[str, Path]) -> str:
    for path in sorted(mounts, key=len, reverse=True):
        arg = re.sub(re.escape(path) + r"(?=/|$|\s|'|\"|\})", str(mounts[path]), arg)
    return arg

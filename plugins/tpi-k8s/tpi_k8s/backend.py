"""The Kubernetes backend: an indexed Job per task, its workdir on a claim, in one namespace.

Objects of a task, in the kubeconfig's current namespace, in creation order (``steps``; destroy
deletes them in reverse); every one is labelled ``tpi.dev/task=<id>`` and
``tpi.dev/managed=true``::

    PersistentVolumeClaim <id>          the task's storage (or storage.container's claim)
    Secret <id>-storage                 the storage server's token
    Deployment <id>-storage             the storage server: the claim, to the pod proxy
    (task prefix)                       on a claim tpi does not own, emptied on destroy
    Secret <id>                         the environment values, and nothing else
    Job <id>                            Indexed, parallelism = completions = N, the agent

Storage is ``k8s://<namespace>/<id>``: the claim at sub-path ``<id>`` (or the path of
``storage.container = "claim/path"``), which agents mount and use as ``file://``, and the
CLI reaches through the storage server (:mod:`tpi_k8s.storage`). A ``storage.container``
that is an ``s3://``, ``gs://`` or ``az://`` URL is used instead, through that backend's
storage, and no claim or server is made. ``container_opts`` of a claim: ``storage_class``,
``size`` (GB; default ``disk_size``, else 1), ``access_mode`` (default ReadWriteOnce for one
replica, ReadWriteMany for more).

The claim and its server are made by :meth:`K8sBackend.storage` with the task being applied
(the workdir is uploaded before the Job exists); they take its image, parallelism and disk
size.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import anyio

from tpi_core.backend import Backend, Capability, Launch, MachineType, Observation, TaskRef
from tpi_core.errors import (FieldError, TaskNotFound, UnsafePathError, UsageError, check_fields,
                             field)
from tpi_core.model import Task
from tpi_core.registry import open_storage
from tpi_core.steps import Step, nothing
from tpi_core.storage import Storage, join
from tpi_core.storage.local import checked_key
from tpi_k8s import launch, machines, manifests, observe, resources
from tpi_k8s.client import K8sClient
from tpi_k8s.storage import Endpoint, K8sStorage

if TYPE_CHECKING:
    from tpi_core.boot.bundle import Bundle

BUCKET_SCHEMES = ("s3", "gs", "az")
CLAIM_OPTIONS = ("storage_class", "size", "access_mode")
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
SIDECARS_SINCE = (1, 29)
"""Native sidecars (``initContainers`` with ``restartPolicy: Always``) are on by default
from Kubernetes 1.29; before, the agent is the pod's second container."""
READY_TIMEOUT_ENV = "TPI_K8S_READY_TIMEOUT"
"""Seconds apply waits for the storage server to be ready (default 600: an image pull)."""
DRAIN_TIMEOUT = 120.0
"""How long destroy waits for the Job's pods to stop before deleting their claim."""


def bucket_url(ref: TaskRef) -> str:
    """The task's prefix in ``storage.container``'s bucket, or "" for a claim."""
    if "://" not in ref.container:
        return ""
    scheme, _, rest = ref.container.partition("://")
    if scheme not in BUCKET_SCHEMES or not rest.strip("/"):
        raise UsageError(f"storage.container {ref.container!r}: a URL must be s3://, gs:// or "
                         "az://BUCKET[/PATH]; a plain name is a PersistentVolumeClaim")
    bucket, _, path = rest.partition("/")
    return f"{scheme}://{join(bucket, path.strip('/') or ref.task_id)}"


def claim_of(ref: TaskRef, task: Task | None = None) -> manifests.Claim:
    """The claim (and sub-path) holding a task's storage."""
    opts = ref.container_opts
    parallelism, disk = (task.parallelism, task.disk_size) if task else (1, -1)
    mode = opts.get("access_mode") or ("ReadWriteMany" if parallelism > 1 else "ReadWriteOnce")
    if mode not in ACCESS_MODES:
        raise UsageError(f"container_opts.access_mode {mode!r}: use {' or '.join(ACCESS_MODES)}")
    size = opts.get("size") or (str(disk) if disk > 0 else "1")
    if not size.isdigit() or int(size) < 1:
        raise UsageError(f"container_opts.size {size!r}: a size in GB >= 1")
    if not ref.container:
        return manifests.Claim(ref.task_id, ref.task_id, True, mode, int(size),
                               opts.get("storage_class", ""))
    name, path = ref.container_path("a claim's root")
    try:
        sub_path = checked_key(path)
    except UnsafePathError as exc:
        raise UsageError(f"storage.container {ref.container!r}: {exc}") from None
    return manifests.Claim(machines.object_name(name, "storage.container"), sub_path,
                           False, mode, int(size))


def owner_of(ref: TaskRef, task: Task | None = None) -> manifests.Owner:
    """The metadata every object of a task carries."""
    tags = task.tags if task else {}
    return manifests.Owner(ref.task_id, ref.name, ref.region, ref.container, tags)


class K8sBackend(Backend):
    """Tasks as indexed Jobs in the kubeconfig's namespace (see the module docstring)."""

    NAME = "k8s"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.GPU, Capability.FIND})
    AGENT = ("tpi-k8s", "tpi_k8s")
    AGENT_VENDORED = ("anyio", "h11", "pathspec")
    """What the agent and the storage server import besides the standard library and tpi:
    pure Python, so a pod installs it all by file from the bundle's ConfigMap."""

    def __init__(self, client: K8sClient | None = None):
        super().__init__()
        self._client = client
        self._sidecars: bool | None = None

    def client(self) -> K8sClient:
        """The cluster client (configured on first request)."""
        if self._client is None:
            self._client = K8sClient()
        return self._client

    # agent bundle ------------------------------------------------------------------------

    def agent_distributions(self, ref: TaskRef) -> list[tuple[str, str]]:
        """The plugin, and the plugin of a bucket used as ``storage.container``."""
        scheme = bucket_url(ref).partition("://")[0]
        plugin = {"s3": ("tpi-aws", "tpi_aws"), "gs": ("tpi-gcp", "tpi_gcp"),
                  "az": ("tpi-azure", "tpi_azure")}.get(scheme)
        return [self.AGENT, plugin] if plugin else [self.AGENT]

    async def publish_agent(self, ref: TaskRef, built: Bundle) -> tuple[str, bool]:
        """The bundle's ConfigMap (wheels, pins, manifest), made once per tpi version."""
        from tpi_core.boot.bundle import MANIFEST, REQUIREMENTS  # packaging: apply only

        c = self.client()
        namespace, name = await c.namespace(), launch.bundle_name(built.digest)
        files = {k: v for k, v in built.files.items() if k.endswith(".whl")
                 or k == REQUIREMENTS}
        files[MANIFEST] = built.manifest()
        made = await resources.ensure_bundle(c, namespace,
                                             manifests.bundle_config_map(name, files))
        return f"configmap://{namespace}/{name}", made

    async def sidecars(self) -> bool:
        """Whether the cluster runs native sidecars (Kubernetes 1.29+); a server that does
        not say its version is taken to be current."""
        if self._sidecars is None:
            version = await resources.server_version(self.client())
            self._sidecars = version is None or version >= SIDECARS_SINCE
        return self._sidecars

    # storage -----------------------------------------------------------------------------

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        """The task's storage; with ``create``, its claim and a ready storage server."""
        url = bucket_url(ref)
        if url:
            return self.kept_storage(url, partial(open_storage, url, **ref.container_opts))
        namespace = await self.client().namespace()
        if create:
            await self._provide_storage(ref, namespace, create)
        return self.kept_storage(ref.task_id, partial(self._claim_storage, ref, namespace))

    def _claim_storage(self, ref: TaskRef, namespace: str) -> K8sStorage:
        return K8sStorage(Endpoint(self.client(), namespace, ref.task_id))

    async def _provide_storage(self, ref: TaskRef, namespace: str, task: Task) -> None:
        for step in self._storage_steps(ref, task):
            await step.create()
        endpoint = Endpoint(self.client(), namespace, ref.task_id)
        await endpoint.wait_ready(float(os.environ.get(READY_TIMEOUT_ENV) or 600))
        # a task made again: a new token
        self.kept_storage(ref.task_id, partial(K8sStorage, endpoint), renew=True)

    def _storage_steps(self, ref: TaskRef, task: Task | None) -> list[Step]:
        c, spec, owner = self.client(), claim_of(ref, task), owner_of(ref, task)

        async def claim() -> None:
            namespace = await c.namespace()
            if spec.owned:
                await resources.ensure_claim(c, namespace, manifests.claim(owner, spec))
            else:
                await resources.check_claim(c, namespace, spec.name)

        async def server() -> None:
            namespace = await c.namespace()
            token = manifests.token_secret(owner, secrets.token_urlsafe(32))
            await resources.ensure_token(c, namespace, token)
            built = await anyio.to_thread.run_sync(self.agent_bundle, ref)
            await self.publish_agent(ref, built)  # the server runs the bundle too
            body = manifests.storage_server(owner, spec, launch.agent_image(),
                                            launch.bundle_name(built.digest),
                                            machines.node_selector(ref.region))
            await resources.create(c, namespace, "deployments", body)

        return [Step(f"PersistentVolumeClaim {spec.name}", claim, partial(
                    self._delete, "persistentvolumeclaims", spec.name) if spec.owned else nothing),
                Step(f"storage server {manifests.server_name(ref.task_id)}", server,
                     partial(self._delete_server, ref.task_id))]

    # create and delete -------------------------------------------------------------------

    def validate(self, task: Task) -> None:
        """Machine, region, image, ``permission_set``, tags and storage settings are usable
        (no request)."""
        check_fields(task, {"machine": machines.size, "region": machines.node_selector,
                            "image": machines.image,
                            "permission_set": machines.service_account})
        for key in task.tags:
            if not machines.is_label_key(key):
                raise FieldError("tags", f"{key!r} is not a Kubernetes label or annotation key")
        ref = TaskRef.of(task)
        if bucket_url(ref) and not launch.from_index():
            raise FieldError("storage.container", f"a bucket on Kubernetes needs its plugin's "
                             f"SDK in the pods, which is not pure Python: set "
                             f"{launch.AGENT_INDEX_ENV}=1 to let the agent image install the "
                             "bundle's pinned requirements from a package index, or use a "
                             f"prepared agent image ({launch.AGENT_IMAGE_ENV}; plugin README)")
        if not bucket_url(ref):
            with field("storage.container"):
                claim_of(ref, task)
            unknown = sorted(set(ref.container_opts) - set(CLAIM_OPTIONS))
            if unknown:
                raise FieldError("storage.container_opts", f"{', '.join(unknown)}: a claim "
                                 f"takes {', '.join(CLAIM_OPTIONS)}")

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch_: Launch | None = None) -> Sequence[Step]:
        """Claim, storage server, (prefix), environment Secret, Job; deleted from the task
        id alone."""
        if task is not None:
            self.validate(task)
        secret = manifests.secret_name(ref.task_id)
        tail = [Step(f"environment Secret {secret}",
                     partial(self._create_secret, task) if task else nothing,
                     partial(self._delete, "secrets", secret)),
                Step(f"Job {ref.task_id}",
                     partial(self._create_job, task, launch_) if task and launch_ else nothing,
                     partial(self._delete_job, ref.task_id))]
        if bucket_url(ref):
            return tail
        head = self._storage_steps(ref, task)
        if not claim_of(ref, task).owned:
            head.append(Step(f"task prefix on claim {ref.container}",
                             delete=partial(self._empty_prefix, ref)))
        return head + tail

    async def _create_secret(self, task: Task) -> None:
        owner, namespace = owner_of(TaskRef.of(task), task), await self.client().namespace()
        body = manifests.environment_secret(owner, task.environment)
        await resources.ensure_secret(self.client(), namespace, body)

    async def _create_job(self, task: Task, launch_: Launch) -> None:
        c, ref = self.client(), TaskRef.of(task)
        namespace = await c.namespace()
        await resources.check_service_account(c, namespace, task.permission_set)
        claim = None if bucket_url(ref) else claim_of(ref, task)
        url = f"file://{launch.STORAGE_MOUNT}" if claim else launch_.storage_url
        spec = manifests.JobSpec(
            parallelism=task.parallelism, image=machines.image(task.image),
            size=machines.size(task.machine), storage_url=url, deadline=launch_.deadline,
            environment_keys=sorted(task.environment), claim=claim, disk_size=task.disk_size,
            node_selector=machines.node_selector(task.region),
            service_account=task.permission_set, agent_image=launch.agent_image(),
            bundle=launch.bundle_name(launch_.agent_digest), sidecar=await self.sidecars(),
            from_index=launch.from_index())
        body = manifests.job(owner_of(ref, task), spec, time.time())
        await resources.ensure_job(c, namespace, body)

    async def _delete(self, plural: str, name: str) -> None:
        await resources.delete(self.client(), await self.client().namespace(), plural, name)

    async def _delete_server(self, task_id: str) -> None:
        await self._delete("deployments", manifests.server_name(task_id))
        await self._delete("secrets", manifests.token_name(task_id))

    async def _delete_job(self, task_id: str) -> None:
        c = self.client()
        namespace = await c.namespace()
        await resources.delete(c, namespace, "jobs", task_id)
        labels = {manifests.LABEL_TASK: task_id, manifests.LABEL_ROLE: manifests.ROLE_AGENT}
        # agents flush on SIGTERM: their claim goes only after they stopped writing to it
        await resources.wait_gone(c, namespace, labels, DRAIN_TIMEOUT)

    async def _empty_prefix(self, ref: TaskRef) -> None:
        await (await self.storage(ref)).delete_prefix("")

    # read back ---------------------------------------------------------------------------

    async def observe(self, ref: TaskRef) -> Observation:
        """Pods running and wanted, and events of the Job and its pods."""
        c = self.client()
        return await observe.observation(c, await c.namespace(), ref.task_id)

    async def set_capacity(self, ref: TaskRef, machines_: int) -> None:
        """Suspend the Job (``tpi stop``: pods get SIGTERM and flush) or resume it."""
        c = self.client()
        namespace = await c.namespace()
        if await resources.read(c, namespace, "jobs", ref.task_id) is None:
            raise TaskNotFound(f"no Job {ref.task_id} in namespace {namespace}")
        await resources.set_suspended(c, namespace, ref.task_id, machines_ == 0)

    async def preempt(self, ref: TaskRef, replica: int, grace: float) -> str:
        """What an eviction or a lost node does: delete the replica's pod (it gets SIGTERM
        and its grace period to flush); the Job makes a replacement."""
        c = self.client()
        namespace = await c.namespace()
        labels = {manifests.LABEL_TASK: ref.task_id, manifests.LABEL_ROLE: manifests.ROLE_AGENT}
        pods = [pod for pod in await resources.labelled(c, namespace, "pods", labels)
                # the API filters by label; a server that does not is filtered here too
                if pod["metadata"].get("labels", {}).get(manifests.LABEL_TASK) == ref.task_id
                and not pod["metadata"].get("deletionTimestamp")
                and pod["metadata"].get("annotations", {}).get(observe.INDEX_KEY)
                == str(replica)]
        if not pods:
            raise UsageError(f"replica {replica} of task {ref.task_id} has no pod running")
        name = pods[0]["metadata"]["name"]
        await resources.delete(c, namespace, "pods", name)
        return (f"preempted replica {replica} of task {ref.task_id}: deleted pod {name}; "
                "its Job makes a replacement")

    async def find(self, region: str | None = None) -> list[TaskRef]:
        """Tasks of the namespace, from the labels of their Jobs and storage servers."""
        c = self.client()
        namespace, found = await c.namespace(), {}
        for plural in ("jobs", "deployments"):
            for item in await resources.labelled(c, namespace, plural,
                                                 {manifests.LABEL_MANAGED: "true"}):
                ref = _ref_of(item)
                if ref is not None:
                    found.setdefault(ref.task_id, ref)
        return sorted(found.values(), key=lambda r: r.task_id)

    @classmethod
    def machine_types(cls) -> list[MachineType]:
        """The size aliases and the requests they make (cpu-memMB[+accelerator*count])."""
        return [MachineType(alias, native, _detail(native))
                for alias, native in machines.SIZES.items()]

    async def aclose(self) -> None:
        """Close every storage handed out and the cluster client."""
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()


def _ref_of(item: dict) -> TaskRef | None:
    meta = item.get("metadata") or {}
    tags = {**(meta.get("annotations") or {}), manifests.LABEL_TASK:
            (meta.get("labels") or {}).get(manifests.LABEL_TASK, "")}
    return manifests.TAGS.ref(tags, K8sBackend.NAME)


def _detail(native: str) -> str:
    size = machines.size(native)
    gpus = f", {size.gpus}x {size.accelerator} GPU" if size.gpus else ""
    return f"{size.cpu} CPU, {size.memory_mb} MB{gpus} (requests = limits)"

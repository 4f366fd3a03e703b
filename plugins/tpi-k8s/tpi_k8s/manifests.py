"""The manifests of a task's objects, built as plain dicts (no request here).

Every object carries ``tpi.dev/task=<id>`` and ``tpi.dev/managed=true`` (plus
``tpi.dev/role`` on pods), so a task is found and destroyed from the cluster alone; the task's
name, region and container ride along as annotations. Tags become annotations, and labels
too where Kubernetes accepts them as labels (values of 63 characters from a small alphabet).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tpi_core.agent.companion import wrapper_command
from tpi_core.model import frozen_map
from tpi_core.tags import OwnTags
from tpi_k8s import launch
from tpi_k8s.machines import Size, is_label_key, is_label_value

LABEL_TASK = "tpi.dev/task"
LABEL_MANAGED = "tpi.dev/managed"
LABEL_ROLE = "tpi.dev/role"
ANNOTATION_NAME = "tpi.dev/name"
ANNOTATION_REGION = "tpi.dev/region"
ANNOTATION_CONTAINER = "tpi.dev/container"
TAGS = OwnTags(LABEL_TASK, LABEL_MANAGED, ANNOTATION_NAME, ANNOTATION_CONTAINER,
               ANNOTATION_REGION)
"""tpi's own labels (task, managed) and annotations (name, container, region)."""
ROLE_AGENT, ROLE_STORAGE, ROLE_BUNDLE = "agent", "storage", "agent-bundle"
AGENT_CONTAINER = "agent"
TASK_CONTAINER = "task"
"""The user's container: the user's image, the wrapper as its command."""
AGENT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
"""The agent's share of the pod, beside the task's own size."""
START_FAILURES = [126, 127, 128]
"""Exit codes of a container that could not start its command (not executable, not found,
the runtime's StartError): the same image fails the same way in every pod."""
TOKEN_KEY = "token"
TOKEN_ENV = "TPI_STORAGE_TOKEN"
BACKOFF_PER_REPLICA = 6
"""Failed pods a Job tolerates per replica (agent errors; preemptions and evictions are not
counted: the pod failure policy ignores them)."""
DEADLINE_GRACE = 120
"""Seconds the Job outlives the task's deadline, so agents report ``timed_out`` themselves
before the Job controller stops their pods."""
EXIT_PREEMPTED = 143
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def secret_name(task_id: str) -> str:
    """The Secret holding the task's environment values."""
    return task_id


def token_name(task_id: str) -> str:
    """The Secret holding the storage server's token."""
    return f"{task_id}-storage"


def server_name(task_id: str) -> str:
    """The storage server's Deployment."""
    return f"{task_id}-storage"


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose objects these are: what every manifest's metadata carries."""

    task_id: str
    name: str = ""
    region: str = ""
    container: str = ""
    tags: Mapping[str, str] = field(default_factory=frozen_map)

    def labels(self, role: str | None = None) -> dict[str, str]:
        """Tags fit for labels, then tpi's own labels (which win)."""
        own = TAGS.ids(self.task_id)
        if role:
            own[LABEL_ROLE] = role
        usable = {k: v for k, v in self.tags.items() if is_label_key(k) and is_label_value(v)}
        return {**usable, **own}

    def annotations(self) -> dict[str, str]:
        """Every tag, then the task's name, region and container."""
        return {**self.tags, **TAGS.about(self.name, self.container, self.region)}

    def metadata(self, name: str, role: str | None = None) -> dict:
        """``metadata`` of one object."""
        return {"name": name, "labels": self.labels(role), "annotations": self.annotations()}

    def selector(self, role: str) -> dict[str, str]:
        """The labels that select this task's pods of a role."""
        return {LABEL_TASK: self.task_id, LABEL_ROLE: role}


@dataclass(frozen=True, slots=True)
class Claim:
    """Where a task's storage lives on the cluster: a claim and a sub-path in it."""

    name: str
    sub_path: str
    owned: bool = True
    access_mode: str = "ReadWriteOnce"
    size_gb: int = 1
    storage_class: str = ""


def _encoded(values: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def environment_secret(owner: Owner, values: Mapping[str, str]) -> dict:
    """The Secret of environment values: the only place they are written."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": owner.metadata(secret_name(owner.task_id)), "data": _encoded(values)}


def token_secret(owner: Owner, token: str) -> dict:
    """The Secret of the storage server's token."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": owner.metadata(token_name(owner.task_id)),
            "data": _encoded({TOKEN_KEY: token})}


def claim(owner: Owner, spec: Claim) -> dict:
    """A PersistentVolumeClaim for the task's storage."""
    body: dict = {"accessModes": [spec.access_mode],
                  "resources": {"requests": {"storage": f"{spec.size_gb}Gi"}}}
    if spec.storage_class:
        body["storageClassName"] = spec.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": owner.metadata(spec.name), "spec": body}


def bundle_config_map(name: str, files: Mapping[str, bytes]) -> dict:
    """The agent bundle as an immutable ConfigMap (its wheels, pins and manifest), mounted by
    the agent image's containers: shared by the namespace's tasks of one tpi version."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
            "metadata": {"name": name, "labels": {LABEL_MANAGED: "true",
                                                  LABEL_ROLE: ROLE_BUNDLE}},
            "binaryData": _encoded_bytes(files)}


def _encoded_bytes(files: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in sorted(files.items())}


def _agent_volumes(bundle: str) -> tuple[list[dict], list[dict]]:
    """The bundle's ConfigMap and the scratch volume it is installed into."""
    volumes = [{"name": "agent", "emptyDir": {}},
               {"name": "bundle", "configMap": {"name": bundle}}]
    mounts = [{"name": "agent", "mountPath": launch.AGENT_MOUNT},
              {"name": "bundle", "mountPath": launch.BUNDLE_MOUNT, "readOnly": True}]
    return volumes, mounts


def _claim_volume(spec: Claim) -> tuple[dict, dict]:
    volume = {"name": "storage", "persistentVolumeClaim": {"claimName": spec.name}}
    mount = {"name": "storage", "mountPath": launch.STORAGE_MOUNT, "subPath": spec.sub_path}
    return volume, mount


def storage_server(owner: Owner, spec: Claim, image: str, bundle: str,
                   node_selector: Mapping[str, str]) -> dict:
    """The storage server's Deployment: one pod serving the claim to the pod proxy, in the
    agent image with the bundle's ConfigMap."""
    volume, mount = _claim_volume(spec)
    volumes, mounts = _agent_volumes(bundle)
    token = {"secretKeyRef": {"name": token_name(owner.task_id), "key": TOKEN_KEY}}
    container = {
        "name": ROLE_STORAGE, "image": image, "command": launch.command(),
        "args": launch.server_args(), "env": [{"name": TOKEN_ENV, "valueFrom": token}],
        "ports": [{"name": "storage", "containerPort": launch.SERVER_PORT}],
        "readinessProbe": {"httpGet": {"path": "/v1/health", "port": launch.SERVER_PORT},
                           "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "volumeMounts": [mount, *mounts]}
    pod = {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 10,
           "nodeSelector": dict(node_selector), "containers": [container],
           "volumes": [volume, *volumes]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": owner.metadata(server_name(owner.task_id), ROLE_STORAGE),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": owner.selector(ROLE_STORAGE)},
                     "template": {"metadata": _pod_metadata(owner, ROLE_STORAGE),
                                  "spec": pod}}}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything of a task's Job besides its owner."""

    parallelism: int
    image: str
    size: Size
    storage_url: str
    deadline: float
    environment_keys: Sequence[str] = ()
    claim: Claim | None = None
    disk_size: int = -1
    node_selector: Mapping[str, str] = field(default_factory=frozen_map)
    service_account: str = ""
    agent_image: str = launch.AGENT_IMAGE
    bundle: str = ""
    """The agent bundle's ConfigMap."""
    sidecar: bool = True
    """The agent as a native sidecar (Kubernetes 1.29+), else as a second container."""
    from_index: bool = False
    """The agent image may install the bundle's pins from a package index."""


def active_deadline(deadline: float, now: float) -> int:
    """``activeDeadlineSeconds`` for a Job created at ``now``: the task's absolute deadline,
    plus the grace that lets agents report ``timed_out`` first."""
    return max(1, math.ceil(deadline - now)) + DEADLINE_GRACE


def job(owner: Owner, spec: JobSpec, now: float) -> dict:
    """The indexed Job: one completion per replica, the agent in every pod."""
    n = spec.parallelism
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": owner.metadata(owner.task_id),
            "spec": {"parallelism": n, "completions": n, "completionMode": "Indexed",
                     "backoffLimit": BACKOFF_PER_REPLICA * n,
                     "activeDeadlineSeconds": active_deadline(spec.deadline, now),
                     "podFailurePolicy": _failure_policy(),
                     # a replacement starts once its predecessor stopped: after its flush
                     "podReplacementPolicy": "Failed",
                     "template": {"metadata": _pod_metadata(owner, ROLE_AGENT),
                                  "spec": _agent_pod(owner, spec)}}}


def _failure_policy() -> dict:
    # a preempted or evicted pod flushed its work: replace it, uncounted; a task container
    # that cannot start (no shell in its image) fails the Job at once, not after retries
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": TASK_CONTAINER,
                                             "operator": "In", "values": [EXIT_PREEMPTED]}},
        {"action": "FailJob", "onExitCodes": {"containerName": TASK_CONTAINER,
                                              "operator": "In", "values": START_FAILURES}}]}


def _pod_metadata(owner: Owner, role: str) -> dict:
    return {"labels": owner.labels(role), "annotations": owner.annotations()}


def _agent_pod(owner: Owner, spec: JobSpec) -> dict:
    """The user's container runs the script (the wrapper of :mod:`tpi_core.agent.companion`
    is its command: the image needs only ``/bin/sh``); the agent beside it, in the agent
    image, restores, syncs and reports through the two shared volumes."""
    shared = [{"name": "work", "mountPath": launch.WORK_MOUNT},
              {"name": "run", "mountPath": launch.RUN_MOUNT}]
    volumes, mounts = _agent_volumes(spec.bundle)
    volumes = [{"name": "work", "emptyDir": {}}, {"name": "run", "emptyDir": {}}, *volumes]
    mounts = [*shared, *mounts]
    if spec.claim is not None:
        volume, mount = _claim_volume(spec.claim)
        mounts.append(mount)
        volumes.append(volume)
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}
    env = [{"name": "JOB_COMPLETION_INDEX", "valueFrom": index}]
    if spec.from_index:
        env.append({"name": "TPI_AGENT_INDEX", "value": "1"})
    agent = {"name": AGENT_CONTAINER, "image": spec.agent_image, "command": launch.command(),
             "args": launch.agent_args(spec.storage_url, spec.sidecar), "env": env,
             "resources": AGENT_RESOURCES, "volumeMounts": mounts}
    task = {"name": TASK_CONTAINER, "image": spec.image, "command": wrapper_command(),
            "workingDir": launch.WORK_MOUNT, "env": _task_env(owner, spec),
            "resources": spec.size.resources(spec.disk_size), "volumeMounts": shared}
    pod: dict = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 60,
                 "nodeSelector": {**spec.node_selector, **spec.size.node_selector()},
                 "volumes": volumes}
    if spec.sidecar:
        pod["initContainers"] = [{**agent, "restartPolicy": "Always"}]
        pod["containers"] = [task]
    else:
        pod["containers"] = [task, agent]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    else:
        pod["automountServiceAccountToken"] = False  # the agent needs no API access
    if spec.claim is not None and spec.claim.access_mode == "ReadWriteOnce":
        pod["affinity"] = _beside_storage_server(owner)
    return pod


def _task_env(owner: Owner, spec: JobSpec) -> list[dict]:
    env: list[dict] = [{"name": "TPI_RUN", "value": launch.RUN_MOUNT}]
    for key in sorted(spec.environment_keys):
        ref = {"name": secret_name(owner.task_id), "key": key}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _beside_storage_server(owner: Owner) -> dict:
    # a ReadWriteOnce claim is mounted by one node at a time: the storage server's
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": owner.selector(ROLE_STORAGE)},
        "topologyKey": "kubernetes.io/hostname"}]}}

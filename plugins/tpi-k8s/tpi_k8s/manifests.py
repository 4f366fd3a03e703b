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
ROLE_AGENT, ROLE_STORAGE = "agent", "storage"
AGENT_CONTAINER = "agent"
TOKEN_KEY = "token"
TOKEN_ENV = "TPI_STORAGE_TOKEN"
BACKOFF_PER_REPLICA = 6
"""Failed pods a Job tolerates per replica (agent errors; preemptions and evictions are not
counted: the pod failure policy ignores them)."""
DEADLINE_GRACE = 120
"""Seconds the Job outlives the task's deadline, so agents report ``timed_out`` themselves
before the Job controller stops their pods."""
EXIT_PREEMPTED = 143


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


def _claim_volume(spec: Claim) -> tuple[dict, dict]:
    volume = {"name": "storage", "persistentVolumeClaim": {"claimName": spec.name}}
    mount = {"name": "storage", "mountPath": launch.STORAGE_MOUNT, "subPath": spec.sub_path}
    return volume, mount


def storage_server(owner: Owner, spec: Claim, image: str, package: str,
                   node_selector: Mapping[str, str]) -> dict:
    """The storage server's Deployment: one pod serving the claim to the pod proxy."""
    volume, mount = _claim_volume(spec)
    token = {"secretKeyRef": {"name": token_name(owner.task_id), "key": TOKEN_KEY}}
    container = {
        "name": ROLE_STORAGE, "image": image, "command": launch.command(),
        "args": launch.server_args(),
        "env": [{"name": "TPI_AGENT_PACKAGE", "value": package},
                {"name": TOKEN_ENV, "valueFrom": token}],
        "ports": [{"name": "storage", "containerPort": launch.SERVER_PORT}],
        "readinessProbe": {"httpGet": {"path": "/v1/health", "port": launch.SERVER_PORT},
                           "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "volumeMounts": [mount, {"name": "agent", "mountPath": launch.AGENT_MOUNT}]}
    pod = {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 10,
           "nodeSelector": dict(node_selector), "containers": [container],
           "volumes": [volume, {"name": "agent", "emptyDir": {}}]}
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
    package: str = launch.DEFAULT_PACKAGE


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
    # a preempted or evicted pod flushed its work to the claim: replace it, uncounted
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": AGENT_CONTAINER,
                                             "operator": "In", "values": [EXIT_PREEMPTED]}}]}


def _pod_metadata(owner: Owner, role: str) -> dict:
    return {"labels": owner.labels(role), "annotations": owner.annotations()}


def _agent_pod(owner: Owner, spec: JobSpec) -> dict:
    mounts = [{"name": "work", "mountPath": launch.WORK_MOUNT},
              {"name": "agent", "mountPath": launch.AGENT_MOUNT}]
    volumes: list[dict] = [{"name": "work", "emptyDir": {}}, {"name": "agent", "emptyDir": {}}]
    if spec.claim is not None:
        volume, mount = _claim_volume(spec.claim)
        mounts.append(mount)
        volumes.append(volume)
    container = {"name": AGENT_CONTAINER, "image": spec.image, "command": launch.command(),
                 "args": launch.agent_args(spec.storage_url), "env": _agent_env(owner, spec),
                 "resources": spec.size.resources(spec.disk_size), "volumeMounts": mounts}
    pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 60,
           "nodeSelector": {**spec.node_selector, **spec.size.node_selector()},
           "containers": [container], "volumes": volumes}
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    else:
        pod["automountServiceAccountToken"] = False  # the agent needs no API access
    if spec.claim is not None and spec.claim.access_mode == "ReadWriteOnce":
        pod["affinity"] = _beside_storage_server(owner)
    return pod


def _agent_env(owner: Owner, spec: JobSpec) -> list[dict]:
    env: list[dict] = [{"name": "TPI_AGENT_PACKAGE", "value": spec.package}]
    for key in sorted(spec.environment_keys):
        ref = {"name": secret_name(owner.task_id), "key": key}
        env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _beside_storage_server(owner: Owner) -> dict:
    # a ReadWriteOnce claim is mounted by one node at a time: the storage server's
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": owner.selector(ROLE_STORAGE)},
        "topologyKey": "kubernetes.io/hostname"}]}}

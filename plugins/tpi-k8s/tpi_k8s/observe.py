"""What the cluster shows of a task: its Job, its pods, and events, normalised.

Events come from two places: the Events API (the Job controller's ``SuccessfulCreate``, the
scheduler's ``FailedScheduling``, the kubelet's ``Pulled``/``Killing``...), kept by the API
server for about an hour, and the pods' own status, which lasts as long as the pods (a pod
created, unschedulable, stuck pulling its image, exited). A pod whose agent failed (not
finished, not preempted) brings the tail of its log, which is where a bootstrap that could
not install the agent says why. Codes are kebab-case reasons (``successful-create``);
``unschedulable`` and ``quota-exceeded`` are named plainly.
"""

from __future__ import annotations

import re
import time

from tpi_core.backend import Observation
from tpi_core.model import Event, epoch_seconds
from tpi_k8s import manifests, resources
from tpi_k8s.client import K8sClient
from tpi_k8s.errors import QUOTA_MARKS

SOURCE = "k8s"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
LOG_LINES = 5
LOGGED_FAILURES = 3
"""At most this many failed pods have their log tail fetched per observation."""
STUCK = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
         "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
"""Waiting reasons of a container that will not start on its own."""


async def observation(c: K8sClient, namespace: str, task_id: str) -> Observation:
    """Pods running, pods wanted, and every event about the Job and its pods."""
    job = await resources.read(c, namespace, "jobs", task_id)
    if job is None:
        return Observation(False)
    labels = {manifests.LABEL_TASK: task_id, manifests.LABEL_ROLE: manifests.ROLE_AGENT}
    pods = await resources.labelled(c, namespace, "pods", labels)
    found = [api_event(e, task_id) for e in await resources.events(c, namespace)
             if _about(e, task_id)]
    found += job_events(job)
    for pod in pods:
        found += pod_events(pod)
    found += await failure_logs(c, namespace, pods)
    running = sum(1 for p in pods if _phase(p) == "Running"
                  and not p["metadata"].get("deletionTimestamp"))
    failed = {i: why for i, (why, _) in (await start_failures(c, namespace, pods)).items()}
    if _condition(job, "Failed"):  # the Job gave up: its replicas run no more
        why = next((e.message for e in job_events(job) if e.code == "job-failed"), "")
        for index in range(int((job.get("spec") or {}).get("completions") or 0)):
            failed.setdefault(index, why)
    return Observation(True, running, desired(job), tuple(sorted(found, key=lambda e: e.time)),
                       failed=failed, waiting=waiting(pods))


def latest(pods: list[dict]) -> dict[int, dict]:
    """The newest pod of each replica."""
    newest: dict[int, dict] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        if (index := replica_of(pod)) is not None:
            newest[index] = pod
    return newest


def _containers(pod: dict) -> list[dict]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _whose(container: dict, pod: dict) -> str:
    images = {c["name"]: c.get("image", "") for c in [
        *(pod.get("spec") or {}).get("initContainers", []),
        *(pod.get("spec") or {}).get("containers", [])]}
    name = container.get("name", "")
    who = "the task's container" if name == manifests.TASK_CONTAINER else f"container {name}"
    image = container.get("image") or images.get(name, "")
    return f"{who} (image {image})" if image else who


def waiting(pods: list[dict]) -> dict[int, str]:
    """Why each replica's newest pod does not run: a container stuck (its image cannot be
    pulled, its configuration is wrong) or no node for the pod."""
    found = {}
    for index, pod in latest(pods).items():
        for container in _containers(pod):
            state = (container.get("state") or {}).get("waiting") or {}
            if state.get("reason") in STUCK:
                found[index] = (f"{_whose(container, pod)}: {state['reason']}: "
                                f"{state.get('message', '')}").rstrip(": ")
                break
        else:
            for condition in (pod.get("status") or {}).get("conditions") or []:
                if condition.get("type") == "PodScheduled" and condition.get(
                        "status") == "False":
                    found[index] = f"unschedulable: {condition.get('message', '')}".rstrip(": ")
    return found


async def start_failures(c: K8sClient, namespace: str,
                         pods: list[dict]) -> dict[int, tuple[str, str]]:
    """Replicas whose newest pod's task container could not start (no shell in its image,
    a command that cannot run): why, with the container's own output, by replica."""
    found = {}
    for index, pod in latest(pods).items():
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") != manifests.TASK_CONTAINER or ended.get(
                    "exitCode") not in manifests.START_FAILURES:
                continue
            name = pod["metadata"]["name"]
            output = (await resources.pod_log(c, namespace, name, LOG_LINES,
                                              manifests.TASK_CONTAINER)).strip()
            why = (f"{_whose(container, pod)} could not start: {ended.get('reason', 'Error')} "
                   f"exit code {ended['exitCode']}")
            if ended.get("message"):
                why += f": {ended['message'].strip()}"
            if output:
                why += f"; its output: {' | '.join(output.splitlines())}"
            found[index] = (why, name)
    return found


def desired(job: dict) -> int:
    """Pods the Job wants: none when suspended (``tpi stop``) or failed for good."""
    spec = job.get("spec") or {}
    if spec.get("suspend") or _condition(job, "Failed"):
        return 0
    return int(spec.get("parallelism") or 0)


def replica_of(pod: dict) -> int | None:
    """The replica (completion index) a pod runs."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_KEY) or (
        meta.get("labels") or {}).get(INDEX_KEY)
    return int(value) if str(value).isdigit() else None


def code_of(reason: str, message: str = "") -> str:
    """``SuccessfulCreate`` -> ``successful-create``; scheduling and quota failures plainly."""
    if reason == "FailedScheduling":
        return "unschedulable"
    if reason == "FailedCreate" and any(m in message.lower() for m in QUOTA_MARKS):
        return "quota-exceeded"
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", reason or "event").lower()


def _about(doc: dict, task_id: str) -> bool:
    # the Job, its pods (named <job>-<index>-<suffix>, also once deleted), the storage server
    name = (doc.get("involvedObject") or {}).get("name", "")
    return name == task_id or name.startswith(task_id + "-")


def pod_replica(name: str, task_id: str) -> int | None:
    """The replica of a Job pod from its name (``<job>-<index>-<suffix>``)."""
    found = re.fullmatch(rf"{re.escape(task_id)}-(\d+)-[a-z0-9]+", name)
    return int(found.group(1)) if found else None


def api_event(doc: dict, task_id: str) -> Event:
    """An Events API object as a tpi event."""
    involved = doc.get("involvedObject") or {}
    name, reason, message = involved.get("name", ""), doc.get("reason", ""), doc.get("message", "")
    when = doc.get("lastTimestamp") or doc.get("eventTime") or doc.get("firstTimestamp") or (
        doc.get("metadata") or {}).get("creationTimestamp")
    count = f" (x{doc['count']})" if (doc.get("count") or 1) > 1 else ""
    return Event(epoch_seconds(when), code_of(reason, message),
                 f"{str(involved.get('kind', '')).lower()}/{name}: {message}{count}",
                 pod_replica(name, task_id), SOURCE)


def job_events(job: dict) -> list[Event]:
    """The Job's final conditions (``Complete``, ``Failed: DeadlineExceeded``...)."""
    found = []
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            reason = condition.get("reason") or condition["type"]
            found.append(Event(epoch_seconds(condition.get("lastTransitionTime")),
                               f"job-{code_of(condition['type'])}",
                               f"job/{job['metadata']['name']}: {reason}: "
                               f"{condition.get('message', '')}".rstrip(": "), None, SOURCE))
    return found


def pod_events(pod: dict) -> list[Event]:
    """A pod's life from its status: created, unschedulable, stuck, exited."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name, replica = meta.get("name", ""), replica_of(pod)
    found = [Event(epoch_seconds(meta.get("creationTimestamp")), "pod-created", f"pod/{name}",
                   replica, SOURCE)]
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            found.append(Event(epoch_seconds(condition.get("lastTransitionTime")), "unschedulable",
                               f"pod/{name}: {condition.get('message', '')}", replica, SOURCE))
    if status.get("reason") in ("Evicted", "Preempting", "OutOfmemory", "OutOfcpu"):
        found.append(Event(time.time(), code_of(status["reason"]),
                           f"pod/{name}: {status.get('message', '')}", replica, SOURCE))
    for container in _containers(pod):
        state = container.get("state") or {}
        waiting, ended = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason") in STUCK:
            found.append(Event(time.time(), code_of(waiting["reason"]),
                               f"pod/{name}: {waiting.get('message', '')}", replica, SOURCE))
        if ended and not (container.get("name") == manifests.AGENT_CONTAINER and ended.get(
                "exitCode") in (0, 137, manifests.EXIT_PREEMPTED)):  # a sidecar's usual end
            found.append(Event(epoch_seconds(ended.get("finishedAt")), _exit_code(ended),
                               f"pod/{name}: {ended.get('reason', '')} exit code "
                               f"{ended.get('exitCode')}".replace(":  ", ": "), replica, SOURCE))
    return found


def _exit_code(ended: dict) -> str:
    code = ended.get("exitCode")
    if code == 0:
        return "pod-succeeded"
    return "pod-preempted" if code == manifests.EXIT_PREEMPTED else "pod-failed"


async def failure_logs(c: K8sClient, namespace: str, pods: list[dict]) -> list[Event]:
    """The log tails of the latest pods whose agent failed."""
    failed = [p for p in pods if _agent_failed(p)]
    failed.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
    found = []
    for pod in failed[:LOGGED_FAILURES]:
        name = pod["metadata"]["name"]
        tail = (await resources.pod_log(c, namespace, name, LOG_LINES)).strip()
        if tail:
            found.append(Event(time.time(), "pod-log", f"pod/{name}: {tail}", replica_of(pod),
                               SOURCE))
    return found


def _agent_failed(pod: dict) -> bool:
    for container in _containers(pod):
        ended = (container.get("state") or {}).get("terminated")
        if (container.get("name") == manifests.AGENT_CONTAINER and ended
                and ended.get("exitCode") not in (0, manifests.EXIT_PREEMPTED, 137)):
            return True
    return False


def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase", "")


def _condition(job: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])

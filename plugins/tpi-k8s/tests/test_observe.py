"""Job, pods and events, normalised like the other backends' events."""

from __future__ import annotations

from tpi_k8s import observe

TASK_ID = "tpi-train-abcdefgh-12345678"


def test_codes_are_kebab_case_reasons_with_plain_names_for_trouble():
    assert observe.code_of("SuccessfulCreate") == "successful-create"
    assert observe.code_of("BackoffLimitExceeded") == "backoff-limit-exceeded"
    assert observe.code_of("FailedScheduling", "0/3 nodes are available") == "unschedulable"
    assert observe.code_of("FailedCreate", 'pods "x" is forbidden: exceeded quota: q, '
                           "requested: cpu=8") == "quota-exceeded"
    assert observe.code_of("FailedCreate", "something else") == "failed-create"


def test_api_events_name_the_object_and_the_replica():
    doc = {"involvedObject": {"kind": "Pod", "name": f"{TASK_ID}-2-x7k2p"},
           "reason": "FailedScheduling", "count": 4,
           "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
           "lastTimestamp": "2026-01-02T03:04:05Z"}
    event = observe.api_event(doc, TASK_ID)
    assert (event.code, event.replica, event.source) == ("unschedulable", 2, "k8s")
    assert event.message == (f"pod/{TASK_ID}-2-x7k2p: 0/3 nodes are available: "
                             "3 Insufficient nvidia.com/gpu. (x4)")
    assert event.time == 1767323045.0
    job = observe.api_event({"involvedObject": {"kind": "Job", "name": TASK_ID},
                             "reason": "SuccessfulCreate", "message": "Created pod: p"}, TASK_ID)
    assert job.replica is None and job.message == f"job/{TASK_ID}: Created pod: p"
    server = observe.pod_replica(f"{TASK_ID}-storage-5d8f7c9b4-x2x9z", TASK_ID)
    assert server is None


def pod(status: dict, index: str = "1") -> dict:
    return {"metadata": {"name": f"{TASK_ID}-{index}-abcde",
                         "creationTimestamp": "2026-01-02T03:04:05Z",
                         "annotations": {observe.INDEX_KEY: index}}, "status": status}


def test_pod_status_becomes_events():
    unschedulable = pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 Insufficient cpu."}]})
    codes = [(e.code, e.replica) for e in observe.pod_events(unschedulable)]
    assert codes == [("pod-created", 1), ("unschedulable", 1)]
    stuck = pod({"phase": "Pending", "containerStatuses": [{"name": "agent", "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}}]})
    assert observe.pod_events(stuck)[-1].code == "image-pull-back-off"
    for code, expected in ((0, "pod-succeeded"), (143, "pod-preempted"), (1, "pod-failed")):
        ended = pod({"phase": "Failed", "containerStatuses": [{"name": "task", "state": {
            "terminated": {"exitCode": code, "reason": "Error",
                           "finishedAt": "2026-01-02T03:05:00Z"}}}]})
        event = observe.pod_events(ended)[-1]
        assert event.code == expected and f"exit code {code}" in event.message
    # the agent sidecar's usual end (stopped with its pod) is no event of the task's; its
    # failure is
    sidecar = pod({"phase": "Succeeded", "initContainerStatuses": [{"name": "agent", "state": {
        "terminated": {"exitCode": 143, "finishedAt": "2026-01-02T03:05:00Z"}}}]})
    assert [e.code for e in observe.pod_events(sidecar)] == ["pod-created"]
    broken = pod({"phase": "Running", "initContainerStatuses": [{"name": "agent", "state": {
        "terminated": {"exitCode": 1, "finishedAt": "2026-01-02T03:05:00Z"}}}]})
    assert observe.pod_events(broken)[-1].code == "pod-failed"
    evicted = pod({"phase": "Failed", "reason": "Evicted",
                   "message": "The node was low on resource: memory."})
    assert ("evicted", 1) in [(e.code, e.replica) for e in observe.pod_events(evicted)]


def test_why_replicas_are_not_running():
    stuck = pod({"phase": "Pending", "containerStatuses": [{"name": "task", "image": "me/x:1",
                 "state": {"waiting": {"reason": "ImagePullBackOff",
                                       "message": "pull access denied"}}}]}, "0")
    agent_stuck = pod({"phase": "Pending", "initContainerStatuses": [{"name": "agent", "state": {
        "waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}, "1")
    unschedulable = pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "message": "0/2 nodes are available"}]}, "2")
    running = pod({"phase": "Running", "containerStatuses": [{"name": "task", "state": {
        "running": {}}}]}, "3")
    assert observe.waiting([stuck, agent_stuck, unschedulable, running]) == {
        0: "the task's container (image me/x:1): ImagePullBackOff: pull access denied",
        1: "container agent: ErrImagePull: not found",
        2: "unschedulable: 0/2 nodes are available"}
    newer = pod({"phase": "Running"}, "0")
    newer["metadata"]["creationTimestamp"] = "2026-01-02T04:00:00Z"
    assert 0 not in observe.waiting([stuck, newer])  # the newest pod of a replica counts


def test_desired_pods():
    job = {"spec": {"parallelism": 3}, "status": {}}
    assert observe.desired(job) == 3
    assert observe.desired({"spec": {"parallelism": 3, "suspend": True}}) == 0
    failed = {"spec": {"parallelism": 3}, "metadata": {"name": TASK_ID}, "status": {
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline"}]}}
    assert observe.desired(failed) == 0
    (event,) = observe.job_events(failed)
    assert event.code == "job-failed" and "DeadlineExceeded" in event.message

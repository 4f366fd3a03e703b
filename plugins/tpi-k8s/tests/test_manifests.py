"""Spec building: the Job, the claim, the storage server, the Secrets (no request made)."""

from __future__ import annotations

import base64
import json

import pytest

from tpi_k8s import launch, machines, manifests

TASK_ID = "tpi-train-abcdefgh-12345678"
SECRET = "value-that-must-never-leave"
NOW = 1_800_000_000.0
OWNER = manifests.Owner(TASK_ID, "train", "pool=gpu", "", {"project": "x", "team": "ml ops",
                                                            manifests.LABEL_TASK: "spoofed"})
CLAIM = manifests.Claim(TASK_ID, TASK_ID, True, "ReadWriteOnce", 5, "fast")


BUNDLE = launch.bundle_name("0123456789abcdef" * 4)


def job(**changes) -> dict:
    spec = {"parallelism": 3, "image": "ubuntu:24.04", "size": machines.size("m+t4"),
            "storage_url": f"file://{launch.STORAGE_MOUNT}", "deadline": NOW + 3600,
            "environment_keys": ["TOKEN", "A_KEY"], "claim": CLAIM, "disk_size": 20,
            "node_selector": {"pool": "gpu"}, "bundle": BUNDLE, **changes}
    return manifests.job(OWNER, manifests.JobSpec(**spec), NOW)


def containers(body: dict) -> tuple[dict, dict]:
    """The agent (a native sidecar, or the second container) and the user's container."""
    pod = body["spec"]["template"]["spec"]
    if pod.get("initContainers"):
        (agent,), (user,) = pod["initContainers"], pod["containers"]
    else:
        user, agent = pod["containers"]
    return agent, user


def test_an_indexed_job_with_one_completion_per_replica():
    spec = job()["spec"]
    assert (spec["parallelism"], spec["completions"], spec["completionMode"]) == (3, 3, "Indexed")
    assert spec["backoffLimit"] == 3 * manifests.BACKOFF_PER_REPLICA
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_script_runs_in_the_users_image_with_no_python():
    agent, user = containers(job())
    assert user["name"] == manifests.TASK_CONTAINER and user["image"] == "ubuntu:24.04"
    # the wrapper is the command (the image's entrypoint is overridden): /bin/sh only
    assert user["command"][:2] == ["/bin/sh", "-c"] and "args" not in user
    assert "python" not in json.dumps(user["command"])
    assert user["workingDir"] == launch.WORK_MOUNT
    assert [m["mountPath"] for m in user["volumeMounts"]] == [launch.WORK_MOUNT,
                                                             launch.RUN_MOUNT]


def test_the_agent_is_a_native_sidecar_in_the_pinned_agent_image():
    agent, user = containers(job())
    assert agent["restartPolicy"] == "Always"
    assert agent["image"] == launch.AGENT_IMAGE == "python:3.12.8-slim-bookworm"
    assert agent["command"] == launch.command()
    assert agent["args"] == ["-m", "tpi_core.agent", "--storage", "file:///tpi/storage",
                             "--workdir", "/tpi/work", "--hooks", "tpi_k8s.agent:K8sHooks",
                             "--companion", "/tpi/run", "--linger"]
    bundle = {"name": "bundle", "configMap": {"name": BUNDLE}}
    assert bundle in job()["spec"]["template"]["spec"]["volumes"]
    assert {"name": "bundle", "mountPath": "/tpi/bundle", "readOnly": True} in (
        agent["volumeMounts"])


def test_before_native_sidecars_the_agent_is_the_second_container():
    body = job(sidecar=False)
    pod = body["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    agent, user = containers(body)
    assert (user["name"], agent["name"]) == ("task", "agent")
    assert "restartPolicy" not in agent and "--linger" not in agent["args"]


def test_a_prepared_or_mirrored_agent_image_is_used_as_given(monkeypatch):
    monkeypatch.setenv(launch.AGENT_IMAGE_ENV, "registry.local/tpi-agent:0.1.0")
    assert launch.agent_image() == "registry.local/tpi-agent:0.1.0"
    agent, _ = containers(job(agent_image=launch.agent_image(), from_index=True))
    assert agent["image"] == "registry.local/tpi-agent:0.1.0"
    assert {"name": "TPI_AGENT_INDEX", "value": "1"} in agent["env"]


def test_preemptions_and_evictions_do_not_count_a_shell_less_image_fails_at_once():
    rules = job()["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": "task", "operator": "In",
                                             "values": [143]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "task", "operator": "In",
                                              "values": [126, 127, 128]}}]


@pytest.mark.parametrize(("deadline", "expected"), [
    (NOW + 3600, 3600 + manifests.DEADLINE_GRACE),
    (NOW + 0.2, 1 + manifests.DEADLINE_GRACE),
    (NOW - 50, 1 + manifests.DEADLINE_GRACE),  # past: the agents time out at once
])
def test_the_deadline_is_absolute(deadline, expected):
    assert job(deadline=deadline)["spec"]["activeDeadlineSeconds"] == expected


def test_resources_selectors_and_volumes():
    pod = job()["spec"]["template"]["spec"]
    agent, user = containers(job())
    # the task's size and GPUs are the user's container's; the agent asks for little
    assert user["resources"]["requests"] == {"cpu": "4", "memory": "16000M",
                                             "nvidia.com/gpu": "1"}
    assert user["resources"]["limits"]["ephemeral-storage"] == "20G"
    assert agent["resources"] == manifests.AGENT_RESOURCES
    assert "nvidia.com/gpu" not in json.dumps(agent)
    assert pod["nodeSelector"] == {"pool": "gpu"}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/tpi/storage"] == {"name": "storage", "mountPath": "/tpi/storage",
                                      "subPath": TASK_ID}
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": TASK_ID}} in pod["volumes"]
    # ReadWriteOnce: the pods go where the storage server has the claim mounted
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"]["matchLabels"] == {manifests.LABEL_TASK: TASK_ID,
                                                    manifests.LABEL_ROLE: "storage"}
    shared = manifests.Claim(TASK_ID, TASK_ID, True, "ReadWriteMany")
    assert "affinity" not in job(claim=shared)["spec"]["template"]["spec"]


def test_a_bucket_task_mounts_no_claim():
    pod = job(claim=None, storage_url="s3://bucket/tpi-x")["spec"]["template"]["spec"]
    agent, _ = containers(job(claim=None, storage_url="s3://bucket/tpi-x"))
    assert "s3://bucket/tpi-x" in agent["args"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert "affinity" not in pod


def test_environment_values_are_only_in_the_secret():
    body = job()
    agent, user = containers(body)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in user["env"] if "valueFrom" in e}
    assert refs == {"A_KEY": {"name": TASK_ID, "key": "A_KEY"},
                    "TOKEN": {"name": TASK_ID, "key": "TOKEN"}}
    assert [e for e in user["env"] if "value" in e] == [{"name": "TPI_RUN",
                                                        "value": "/tpi/run"}]
    assert "secretKeyRef" not in json.dumps(agent)  # the agent needs no value
    secret = manifests.environment_secret(OWNER, {"TOKEN": SECRET, "A_KEY": ""})
    assert base64.b64decode(secret["data"]["TOKEN"]).decode() == SECRET
    assert secret["data"]["A_KEY"] == ""
    server = manifests.storage_server(OWNER, CLAIM, "img", BUNDLE, {})
    bundle = manifests.bundle_config_map(BUNDLE, {"a.whl": b"wheel"})
    for doc in (body, server, manifests.claim(OWNER, CLAIM), bundle):
        assert SECRET not in json.dumps(doc)


def test_the_bundle_config_map_is_immutable_and_shared():
    body = manifests.bundle_config_map(BUNDLE, {"tpi-0.1.0-py3-none-any.whl": b"PK\x03\x04",
                                                "requirements.txt": b"anyio==4\n"})
    assert body["immutable"] is True and body["metadata"]["name"] == BUNDLE
    assert manifests.LABEL_TASK not in body["metadata"]["labels"]
    assert base64.b64decode(body["binaryData"]["tpi-0.1.0-py3-none-any.whl"]) == b"PK\x03\x04"


def test_service_account_or_no_api_token():
    pod = job()["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    pod = job(service_account="trainer")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer" and "automountServiceAccountToken" not in pod


def test_labels_and_annotations():
    meta = job()["metadata"]
    assert meta["name"] == TASK_ID
    assert meta["labels"] == {"project": "x", manifests.LABEL_TASK: TASK_ID,
                              manifests.LABEL_MANAGED: "true"}  # tpi's own labels win
    assert meta["annotations"]["team"] == "ml ops"
    assert meta["annotations"][manifests.ANNOTATION_NAME] == "train"
    assert meta["annotations"][manifests.ANNOTATION_REGION] == "pool=gpu"
    pod_labels = job()["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[manifests.LABEL_ROLE] == "agent"


def test_claim_and_storage_server():
    body = manifests.claim(OWNER, CLAIM)
    assert body["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                            "resources": {"requests": {"storage": "5Gi"}}}
    server = manifests.storage_server(OWNER, CLAIM, "img", BUNDLE, {"pool": "gpu"})
    assert server["metadata"]["name"] == f"{TASK_ID}-storage"
    pod = server["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "img" and container["command"] == launch.command()
    assert container["args"] == ["-m", "tpi_k8s.server", "--root", "/tpi/storage",
                                 "--port", "8080"]
    assert {"name": "bundle", "configMap": {"name": BUNDLE}} in pod["volumes"]
    token = next(e for e in container["env"] if e["name"] == manifests.TOKEN_ENV)
    assert token["valueFrom"]["secretKeyRef"] == {"name": f"{TASK_ID}-storage", "key": "token"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/health", "port": 8080}
    assert pod["automountServiceAccountToken"] is False and pod["nodeSelector"] == {"pool": "gpu"}
    assert server["spec"]["strategy"] == {"type": "Recreate"}  # one pod mounts the claim
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["selector"]["matchLabels"].items() <= labels.items()

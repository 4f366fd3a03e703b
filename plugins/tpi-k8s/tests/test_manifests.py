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


def job(**changes) -> dict:
    spec = {"parallelism": 3, "image": "ubuntu:24.04", "size": machines.size("m+t4"),
            "storage_url": f"file://{launch.STORAGE_MOUNT}", "deadline": NOW + 3600,
            "environment_keys": ["TOKEN", "A_KEY"], "claim": CLAIM, "disk_size": 20,
            "node_selector": {"pool": "gpu"}, **changes}
    return manifests.job(OWNER, manifests.JobSpec(**spec), NOW)


def test_an_indexed_job_with_one_completion_per_replica():
    spec = job()["spec"]
    assert (spec["parallelism"], spec["completions"], spec["completionMode"]) == (3, 3, "Indexed")
    assert spec["backoffLimit"] == 3 * manifests.BACKOFF_PER_REPLICA
    assert spec["podReplacementPolicy"] == "Failed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == launch.command()
    assert container["args"] == ["-m", "tpi_core.agent", "--storage", "file:///tpi/storage",
                                 "--workdir", "/tpi/work", "--hooks", "tpi_k8s.agent:K8sHooks"]


def test_preemptions_and_evictions_do_not_count_as_failures():
    rules = job()["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    codes = next(r["onExitCodes"] for r in rules if "onExitCodes" in r)
    assert codes == {"containerName": "agent", "operator": "In", "values": [143]}


@pytest.mark.parametrize(("deadline", "expected"), [
    (NOW + 3600, 3600 + manifests.DEADLINE_GRACE),
    (NOW + 0.2, 1 + manifests.DEADLINE_GRACE),
    (NOW - 50, 1 + manifests.DEADLINE_GRACE),  # past: the agents time out at once
])
def test_the_deadline_is_absolute(deadline, expected):
    assert job(deadline=deadline)["spec"]["activeDeadlineSeconds"] == expected


def test_resources_selectors_and_volumes():
    pod = job()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16000M",
                                                  "nvidia.com/gpu": "1"}
    assert container["resources"]["limits"]["ephemeral-storage"] == "20G"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
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
    (container,) = pod["containers"]
    assert "s3://bucket/tpi-x" in container["args"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert "affinity" not in pod


def test_environment_values_are_only_in_the_secret():
    body = job()
    env = body["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {"A_KEY": {"name": TASK_ID, "key": "A_KEY"},
                    "TOKEN": {"name": TASK_ID, "key": "TOKEN"}}
    assert [e for e in env if "value" in e] == [{"name": "TPI_AGENT_PACKAGE",
                                                 "value": "tpi[k8s]"}]
    secret = manifests.environment_secret(OWNER, {"TOKEN": SECRET, "A_KEY": ""})
    assert base64.b64decode(secret["data"]["TOKEN"]).decode() == SECRET
    assert secret["data"]["A_KEY"] == ""
    server = manifests.storage_server(OWNER, CLAIM, "img", "tpi[k8s]", {})
    for doc in (body, server, manifests.claim(OWNER, CLAIM)):
        assert SECRET not in json.dumps(doc)


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
    server = manifests.storage_server(OWNER, CLAIM, "img", "tpi[k8s]", {"pool": "gpu"})
    assert server["metadata"]["name"] == f"{TASK_ID}-storage"
    pod = server["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["-m", "tpi_k8s.server", "--root", "/tpi/storage",
                                 "--port", "8080"]
    token = next(e for e in container["env"] if e["name"] == manifests.TOKEN_ENV)
    assert token["valueFrom"]["secretKeyRef"] == {"name": f"{TASK_ID}-storage", "key": "token"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/health", "port": 8080}
    assert pod["automountServiceAccountToken"] is False and pod["nodeSelector"] == {"pool": "gpu"}
    assert server["spec"]["strategy"] == {"type": "Recreate"}  # one pod mounts the claim
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert server["spec"]["selector"]["matchLabels"].items() <= labels.items()

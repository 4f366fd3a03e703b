"""Whole tasks on the emulated API server through the CLI, each container run as its image
would run it: the user's script in an image with a shell and coreutils only (no Python, no
bash), the agent in the agent image's stand-in, which installs the bundle from its ConfigMap.

kmock holds the objects, :mod:`.fakes` is the API front (selectors, pod proxy, logs) and
:mod:`.harness` plays the Job and Deployment controllers and the kubelet, which runs the real
storage server and the real agent and wrapper for every pod. The script counts epochs per
replica into results/ and resumes from there, so a replacement that starts from the claim is
visible. Replica 0 is the slow one, and loses its first pod mid-run.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from tpi_k8s import launch, manifests

from tpi_core.testing.contract import BackendContract

from .conftest import NAMESPACE, NO_SHELL, UNPULLABLE, agent_env, objects
from .harness import FakeCluster, fake_cluster

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(600)]

SECRET = "e2e-k8s-secret-value-0451"
TASKS = f'''
[task.train]
cloud = "kubernetes"
image = "nvidia"
machine = "1-512+nvidia*1"
region = "pool=batch"
parallelism = 2
timeout = "10m"
tags = {{ project = "e2e", team = "ml ops" }}
script = """#!/bin/sh
mkdir -p results
f=results/epoch-$TPI_REPLICA_INDEX.txt
epoch=$(cat $f 2>/dev/null || echo 0)
echo "replica $TPI_REPLICA_INDEX resuming at $epoch, attempt $TPI_ATTEMPT, token ${{TOKEN:+present}}"
pause=0.15
[ "$TPI_REPLICA_INDEX" = 0 ] && pause=0.5
while [ "$epoch" -lt 10 ]; do
  echo "epoch $epoch"
  epoch=$((epoch + 1))
  echo "$epoch" > $f
  sleep $pause
done
if command -v python3 || command -v python || command -v bash; then echo "not bare"; fi
echo scratch > scratch.txt
echo done
"""

[task.train.environment]
TOKEN = "{SECRET}"

[task.train.storage]
workdir = "."
output = "results"
'''


async def tpi(workdir: Path, *args: str, check: bool = True):
    env = {**os.environ, "TPI_POLL_INTERVAL": "0.3"}
    run = await anyio.run_process([sys.executable, "-m", "tpi_core", *args], cwd=workdir,
                                  env=env, check=False)
    if check and run.returncode != 0:
        raise AssertionError(f"tpi {' '.join(args)} exited {run.returncode}:\n"
                             f"{run.stderr.decode()}")
    return run


async def wait_for(predicate, what: str, cluster: FakeCluster, timeout: float = 60):
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if value := predicate():
            return value
        await anyio.sleep(0.1)
    logs = {f"{run.pod}/{c.name}": c.log.read_text(errors="replace")[-1500:]
            for run in cluster.pods.values() for c in run.containers}
    raise AssertionError(f"timed out waiting for {what}; harness errors: {cluster.errors}; "
                         f"container logs: {logs}")


async def test_a_shell_only_gpu_image_runs_resumes_and_is_destroyed(
        api, kmock_url, kubeconfig, tmp_path, stand_ins):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(TASKS)
    (workdir / "input.txt").write_text("data\n")
    async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                            *stand_ins) as cluster:
        await tpi(workdir, "apply", "tasks.toml")
        task_id = json.loads((await tpi(workdir, "status", "--json")).stdout)[0]["task_id"]
        await _check_objects(kmock_url, task_id)
        storage = cluster.claim_dir(NAMESPACE, task_id) / task_id
        assert (storage / "data" / "input.txt").read_text() == "data\n"  # uploaded

        log0 = storage / "reports" / "replica-0" / "boot-0001.log"
        await wait_for(lambda: _final(storage, 1) and log0.exists()
                       and "epoch 2" in log0.read_text(), "replica 1 done, replica 0 at 2",
                       cluster)
        first = next(n for n in cluster.created if n.startswith(f"{task_id}-0-"))
        said = (await tpi(workdir, "debug", "preempt", "train", "--replica", "0")).stderr
        assert f"deleted pod {first}" in said.decode()  # as an eviction does
        await wait_for(lambda: [n for n in cluster.created if n.startswith(f"{task_id}-0-")
                                and n != first], "a replacement pod", cluster)
        await wait_for(lambda: all(_final(storage, i) for i in (0, 1)), "both replicas",
                       cluster)

        done = json.loads((await tpi(workdir, "status", "--json")).stdout)[0]
        assert done["state"] == "succeeded", (done, cluster.errors)
        assert done["recoveries"] == 1 and done["counts"]["succeeded"] == 2, (done["replicas"], done["events"][-12:])
        cloud = [(e["code"], e["replica"], e["message"].split(":")[0])
                 for e in done["events"] if e["source"] == "k8s"]
        created = [c for c in cloud if c[0] == "successful-create" and c[2] == f"job/{task_id}"]
        assert len(created) == 3  # two pods, then the replacement
        assert ("killing", 0, f"pod/{first}") in cloud  # the deleted pod's events stay
        assert ("pod-succeeded", 1) in [c[:2] for c in cloud]
        assert "job-complete" in [c[0] for c in cloud]
        text = (await tpi(workdir, "logs")).stdout.decode()
        assert "train[0.1] " in text and "train[0.2] " in text and "train[1.1] " in text
        assert "replica 0 resuming at 0, attempt 1, token present" in text
        resumed = [line for line in text.splitlines() if "replica 0 resuming" in line][1]
        assert "attempt 2" in resumed and "resuming at 0," not in resumed, text
        assert text.count("epoch 0\n") == 2 and SECRET not in text  # once per replica
        assert "not bare" not in text  # the script ran where no Python or bash is
        again = (await tpi(workdir, "apply", "tasks.toml")).stderr.decode()
        assert "unchanged" in again
        assert not cluster.errors
        # the agent image installed the bundle it was given, not the test's interpreter
        for run in cluster.pods.values():
            site = list((cluster.root / "pods" / run.uid / "volumes" / "agent" / "site")
                        .glob("tpi_core/__init__.py"))
            assert site or not run.pod.startswith(task_id), run.pod

        await tpi(workdir, "destroy", "--yes")
        assert (workdir / "results" / "epoch-0.txt").read_text() == "10\n"
        assert (workdir / "results" / "epoch-1.txt").read_text() == "10\n"
        assert not (workdir / "scratch.txt").exists()  # only `output` comes back
        await wait_for(lambda: not cluster.claim_dir(NAMESPACE, task_id).exists(),
                       "the claim's volume to go", cluster, timeout=10)
        for path in ("/api/v1/pods", "/api/v1/secrets", "/api/v1/persistentvolumeclaims",
                     "/apis/apps/v1/deployments", "/apis/batch/v1/jobs"):
            left = [o["metadata"]["name"] for o in await objects(kmock_url, path)
                    if (o["metadata"].get("labels") or {}).get(manifests.LABEL_TASK)]
            assert left == [], path
        gone = json.loads((await tpi(workdir, "status", "--json")).stdout)[0]
        assert gone["state"] == "destroyed"


async def test_an_image_without_a_shell_fails_the_replica_with_the_reason(
        api, kmock_url, kubeconfig, tmp_path, stand_ins):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(
        f'[task.broken]\ncloud = "kubernetes"\nimage = "{NO_SHELL}"\nmachine = "1-512"\n'
        'timeout = "10m"\nscript = "echo never"\n')
    async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                            *stand_ins) as cluster:
        await tpi(workdir, "apply", "tasks.toml")

        async def failed() -> dict | None:
            found = json.loads((await tpi(workdir, "status", "--json")).stdout)[0]
            return found if found["state"] == "failed" else None

        limit, done = time.monotonic() + 60, None
        while done is None and time.monotonic() < limit:
            done = await failed()
            await anyio.sleep(0.3)
        assert done is not None, cluster.errors
        (replica,) = done["replicas"]
        assert replica["state"] == "failed"
        assert "could not start" in replica["reason"] and "/bin/sh" in replica["reason"]
        assert NO_SHELL in replica["reason"]
        table = (await tpi(workdir, "status")).stdout.decode()
        assert "could not start" in table and "StartError" in table
        logs = await tpi(workdir, "logs")
        said = logs.stdout.decode() + logs.stderr.decode()
        assert "could not start" in said and "no such file" in said
        # the Job failed at the first pod: a broken image is not retried
        assert len([n for n in cluster.created if n.startswith(f"{done['task_id']}-0-")]) == 1
        await tpi(workdir, "destroy", "--yes")


async def _status_until(workdir: Path, ready, what: str, cluster: FakeCluster) -> dict:
    limit = time.monotonic() + 60
    while time.monotonic() < limit:
        found = json.loads((await tpi(workdir, "status", "--json")).stdout)[0]
        if ready(found):
            return found
        await anyio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {found}; {cluster.errors}")


def _short_task(workdir: Path, name: str, image: str = "ubuntu") -> None:
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(
        f'[task.{name}]\ncloud = "kubernetes"\nimage = "{image}"\nmachine = "1-512"\n'
        'timeout = "10m"\nscript = "mkdir -p results; echo ran > results/out.txt"\n'
        f'[task.{name}.storage]\nworkdir = "."\noutput = "results"\n')


async def test_an_image_that_cannot_be_pulled_is_named_in_status_and_logs(
        api, kmock_url, kubeconfig, tmp_path, stand_ins):
    workdir = tmp_path / "project"
    _short_task(workdir, "private", UNPULLABLE)
    async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                            *stand_ins) as cluster:
        await tpi(workdir, "apply", "tasks.toml")
        found = await _status_until(workdir, lambda s: "ImagePullBackOff" in s["reason"],
                                    "the pull failure in status", cluster)
        assert not found["state"] in ("succeeded", "failed")
        assert f'Back-off pulling image "{UNPULLABLE}"' in found["reason"]
        assert found["reason"].startswith("replica 0: the task's container")
        logs = await tpi(workdir, "logs")
        assert "ImagePullBackOff" in logs.stdout.decode() + logs.stderr.decode()
        await tpi(workdir, "destroy", "--yes")
        assert not cluster.errors


async def test_before_native_sidecars_the_agent_is_the_pods_second_container(
        api, kmock_url, kubeconfig, tmp_path, stand_ins):
    api.version = {"major": "1", "minor": "28+"}
    workdir = tmp_path / "project"
    _short_task(workdir, "older")
    async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                            *stand_ins) as cluster:
        await tpi(workdir, "apply", "tasks.toml")
        (job,) = await objects(kmock_url, "/apis/batch/v1/jobs")
        pod = job["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        assert [c["name"] for c in pod["containers"]] == ["task", "agent"]
        done = await _status_until(workdir, lambda s: s["state"] in ("succeeded", "failed"),
                                   "the task to end", cluster)
        assert done["state"] == "succeeded", done
        await tpi(workdir, "destroy", "--yes")
        assert (workdir / "results" / "out.txt").read_text() == "ran\n"
        assert not cluster.errors


def _final(storage: Path, index: int) -> bool:
    path = storage / "reports" / f"replica-{index}" / "status.json"
    return path.exists() and json.loads(path.read_text())["state"] == "succeeded"


async def _check_objects(kmock_url: str, task_id: str) -> None:
    found = {path.rsplit("/", 1)[1]: {o["metadata"]["name"]: o for o in await objects(
        kmock_url, path)} for path in ("/api/v1/secrets", "/api/v1/persistentvolumeclaims",
                                       "/apis/apps/v1/deployments", "/apis/batch/v1/jobs",
                                       "/api/v1/configmaps")}
    assert set(found["secrets"]) == {task_id, f"{task_id}-storage"}
    assert set(found["persistentvolumeclaims"]) == {task_id}
    assert set(found["deployments"]) == {f"{task_id}-storage"}
    (bundle,) = found["configmaps"].values()  # shared by the namespace's tasks: no task label
    assert manifests.LABEL_TASK not in bundle["metadata"]["labels"]
    job = found["jobs"][task_id]
    for kind in (found["secrets"], found["persistentvolumeclaims"], found["deployments"],
                 found["jobs"]):
        for obj in kind.values():
            labels, notes = obj["metadata"]["labels"], obj["metadata"]["annotations"]
            assert labels[manifests.LABEL_TASK] == task_id and labels["tpi.dev/managed"] == "true"
            assert labels["project"] == "e2e" and "team" not in labels  # "ml ops": no label
            assert notes["team"] == "ml ops" and notes["tpi.dev/name"] == "train"
    spec = job["spec"]
    assert (spec["parallelism"], spec["completions"], spec["completionMode"]) == (
        2, 2, "Indexed")
    assert 600 < spec["activeDeadlineSeconds"] <= 600 + manifests.DEADLINE_GRACE
    pod = spec["template"]["spec"]
    (agent,), (user,) = pod["initContainers"], pod["containers"]
    assert agent["image"] == launch.AGENT_IMAGE and agent["restartPolicy"] == "Always"
    assert agent["volumeMounts"][-1] == {"name": "storage", "mountPath": launch.STORAGE_MOUNT,
                                         "subPath": task_id}
    assert user["image"] == "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
    assert user["resources"]["limits"] == {"cpu": "1", "memory": "512M", "nvidia.com/gpu": "1"}
    assert "nvidia.com/gpu" not in json.dumps(agent)
    assert pod["nodeSelector"] == {"pool": "batch"}
    token = next(e for e in user["env"] if e["name"] == "TOKEN")
    assert token == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": task_id,
                                                                     "key": "TOKEN"}}}
    env_secret = found["secrets"][task_id]["data"]
    assert base64.b64decode(env_secret["TOKEN"]).decode() == SECRET
    for name, obj in [*found["jobs"].items(), *found["deployments"].items(),
                      *found["persistentvolumeclaims"].items(), *found["configmaps"].items()]:
        assert SECRET not in json.dumps(obj), name
    claim = found["persistentvolumeclaims"][task_id]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]  # two replicas share it


class TestK8sLifecycle(BackendContract):
    """The contract on the emulated API: :mod:`.harness` plays the controllers and kubelet."""

    CLOUD = "kubernetes"
    SETTINGS = 'machine = "1-512"'

    @pytest.fixture
    async def cloud(self, api, kmock_url, kubeconfig, tmp_path, stand_ins):
        async with fake_cluster(kmock_url, api, tmp_path / "cluster", agent_env(),
                                *stand_ins) as cluster:
            yield cluster

    async def storage_left(self, cloud, backend, ref):
        """The claim's volume (its storage server went with the task, so nothing to list)."""
        claim = cloud.claim_dir(NAMESPACE, ref.task_id)
        with anyio.move_on_after(10):
            while claim.exists():
                await anyio.sleep(0.1)
        return [str(claim)] if claim.exists() else []

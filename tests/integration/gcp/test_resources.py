"""The GCP backend's resources on the fakes: the Compute Engine, IAM and Secret Manager fake
(:mod:`.fake_gce`) and fake-gcs-server. Steps created twice and deleted twice, what they
hold (labels, the startup script without a secret, SPOT and the deadline, the grants), the
read-back, finding tasks with no index, a rehearsed preemption, and errors named."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from tpi_gcp import resources
from tpi_gcp.backend import GCPBackend
from tpi_gcp.rest import error_for

from tpi_core.backend import Launch, TaskRef
from tpi_core.boot.script import parse
from tpi_core.errors import PermissionDenied, QuotaExceeded, ResourceNotFound
from tpi_core.identifier import deterministic
from tpi_core.model import Secrets, StorageSpec, Task, frozen_map
from tpi_core.steps import delete_steps, run_steps

from .conftest import PROJECT

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "gcp-secret-value-0451"
TASK_ID = deterministic("train", seed="gcp-resources").long


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def task(**changes) -> Task:
    fields = {"environment": Secrets({"TOKEN": SECRET}),
              "tags": frozen_map({"Team": "ML ops", "project": "e2e"}), "machine": "m+t4",
              "region": "eu-west", "spot": 0, "parallelism": 2, **changes}
    return Task(name="train", cloud="gcp", script="#!/bin/sh\ntrue", id=TASK_ID,
                storage=StorageSpec(), **fields)


async def launch(backend: GCPBackend, t: Task) -> Launch:
    ref = TaskRef.of(t)
    storage = await backend.storage(ref, create=t)
    built = backend.agent_bundle(ref)
    url, _ = await backend.publish_agent(ref, built)
    return Launch(storage.url, time.time() + 3600, url, built.digest, built.wheels)


async def test_create_twice_delete_twice_leaves_nothing(gce):
    t = task()
    backend = GCPBackend()
    try:
        made = await launch(backend, t)
        await run_steps(backend.create_steps(t, made))
        await run_steps(backend.create_steps(t, made))  # a second apply: the same resources
        held = gce.resources()
        assert held["firewalls"] == [f"projects/{PROJECT}/global/firewalls/{TASK_ID}"]
        assert held["instanceTemplates"] == [
            f"projects/{PROJECT}/global/instanceTemplates/{TASK_ID}"]
        assert held["instanceGroupManagers"] == [
            f"projects/{PROJECT}/regions/europe-west1/instanceGroupManagers/{TASK_ID}"]
        assert len(held["instances"]) == 2
        assert held["secrets"] == [f"projects/{PROJECT}/secrets/{TASK_ID}-environment"]
        email = resources.account_email(PROJECT, TASK_ID)
        assert {b.split()[1] for b in held["bindings"]} == {
            "roles/storage.objectUser", "roles/storage.objectViewer",
            "roles/secretmanager.secretAccessor", "roles/compute.instanceAdmin.v1"}
        assert all(b.endswith(f"serviceAccount:{email}") for b in held["bindings"])

        g = await backend.apis()
        template = await g.call("GET", resources.compute(
            PROJECT, f"global/instanceTemplates/{TASK_ID}"))
        props = template["properties"]
        assert props["labels"] == {"team": "ml_ops", "project": "e2e", "tpi-task": TASK_ID,
                                   "tpi-managed": "true", "tpi-name": "train"}
        assert props["scheduling"]["provisioningModel"] == "SPOT"
        assert props["scheduling"]["onHostMaintenance"] == "TERMINATE"
        assert props["scheduling"]["instanceTerminationAction"] == "DELETE"
        # the deadline, enforced by GCE itself: the machines end then with no agent alive
        ends = datetime.fromisoformat(props["scheduling"]["terminationTime"])
        assert props["scheduling"]["terminationTime"].endswith("Z")
        assert abs(ends.timestamp() - made.deadline) < 1
        assert props["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4",
                                               "acceleratorCount": 1}]
        assert props["machineType"] == "n1-standard-4"
        assert props["serviceAccounts"][0]["email"] == email
        (script,) = [i["value"] for i in props["metadata"]["items"]
                     if i["key"] == "startup-script"]
        assert SECRET not in json.dumps(template) and "private_key" not in script
        config = parse(script)
        assert config["hooks"] == "tpi_gcp.agent:GcpHooks"
        assert config["environment"]["TPI_GCP_GROUP"] == TASK_ID
        firewall = await g.call("GET", resources.compute(PROJECT, f"global/firewalls/{TASK_ID}"))
        assert firewall["denied"] == [{"IPProtocol": "all"}] and "allowed" not in firewall
        assert firewall["targetTags"] == [TASK_ID] and firewall["priority"] < 65534
        assert await resources.get_environment(g, TASK_ID) == {"TOKEN": SECRET}

        seen = await backend.observe(TaskRef.of(t))
        assert (seen.exists, seen.machines, seen.desired) == (True, 2, 2)
        listed = await backend.find()
        mine = [r for r in listed if r.task_id == TASK_ID]
        assert len(mine) == 1, listed
        found = mine[0]
        assert (found.name, found.region) == ("train", "eu-west")  # as the task says

        await backend.set_capacity(TaskRef.of(t), 0)
        assert (await backend.observe(TaskRef.of(t))).desired == 0
        await backend.set_capacity(TaskRef.of(t), 2)

        await delete_steps(backend.delete_steps(TaskRef.of(t)))
        await delete_steps(backend.delete_steps(TaskRef.of(t)))
        assert gce.resources() == {}
        assert not (await backend.observe(TaskRef.of(t))).exists
    finally:
        await backend.aclose()


async def test_a_rehearsed_preemption_deletes_one_instance_and_the_group_recreates_it(gce):
    t = task(environment=Secrets({}))
    backend = GCPBackend()
    try:
        await run_steps(backend.create_steps(t, await launch(backend, t)))
        g = await backend.apis()
        before = {i["instance"].rsplit("/", 1)[-1]
                  for i in await resources.managed_instances(g, "europe-west1", TASK_ID)}
        victim = sorted(before)[0]
        said = await backend.lose_machine(TaskRef.of(t), victim, 30)
        assert f"deleted instance {victim}" in said
        after = {i["instance"].rsplit("/", 1)[-1]
                 for i in await resources.managed_instances(g, "europe-west1", TASK_ID)}
        assert victim not in after and len(after) == 2  # recreated, size kept
        assert "secrets" not in gce.resources()  # no values: no secret
        await delete_steps(backend.delete_steps(TaskRef.of(t)))
        assert gce.resources() == {}
    finally:
        await backend.aclose()


async def test_a_refused_step_rolls_back_and_errors_name_the_cause(gce):
    t = task()
    backend = GCPBackend()
    try:
        made = await launch(backend, t)
        gce.fail("POST", r".*/instanceGroupManagers", 403, "quotaExceeded",
                 "Quota 'INSTANCES' exceeded. Limit: 0 in region europe-west1.")
        with pytest.raises(QuotaExceeded, match="Quota 'INSTANCES' exceeded"):
            await run_steps(backend.create_steps(t, made))
        assert gce.resources() == {}  # rolled back
    finally:
        await backend.aclose()
    error = error_for(403, json.dumps({"error": {"code": 403, "message": "disabled", "errors": [
        {"reason": "accessNotConfigured"}]}}).encode(), "create firewall x", "compute", "p-1")
    assert isinstance(error, PermissionDenied)
    assert "Compute Engine API not enabled for project p-1" in str(error)
    missing = error_for(404, b'{"error": {"code": 404, "message": "gone", "errors": '
                             b'[{"reason": "notFound"}]}}', "read x")
    assert isinstance(missing, ResourceNotFound)

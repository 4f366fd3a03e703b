"""The Azure resource functions against the ARM fake with every operation long-running (each
answers InProgress once): created twice, deleted twice, errors mapped to one clear line, tags
made valid, and the deadline held cloud-side by autoscale.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from tpi_azure import machines, resources
from tpi_azure.arm import Arm, error_for
from tpi_azure.auth import token_source

from tpi_core.errors import PermissionDenied, QuotaExceeded, ResourceNotFound

from .conftest import LOCATION, SUBSCRIPTION

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
NAME = "tpi-res-0123abcd-4567efgh"
TAGS = {"tpi-task": NAME, "tpi-managed": "true", "team/ml": "a&b"}


@pytest.fixture
async def arm(azure):
    azure.pending_operations = True
    tokens = token_source()
    client = Arm(SUBSCRIPTION, tokens.get)
    client.poll_interval = 0.05
    yield client
    await client.aclose()
    await tokens.close()


async def _scale_set(arm: Arm, capacity: int = 2, spot: float | None = 0) -> str:
    await resources.create_group(arm, NAME, LOCATION, resources.tags_of(TAGS))
    subnet = await resources.create_network(arm, NAME, NAME, LOCATION, {})
    ident = await resources.create_identity(arm, NAME, NAME, LOCATION, {})
    body = resources.scale_set_body(
        location=LOCATION, size=machines.size("m"), capacity=capacity,
        image=machines.image("ubuntu"), disk_size=-1, spot=spot, identity=ident["id"],
        subnet=subnet, custom_data="IyEvYmluL3NoCg==", tags=resources.tags_of(TAGS),
        deadline=time.time() + 3600)
    await resources.create_scale_set(arm, NAME, NAME, body)
    return resources.scale_set_id(arm, NAME, NAME)


async def test_everything_is_created_twice_and_deleted_twice(azure, arm):
    for _ in range(2):
        vmss = await _scale_set(arm)
    assert len(azure.instances(vmss)) == 2
    assert azure.get(resources.group_id(arm, NAME))["tags"]["team_ml"] == "a&b"  # TPI crashed
    await resources.create_group(arm, "tpi-shared-x", LOCATION, {})
    vault = await resources.create_vault(arm, "tpi-shared-x", "tpi-vault-test", LOCATION,
                                         "tenant")
    assert vault["properties"]["provisioningState"] == "Succeeded"  # waited for its DNS name
    for _ in range(2):
        await resources.put_secret(arm, vault, "s-environment", {"A": "1"}, {})
        assert await resources.get_secret(arm, resources.vault_uri(vault),
                                          "s-environment") == {"A": "1"}
    await resources.resize(arm, NAME, NAME, 3)
    assert [i["instanceId"] for i in azure.instances(vmss)] == ["0", "1", "2"]
    await resources.delete_instances(arm, NAME, NAME, ["1"])
    assert azure.get(vmss)["sku"]["capacity"] == 2
    for _ in range(2):
        await resources.delete_secret(arm, vault, "s-environment")
        await resources.delete_scale_set(arm, NAME, NAME)
        await resources.delete_group(arm, NAME)
    assert await resources.get_secret(arm, resources.vault_uri(vault), "s-environment") == {}
    assert not [r for ids in azure.resources().values() for r in ids if NAME in r]
    # a role just assigned takes a while to reach Key Vault: its refusals are waited out
    azure.fail("PUT", "keyvault/.*/secrets/", 403, "Forbidden", "ForbiddenByRbac", times=2)
    await resources.put_secret(arm, vault, "r-environment", {"C": "1"}, {})
    azure.fail("PUT", "keyvault/.*/secrets/", 403, "Forbidden", "ForbiddenByRbac", times=9)
    with pytest.raises(PermissionDenied, match="ForbiddenByRbac"):
        await resources.put_secret(arm, vault, "r-environment", {"C": "1"}, {}, patience=0.5)
    # a secret deleted but not purged is recovered when the task is applied again
    await resources.put_secret(arm, vault, "t-environment", {"B": "2"}, {})
    await arm.call("DELETE", f"{resources.vault_uri(vault)}secrets/t-environment",
                   version="7.4", resource="https://vault.azure.net")
    await resources.put_secret(arm, vault, "t-environment", {"B": "3"}, {})
    assert await resources.get_secret(arm, resources.vault_uri(vault),
                                      "t-environment") == {"B": "3"}


async def test_the_deadline_brings_the_scale_set_to_zero_cloud_side(azure, arm):
    vmss = await _scale_set(arm, capacity=2)
    await resources.create_deadline(arm, NAME, NAME, LOCATION, 2, time.time() + 3600, {})
    azure.tick()
    assert azure.get(vmss)["sku"]["capacity"] == 2  # before it: nothing moves
    await resources.create_deadline(arm, NAME, NAME, LOCATION, 2, time.time() - 1, {})
    azure.tick()
    assert azure.get(vmss)["sku"]["capacity"] == 0 and azure.instances(vmss) == []


async def test_an_eviction_without_try_and_restore_loses_the_capacity(azure, arm):
    """TPI's scale set (Delete, no restore policy) never came back; tpi's does."""
    vmss = await _scale_set(arm, capacity=1)
    azure.evict(vmss, "0")
    azure.acknowledge(vmss, "0", [e["EventId"] for e in
                                  azure.scheduled_events(vmss, "0")["Events"]])
    azure.tick()
    assert [i["instanceId"] for i in azure.instances(vmss)] == ["1"]  # restored
    body = azure.get(vmss)
    body["properties"].pop("spotRestorePolicy")
    await arm.call("PUT", vmss, version=resources.v("Microsoft.Compute"), body=body)
    azure.evict(vmss, "1")
    azure.acknowledge(vmss, "1", [e["EventId"] for e in
                                  azure.scheduled_events(vmss, "1")["Events"]])
    azure.tick()
    assert azure.instances(vmss) == [] and azure.get(vmss)["sku"]["capacity"] == 0


async def test_errors_name_what_is_missing(azure, arm):
    azure.unregister("Microsoft.Compute")
    with pytest.raises(PermissionDenied) as raised:
        await _scale_set(arm)
    assert str(raised.value).endswith(
        "Microsoft.Compute is not registered for this subscription "
        "(az provider register --namespace Microsoft.Compute)")
    azure.fail("PUT", "resourcegroups/", 403, "AuthorizationFailed",
               "The client 'x' does not have authorization to perform action "
               "'Microsoft.Resources/subscriptions/resourcegroups/write' over scope '/s'")
    with pytest.raises(PermissionDenied, match="Microsoft.Resources/subscriptions/"
                                               "resourcegroups/write"):
        await resources.create_group(arm, "other", LOCATION, {})
    body = json.dumps({"error": {"code": "SkuNotAvailable", "message": "no D8s_v5 here"}})
    assert isinstance(error_for(409, body.encode(), "create"), QuotaExceeded)
    assert isinstance(error_for(404, b"<html>", "read"), ResourceNotFound)


def test_apply_with_an_unregistered_provider_is_one_line(azure, tmp_path):
    azure.unregister("Microsoft.Compute")
    (tmp_path / "tasks.toml").write_text(
        '[task.t]\ncloud = "azure"\nregion = "eu-west"\nscript = "true"\n')
    run = subprocess.run([sys.executable, "-m", "tpi_core", "apply"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Microsoft.Compute is not registered" in lines[0], run.stderr
    assert "Traceback" not in run.stderr

"""The backend contract on the Azure fakes, through the CLI, with what only Azure shows: the
resources and their tags, CustomData without a secret, Spot with Try & Restore, a finished
replica leaving its scale set, an eviction announced by Scheduled Events and its instance
replaced, and nothing of the task left after destroy.

ARM and Key Vault are :mod:`.fake_arm`, Blob is Azurite (over TLS, taking the identity's
tokens), and :class:`.harness.VmssPlayer` runs the real agent, from the CustomData's boot
settings, for every instance the fake's scale sets hold, each with an IMDS of its own.
"""

from __future__ import annotations

import json
import os
import time

import anyio
import pytest
from tpi_azure import backend, machines, resources
from tpi_azure.arm import Arm
from tpi_azure.auth import token_source

from tpi_core.boot.script import parse, unpack
from tpi_core.testing.contract import BackendContract
from tpi_core.testing.lifecycle import SECRET, TAG, status, tpi

from .conftest import LOCATION, SUBSCRIPTION
from .harness import VmssPlayer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
VMSS = "Microsoft.Compute/virtualMachineScaleSets"


def _vmss_path(task_id: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{task_id}/providers/{VMSS}/"
            f"{task_id}")


class TestAzureLifecycle(BackendContract):
    """The contract on the fakes: :class:`.harness.VmssPlayer` runs the real agent per
    instance."""

    CLOUD = "azure"
    SETTINGS = 'region = "eu-west"\nmachine = "m"'

    @pytest.fixture
    def cloud(self, azure, tmp_path):
        env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5"}
        with VmssPlayer(azure, tmp_path / "machines", env) as player:
            yield player

    async def check_applied(self, cloud, task_id):
        """One of each resource, all tagged; no secret in CustomData or anywhere in ARM."""
        held = cloud.arm.resources()
        for kind in (VMSS, "Microsoft.Network/virtualNetworks",
                     "Microsoft.Network/networkSecurityGroups",
                     "Microsoft.ManagedIdentity/userAssignedIdentities",
                     "Microsoft.Insights/autoscalesettings"):
            mine = [r for r in held.get(kind, []) if task_id in r]
            assert len(mine) == 1, (kind, held)
            tags = cloud.arm.get(mine[0])["tags"]
            assert (tags["tpi-task"], tags["tpi-managed"], tags[TAG[0]]) == (
                task_id, "true", TAG[1])
        scale_set = cloud.arm.get(_vmss_path(task_id))
        profile = scale_set["properties"]["virtualMachineProfile"]
        script = unpack(profile["osProfile"]["customData"])
        assert parse(script)["hooks"] == "tpi_azure.agent:AzureHooks"
        # only the Key Vault secret holds the value; no ARM resource does
        everything = [cloud.arm.get(r) for kind, ids in held.items() for r in ids
                      if kind not in ("secrets", "deletedsecrets")]
        assert SECRET not in script and SECRET not in json.dumps(everything)
        nsg = [r for r in held["Microsoft.Network/networkSecurityGroups"] if task_id in r][0]
        assert cloud.arm.get(nsg)["properties"]["securityRules"] == []
        # the identity may touch only its task's prefix
        roles = [cloud.arm.get(r) for r in held["Microsoft.Authorization/roleAssignments"]]
        conditions = [r["properties"].get("condition", "") for r in roles]
        assert any(f"StringStartsWith '{task_id}/'" in c for c in conditions), conditions

    async def check_finished(self, cloud, done):
        """The finished replica took its own instance out, lowering the capacity."""
        path = _vmss_path(done["task_id"])

        def shrunk() -> bool:
            return cloud.arm.get(path)["sku"]["capacity"] == 0

        await anyio.to_thread.run_sync(lambda: cloud.wait_for(shrunk, 30, "capacity 0"))

    async def check_destroyed(self, cloud, task_id):
        """Nothing of the task: no group, resource, role assignment or secret (the shared
        account and vault stay)."""
        left = {kind: [r for r in ids if task_id in r or kind in (
            "Microsoft.Authorization/roleAssignments", "secrets", "deletedsecrets")]
            for kind, ids in cloud.arm.resources().items()}
        shared = [r for r in left.get("Microsoft.Authorization/roleAssignments", [])
                  if "Microsoft.KeyVault/vaults/" in r and "/secrets/" not in r]
        left["Microsoft.Authorization/roleAssignments"] = [
            r for r in left.get("Microsoft.Authorization/roleAssignments", [])
            if r not in shared]
        assert {k: v for k, v in left.items() if v} == {}

    async def check_preempted(self, cloud, said, done):
        assert "simulated the eviction" in said and "Try & Restore" in said, said

    @pytest.mark.anyio
    async def test_a_scheduled_eviction_flushes_and_the_restored_instance_resumes(
            self, cloud, project):
        """A Preempt event, not a rehearsal through tpi: the agent flushes, acknowledges
        and exits 143, the instance goes, and Try & Restore's new instance resumes from the
        checkpoint."""
        self.write_tasks(project, epochs=12, spot=True, hold=4)
        await tpi(project, "apply")
        first = (await anyio.to_thread.run_sync(
            lambda: cloud.wait_for(lambda: list(cloud.machines), 30, "an instance")))[0]
        await self.wait_for(cloud, lambda t: "epoch 3" in t, "epoch 3", project)
        assert await anyio.to_thread.run_sync(cloud.evict, first) == 143
        done = await self.wait_state(cloud, project, "succeeded")
        assert done["recoveries"] == 1 and done["counts"]["succeeded"] == 1, done
        assert (await status(project))["state"] == "succeeded"
        await self.resumed(project)


def test_spot_asks_for_try_and_restore_and_a_price_cap():
    body = resources.scale_set_body(
        location=LOCATION, size="Standard_D8s_v5", capacity=2, image=machines.image("ubuntu"),
        disk_size=64, spot=0.5, identity="/id", subnet="/subnet", custom_data="IyEvYmluL3NoCg==",
        tags={}, deadline=time.time() + 7200)
    profile = body["properties"]["virtualMachineProfile"]
    assert (profile["priority"], profile["evictionPolicy"]) == ("Spot", "Delete")
    assert profile["billingProfile"] == {"maxPrice": 0.5}
    assert body["properties"]["spotRestorePolicy"] == {"enabled": True, "restoreTimeout": "PT2H"}
    assert profile["storageProfile"]["osDisk"]["diskSizeGB"] == 64


@pytest.mark.anyio
async def test_permission_set_uses_the_users_identity_and_assigns_nothing(azure, tmp_path):
    """``permission_set`` = a user-assigned identity's id: the scale set runs as it, tpi makes
    no identity and no role assignment, and destroy leaves the user's identity alone."""
    tokens = token_source()
    arm = Arm(SUBSCRIPTION, tokens.get)
    try:
        await resources.create_group(arm, "mine", LOCATION, {})
        mine = await resources.create_identity(arm, "mine", "trainer", LOCATION, {})
    finally:
        await arm.aclose()
        await tokens.close()
    (tmp_path / "tasks.toml").write_text(
        f'[task.own]\ncloud = "azure"\nregion = "eu-west"\npermission_set = "{mine["id"]}"\n'
        'script = "true"\n[task.own.environment]\nA = "1"\n')
    created = json.loads((await tpi(tmp_path, "apply", "--json")).stdout)[0]
    held = azure.resources()
    assert not [r for r in held.get("Microsoft.ManagedIdentity/userAssignedIdentities", [])
                if created["id"] in r]
    assert held.get("Microsoft.Authorization/roleAssignments", []) == [
        r for r in held.get("Microsoft.Authorization/roleAssignments", [])
        if "Microsoft.KeyVault/vaults/" in r and "/secrets/" not in r]  # the caller's, shared
    scale_set = azure.get(_vmss_path(created["id"]))
    assert list(scale_set["identity"]["userAssignedIdentities"]) == [mine["id"]]
    script = unpack(scale_set["properties"]["virtualMachineProfile"]["osProfile"]["customData"])
    assert parse(script)["environment"]["TPI_AZURE_CLIENT_ID"] == mine["clientId"]
    await tpi(tmp_path, "destroy", "--yes")
    assert azure.get(mine["id"]) is not None
    assert not [r for ids in azure.resources().values() for r in ids if created["id"] in r]


def test_the_subscription_comes_from_the_azure_clis_profile(tmp_path, monkeypatch):
    folder = tmp_path / ".azure"
    folder.mkdir()
    (folder / "azureProfile.json").write_text(json.dumps({"subscriptions": [
        {"id": "other", "isDefault": False}, {"id": SUBSCRIPTION, "isDefault": True}]}),
        encoding="utf-8-sig")  # the CLI writes a byte-order mark
    monkeypatch.setenv("HOME", str(tmp_path))
    assert backend._cli_subscription() == SUBSCRIPTION


@pytest.mark.anyio
async def test_a_task_in_the_users_resource_group_leaves_the_group_and_its_other_resources(
        azure, tmp_path, monkeypatch):
    """``AZURE_DEFAULTS_GROUP``: the task's resources go into the user's group, later commands
    find it there without the setting, and destroy removes the task's resources only."""
    tokens = token_source()
    arm = Arm(SUBSCRIPTION, tokens.get)
    try:
        await resources.create_group(arm, "team", LOCATION, {"owner": "ml"})
        theirs = await resources.create_identity(arm, "team", "their-identity", LOCATION, {})
    finally:
        await arm.aclose()
        await tokens.close()
    (tmp_path / "tasks.toml").write_text(
        '[task.teamwork]\ncloud = "azure"\nregion = "eu-west"\nscript = "true"\n')
    monkeypatch.setenv("AZURE_DEFAULTS_GROUP", "team")
    created = json.loads((await tpi(tmp_path, "apply", "--json")).stdout)[0]
    task_id = created["id"]
    held = [r for ids in azure.resources().values() for r in ids if task_id in r
            and "roleAssignments" not in r and "/tpi-shared-" not in r and "/keyvault/" not in r]
    assert len(held) >= 5 and all("/resourceGroups/team/" in r for r in held), held
    assert azure.get(resources.group_id(arm, task_id)) is None
    monkeypatch.delenv("AZURE_DEFAULTS_GROUP")
    assert (await status(tmp_path))["state"] in ("booting", "running", "pending")
    found = json.loads((await tpi(tmp_path, "list", "--json")).stdout)
    assert task_id in json.dumps(found)
    await tpi(tmp_path, "destroy", "--yes")
    assert azure.get(resources.group_id(arm, "team"))["tags"] == {"owner": "ml"}
    assert azure.get(theirs["id"]) is not None
    assert not [r for ids in azure.resources().values() for r in ids if task_id in r]

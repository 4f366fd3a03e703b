"""The ARM fake driven through the official clients (azure-mgmt-compute's aio client, with tokens
that azure-identity's credentials get from the IMDS fake) and plain HTTP for the rest: the calls
the Azure backend makes answer as Azure answers them, so the backend's tests can trust it."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import CredentialUnavailableError
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from azure.mgmt.compute import models
from azure.mgmt.compute.aio import ComputeManagementClient

from .fake_arm import FakeArm, jwt_claims
from .fake_imds import FakeImds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUB = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
RG = f"/subscriptions/{SUB}/resourceGroups/tpi-t1"
API = "?api-version=2024-01-01"
COMPUTE = f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets"
IDENTITY = f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/tpi-t1"
ROLES = "/providers/Microsoft.Authorization/roleAssignments"
GUIDS = ["11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
         "33333333-3333-4333-8333-333333333333"]
OTHER_ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
             "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_FEDERATED_TOKEN_FILE",
             "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_USERNAME",
             "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_TOKEN_CREDENTIALS")


def jwt(audience: str, **claims) -> str:
    """An unsigned token as FakeImds makes them."""
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    payload = {"aud": audience, "exp": time.time() + 600, **claims}
    return f"{part({'alg': 'RS256'})}.{part(payload)}.ZmFrZQ"


def arm_token() -> str:
    """A token for ARM, made now (one made at import would expire in a long test run)."""
    return jwt("https://management.azure.com/")


def vault_token() -> str:
    return jwt("https://vault.azure.net")


FRESH = "fresh"
"""``call``'s default: a new ARM token."""


def call(arm: FakeArm, method: str, path: str, body: dict | None = None, *,
         token: str | None = FRESH, query: str = API) -> tuple[int, dict | None, dict]:
    """One request: (status, JSON body or None, headers); ``token`` None sends none."""
    token = arm_token() if token == FRESH else token
    if path.startswith("http"):
        url = path
    else:
        url = arm.url + path + (query if "?" not in path else "")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.replace(" ", "%20"), data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None, dict(answer.headers)
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None, dict(error.headers)


def code(answer: tuple[int, dict | None, dict]) -> tuple[int, str]:
    return answer[0], (answer[1] or {}).get("error", {}).get("code", "")


def spot_vmss(capacity: int, restore: bool, priority: str = "Spot") -> dict:
    return {"location": "westeurope", "tags": {"tpi-managed": "true"},
            "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
            "properties": {"orchestrationMode": "Uniform", "spotRestorePolicy": {
                "enabled": restore, "restoreTimeout": "PT1H"}, "virtualMachineProfile": {
                "priority": priority, "evictionPolicy": "Delete",
                "osProfile": {"computerNamePrefix": "tpi", "customData": "IyEvYmluL3No"}}}}


@pytest.fixture
def arm():
    with FakeArm() as fake:
        yield fake


@pytest.fixture
def group(arm):
    assert call(arm, "PUT", RG, {"location": "westeurope", "tags": {"tpi-task": "t1"}})[0] == 201
    return arm


@pytest.fixture
def pod_identity(monkeypatch):
    """Where azure-identity's managed identity credential asks for tokens."""
    for name in OTHER_ENV:
        monkeypatch.delenv(name, raising=False)

    def point(imds: FakeImds) -> FakeImds:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
        return imds
    return point


@pytest.mark.anyio
async def test_spot_scale_set_through_the_compute_sdk(pod_identity):
    with FakeArm(pending_operations=True) as arm, pod_identity(FakeImds()) as imds:
        assert call(arm, "PUT", RG, {"location": "westeurope"})[0] == 201
        identity = call(arm, "PUT", IDENTITY, {"location": "westeurope"})[1]
        vmss = models.VirtualMachineScaleSet(
            location="westeurope", tags={"tpi-managed": "true"},
            sku=models.Sku(name="Standard_D2s_v3", tier="Standard", capacity=2),
            identity=models.VirtualMachineScaleSetIdentity(
                type="UserAssigned",
                user_assigned_identities={identity["id"]: models.UserAssignedIdentitiesValue()}),
            properties=models.VirtualMachineScaleSetProperties(
                orchestration_mode="Uniform", upgrade_policy=models.UpgradePolicy(mode="Manual"),
                spot_restore_policy=models.SpotRestorePolicy(enabled=True, restore_timeout="PT1H"),
                virtual_machine_profile=models.VirtualMachineScaleSetVMProfile(
                    os_profile=models.VirtualMachineScaleSetOSProfile(
                        computer_name_prefix="tpi", admin_username="tpi",
                        custom_data=base64.b64encode(b"#!/bin/sh\necho hi\n").decode()),
                    priority="Spot", eviction_policy="Delete",
                    billing_profile=models.BillingProfile(max_price=-1),
                    scheduled_events_profile=models.ScheduledEventsProfile(
                        terminate_notification_profile=models.TerminateNotificationProfile(
                            enable=True, not_before_timeout="PT5M")))))
        http = {"enforce_https": False}  # the fake is plain HTTP
        async with ManagedIdentityCredential() as credential, ComputeManagementClient(
                credential, SUB, base_url=arm.url, polling_interval=0) as client:
            sets, vms = client.virtual_machine_scale_sets, client.virtual_machine_scale_set_vms
            poller = await sets.begin_create_or_update("tpi-t1", "tpi-t1", vmss, **http)
            created = await poller.result()
            assert created.properties.provisioning_state == "Succeeded"
            assert created.properties.unique_id and created.properties.time_created
            assert created.properties.spot_restore_policy.enabled is True
            profile = created.properties.virtual_machine_profile
            assert (profile.priority, profile.billing_profile.max_price) == ("Spot", -1)
            assert profile.scheduled_events_profile.terminate_notification_profile.enable
            got = await sets.get("tpi-t1", "tpi-t1", **http)
            assert got.sku.capacity == 2 and got.tags == {"tpi-managed": "true"}

            listed = [vm async for vm in vms.list("tpi-t1", "tpi-t1", expand="instanceView",
                                                  **http)]
            assert [(vm.instance_id, vm.name) for vm in listed] == [("0", "tpi-t1_0"),
                                                                    ("1", "tpi-t1_1")]
            assert [s.code for s in listed[0].properties.instance_view.statuses] == [
                "ProvisioningState/succeeded", "PowerState/running"]
            assert listed[0].properties.vm_id and listed[0].properties.latest_model_applied

            update = models.VirtualMachineScaleSetUpdate(sku=models.Sku(capacity=3))
            await (await sets.begin_update("tpi-t1", "tpi-t1", update, **http)).result()
            assert [r["instanceId"] for r in arm.instances(f"{COMPUTE}/tpi-t1")] == ["0", "1", "2"]

            await vms.simulate_eviction("tpi-t1", "tpi-t1", "1", **http)
            events = arm.scheduled_events(f"{COMPUTE}/tpi-t1", "1")
            arm.acknowledge(f"{COMPUTE}/tpi-t1", "1", [events["Events"][0]["EventId"]])
            vm = await vms.get("tpi-t1", "tpi-t1", "3", **http)  # the restore policy's
            assert vm.name == "tpi-t1_3"
            with pytest.raises(ResourceNotFoundError):
                await vms.get("tpi-t1", "tpi-t1", "1", **http)

            ids = models.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0"])
            await (await sets.begin_delete_instances("tpi-t1", "tpi-t1", ids, **http)).result()
            assert (await sets.get("tpi-t1", "tpi-t1", **http)).sku.capacity == 2
            deleted = models.VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0"])
            with pytest.raises(HttpResponseError) as unknown:
                await sets.begin_delete_instances("tpi-t1", "tpi-t1", deleted, **http)
            assert unknown.value.error.code == "InvalidParameter"

            await (await sets.begin_delete("tpi-t1", "tpi-t1", **http)).result()
            with pytest.raises(ResourceNotFoundError):
                await sets.get("tpi-t1", "tpi-t1", **http)
        assert set(arm.resources()) == {"resourceGroups",
                                        "Microsoft.ManagedIdentity/userAssignedIdentities"}
        polls = [r for r in arm.requests if "/operations/" in r.path]
        assert len(polls) >= 8  # each operation polled, once still InProgress
        token = arm.requests[-1].headers["authorization"].removeprefix("Bearer ")
        assert jwt_claims(token)["aud"] == "https://management.azure.com"
        assert imds.tokens["https://management.azure.com"] == 1


@pytest.mark.anyio
async def test_credentials_get_tokens_from_the_imds_fake(pod_identity):
    with FakeArm() as arm:
        call(arm, "PUT", RG, {"location": "westeurope"})
        call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(1, restore=False)
             | {"identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}})
        identity = call(arm, "PUT", IDENTITY, {"location": "westeurope"})[1]["properties"]
        machine = pod_identity(FakeImds(arm, f"{COMPUTE}/tpi-t1", "0"))
        with machine:
            async with DefaultAzureCredential() as credential:
                token = await credential.get_token("https://storage.azure.com/.default")
            claims = jwt_claims(token.token)
            assert claims["aud"] == "https://storage.azure.com"
            assert claims["iss"] == f"https://sts.windows.net/{arm.tenant}/"
            assert (claims["appid"], claims["oid"]) == (identity["clientId"],
                                                        identity["principalId"])
            assert claims["nbf"] < claims["iat"] < claims["exp"]
            assert machine.tokens == {"https://storage.azure.com": 1}
            async with ManagedIdentityCredential(client_id=identity["clientId"]) as credential:
                token = await credential.get_token("https://vault.azure.net/.default")
            assert call(arm, "GET", f"{RG}/providers/Microsoft.KeyVault/vaults/v1",
                        token=token.token)[0] == 401  # a Key Vault token for ARM
            async with ManagedIdentityCredential(client_id=GUIDS[0]) as credential:
                with pytest.raises(CredentialUnavailableError, match="Identity not found"):
                    await credential.get_token("https://vault.azure.net/.default")

        laptop = pod_identity(FakeImds(identities={GUIDS[0]: GUIDS[1], GUIDS[2]: GUIDS[1]}))
        with laptop:
            async with ManagedIdentityCredential() as credential:
                with pytest.raises(CredentialUnavailableError, match="Multiple user assigned"):
                    await credential.get_token("https://management.azure.com/.default")
            async with ManagedIdentityCredential(client_id=GUIDS[2]) as credential:
                token = await credential.get_token("https://management.azure.com/.default")
            assert jwt_claims(token.token)["appid"] == GUIDS[2]
            status, _, _ = call(arm, "GET", RG, token=token.token)
            assert status == 200


def test_instance_metadata_and_scheduled_events(group):
    arm = group
    call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(2, restore=False))
    with FakeImds(arm, f"{COMPUTE}/tpi-t1", "0") as imds:
        def get(path: str, metadata: bool = True):
            request = urllib.request.Request(
                imds.url + path, headers={"Metadata": "true"} if metadata else {})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                with error:
                    return error.code, error.read().decode()

        assert get("/metadata/instance/compute?api-version=2021-02-01", metadata=False) == (
            400, json.dumps({"error": "bad_request",
                             "error_description": "Required metadata header not specified"}))
        compute = json.loads(get("/metadata/instance/compute?api-version=2021-02-01")[1])
        assert (compute["name"], compute["vmScaleSetName"], compute["resourceGroupName"],
                compute["subscriptionId"], compute["priority"]) == (
            "tpi-t1_0", "tpi-t1", "tpi-t1", SUB, "Spot")
        assert compute["resourceId"] == f"{COMPUTE}/tpi-t1/virtualMachines/0"
        assert compute["tagsList"] == [{"name": "tpi-managed", "value": "true"}]
        assert get("/metadata/instance/compute/name?api-version=2021-02-01&format=text") == (
            200, "tpi-t1_0")
        assert get("/metadata/instance/compute/nope?api-version=2021-02-01&format=text")[0] == 404

        events = "/metadata/scheduledevents?api-version=2020-07-01"
        assert json.loads(get(events)[1]) == {"DocumentIncarnation": 0, "Events": []}
        path = f"{COMPUTE}/tpi-t1/virtualMachines/0/simulateEviction"
        assert call(arm, "POST", path)[0] == 204
        doc = json.loads(get(events)[1])
        [event] = doc["Events"]
        assert doc["DocumentIncarnation"] == 1
        assert (event["EventType"], event["Resources"], event["EventStatus"]) == (
            "Preempt", ["tpi-t1_0"], "Scheduled")
        assert event["NotBefore"].endswith(" GMT")

        def ack(event_id: str) -> int:
            request = urllib.request.Request(
                imds.url + events, method="POST", headers={"Metadata": "true"},
                data=json.dumps({"StartRequests": [{"EventId": event_id}]}).encode())
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status
            except urllib.error.HTTPError as error:
                error.close()
                return error.code

        assert ack("00000000-0000-0000-0000-000000000000") == 400
        assert [r["instanceId"] for r in arm.instances(f"{COMPUTE}/tpi-t1")] == ["0", "1"]
        assert ack(event["EventId"]) == 200
        # evicted at once; no restore policy: the capacity drops (no replacement)
        assert [r["instanceId"] for r in arm.instances(f"{COMPUTE}/tpi-t1")] == ["1"]
        assert arm.get(f"{COMPUTE}/tpi-t1")["sku"]["capacity"] == 1
        assert json.loads(get(events)[1]) == {"DocumentIncarnation": 2, "Events": []}
        assert get("/metadata/instance/compute?api-version=2021-02-01")[0] == 404

    arm.eviction_notice = 0.2  # unacknowledged: the eviction happens at NotBefore
    arm.evict(f"{COMPUTE}/tpi-t1", "1")
    time.sleep(0.3)
    assert len(arm.instances(f"{COMPUTE}/tpi-t1")) == 1  # until a request or a tick
    arm.tick()
    assert arm.instances(f"{COMPUTE}/tpi-t1") == []
    assert arm.get(f"{COMPUTE}/tpi-t1")["sku"]["capacity"] == 0


def test_eviction_with_spot_restore_replaces_the_instance(group):
    arm = group
    arm.restore_delay = 0.2
    call(arm, "PUT", f"{COMPUTE}/restored", spot_vmss(2, restore=True))
    call(arm, "PUT", f"{COMPUTE}/regular", spot_vmss(1, restore=False, priority="Regular"))
    arm.evict(f"{COMPUTE}/restored", "0")
    arm.acknowledge(f"{COMPUTE}/restored", "0",
                    [arm.scheduled_events(f"{COMPUTE}/restored", "0")["Events"][0]["EventId"]])
    assert [r["instanceId"] for r in arm.instances(f"{COMPUTE}/restored")] == ["1"]
    time.sleep(0.25)
    arm.tick()
    assert [r["instanceId"] for r in arm.instances(f"{COMPUTE}/restored")] == ["1", "2"]
    assert arm.get(f"{COMPUTE}/restored")["sku"]["capacity"] == 2
    answer = call(arm, "POST", f"{COMPUTE}/regular/virtualMachines/0/simulateEviction")
    assert code(answer) == (409, "OperationNotAllowed")
    assert code(call(arm, "POST", f"{COMPUTE}/restored/virtualMachines/7/simulateEviction")) == (
        404, "ResourceNotFound")


def test_autoscale_fixed_date_profile_applies_on_tick(group):
    arm = group
    call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(2, restore=True))
    now = datetime.now(UTC)

    def profile(name: str, start: datetime, capacity: str) -> dict:
        return {"name": name, "capacity": {"minimum": capacity, "maximum": capacity,
                                           "default": capacity}, "rules": [],
                "fixedDate": {"timeZone": "UTC", "start": start.isoformat(),
                              "end": (start + timedelta(days=365)).isoformat()}}

    setting = f"{RG}/providers/microsoft.insights/autoscalesettings/tpi-t1-deadline"
    body = {"location": "westeurope", "properties": {
        "enabled": True, "targetResourceUri": f"{COMPUTE}/tpi-t1", "profiles": [
            {"name": "default", "capacity": {"minimum": "1", "maximum": "1", "default": "1"},
             "rules": []},
            profile("later", now + timedelta(hours=1), "5")]}}
    answer = call(arm, "PUT", setting, body)
    assert answer[0] == 201 and answer[1]["type"] == "Microsoft.Insights/autoscalesettings"
    arm.tick()
    assert len(arm.instances(f"{COMPUTE}/tpi-t1")) == 2  # no profile covers now
    body["properties"]["profiles"].append(profile("deadline", now - timedelta(seconds=1), "0"))
    assert call(arm, "PUT", setting, body)[0] == 200
    assert len(arm.instances(f"{COMPUTE}/tpi-t1")) == 2  # autoscale acts on its own time
    arm.tick()
    assert arm.instances(f"{COMPUTE}/tpi-t1") == []
    assert arm.get(f"{COMPUTE}/tpi-t1")["sku"]["capacity"] == 0


def test_role_assignments(group):
    arm = group
    reader = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{GUIDS[2]}"
    body = {"properties": {"roleDefinitionId": reader, "principalId": GUIDS[0],
                           "principalType": "ServicePrincipal"}}
    status, made, _ = call(arm, "PUT", f"{RG}{ROLES}/{GUIDS[0]}", body)
    assert status == 201 and made["properties"]["scope"] == RG
    assert made["type"] == "Microsoft.Authorization/roleAssignments" and made["name"] == GUIDS[0]
    assert call(arm, "PUT", f"{RG}{ROLES}/{GUIDS[0]}", body)[1] == made  # idempotent
    other = {"properties": {**body["properties"], "principalId": GUIDS[1]}}
    assert code(call(arm, "PUT", f"{RG}{ROLES}/{GUIDS[0]}", other)) == (
        409, "RoleAssignmentUpdateNotPermitted")
    assert code(call(arm, "PUT", f"{RG}{ROLES}/{GUIDS[1]}", body)) == (409, "RoleAssignmentExists")
    assert code(call(arm, "PUT", f"{RG}{ROLES}/tpi-t1-reader", body)) == (
        400, "InvalidRoleAssignmentId")
    missing = f"/subscriptions/{SUB}/resourceGroups/nope{ROLES}/{GUIDS[1]}"
    assert code(call(arm, "PUT", missing, body)) == (404, "ResourceGroupNotFound")

    call(arm, "PUT", f"{RG}/providers/Microsoft.KeyVault/vaults/tpi-t1-kv",
         {"location": "westeurope", "properties": {"tenantId": arm.tenant}})
    secret = f"{RG}/providers/Microsoft.KeyVault/vaults/tpi-t1-kv/secrets/env"
    assert call(arm, "PUT", f"{secret}{ROLES}/{GUIDS[1]}", other)[0] == 201
    by_principal = f"?api-version=2022-04-01&$filter=principalId eq '{GUIDS[0]}'"
    listed = call(arm, "GET", f"/subscriptions/{SUB}{ROLES}{by_principal}")[1]["value"]
    assert [a["name"] for a in listed] == [GUIDS[0]]  # below the scope
    listed = call(arm, "GET", f"{secret}{ROLES}{by_principal}")[1]["value"]
    assert [a["name"] for a in listed] == [GUIDS[0]]  # above the scope
    assert len(call(arm, "GET", f"/subscriptions/{SUB}{ROLES}")[1]["value"]) == 2

    assert call(arm, "DELETE", f"{RG}{ROLES}/{GUIDS[0]}")[0] == 200
    assert call(arm, "DELETE", f"{RG}{ROLES}/{GUIDS[0]}")[0] == 204
    assert code(call(arm, "GET", f"{RG}{ROLES}/{GUIDS[0]}")) == (404, "RoleAssignmentNotFound")


def test_key_vault_secrets(group):
    arm = group
    status, vault, _ = call(arm, "PUT", f"{RG}/providers/Microsoft.KeyVault/vaults/tpi-t1-kv", {
        "location": "westeurope", "properties": {"tenantId": arm.tenant, "sku": {
            "family": "A", "name": "standard"}, "enableRbacAuthorization": True}})
    uri = vault["properties"]["vaultUri"]
    assert status == 201 and uri == f"{arm.url}/keyvault/tpi-t1-kv/"

    def kv(method: str, path: str, body: dict | None = None, token: str = FRESH):
        token = vault_token() if token == FRESH else token
        return call(arm, method, uri + path + "?api-version=7.4", body, token=token)

    status, first, _ = kv("PUT", "secrets/tpi-env", {"value": "one", "contentType": "json",
                                                     "tags": {"tpi-task": "t1"}})
    assert status == 200 and first["id"].startswith(f"{uri}secrets/tpi-env/")
    assert first["attributes"]["enabled"] and first["contentType"] == "json"
    second = kv("PUT", "secrets/tpi-env", {"value": "two"})[1]
    assert kv("GET", "secrets/tpi-env")[1]["value"] == "two"
    assert kv("GET", "secrets/TPI-ENV/" + first["id"].rsplit("/", 1)[1])[1]["value"] == "one"
    assert [s["id"] for s in kv("GET", "secrets")[1]["value"]] == [f"{uri}secrets/tpi-env"]
    assert code(kv("PUT", "secrets/not_a_name", {"value": "x"})) == (400, "BadParameter")
    assert code(kv("GET", "secrets/tpi-env", token=arm_token())) == (401, "Unauthorized")
    status, _, headers = kv("GET", "secrets/tpi-env", token="")
    assert status == 401 and 'resource="https://vault.azure.net"' in headers["WWW-Authenticate"]
    assert code(call(arm, "GET", f"{arm.url}/keyvault/nope/secrets/x?api-version=7.4",
                     token=vault_token())) == (404, "NotFound")

    status, deleted, _ = kv("DELETE", "secrets/tpi-env")
    assert status == 200 and deleted["recoveryId"] == f"{uri}deletedsecrets/tpi-env"
    assert deleted["id"] == second["id"] and "value" not in deleted
    assert code(kv("GET", "secrets/tpi-env")) == (404, "SecretNotFound")
    assert code(kv("PUT", "secrets/tpi-env", {"value": "three"})) == (409, "Conflict")
    assert arm.resources()["deletedsecrets"] == [f"{uri}deletedsecrets/tpi-env"]
    assert kv("GET", "deletedsecrets/tpi-env")[0] == 200
    assert kv("DELETE", "deletedsecrets/tpi-env")[0] == 204
    assert code(kv("GET", "deletedsecrets/tpi-env")) == (404, "SecretNotFound")
    assert kv("PUT", "secrets/tpi-env", {"value": "three"})[0] == 200
    assert arm.resources()["secrets"] == [f"{uri}secrets/tpi-env"]


def test_group_delete_takes_its_resources_but_not_role_assignments():
    with FakeArm(pending_operations=True, blob_endpoint="https://127.0.0.1:1/devstoreaccount1/",
                 account_key="a2V5") as arm:
        call(arm, "PUT", RG, {"location": "westeurope"})
        account = f"{RG}/providers/Microsoft.Storage/storageAccounts/tpit1"
        status, body, headers = call(arm, "PUT", account, {"location": "westeurope",
                                                           "kind": "StorageV2"})
        assert (status, body, "Azure-AsyncOperation" in headers) == (202, None, False)
        assert call(arm, "GET", headers["Location"])[0] == 202
        status, done, _ = call(arm, "GET", headers["Location"])
        assert status == 200
        assert done["properties"]["primaryEndpoints"]["blob"] == arm.blob_endpoint
        keys = call(arm, "POST", f"{account}/listKeys")[1]["keys"]
        assert (keys[0]["keyName"], keys[0]["value"]) == ("key1", "a2V5")
        container = f"{account}/blobServices/default/containers/tpi"
        assert call(arm, "PUT", container, {"properties": {}})[0] == 201
        vault = f"{RG}/providers/Microsoft.KeyVault/vaults/tpi-t1-kv"
        made = call(arm, "PUT", vault, {"location": "westeurope", "properties": {}})[1]
        assert made["properties"]["provisioningState"] == "RegisteringDns"
        assert call(arm, "GET", vault)[1]["properties"]["provisioningState"] == "Succeeded"
        call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(1, restore=True))
        role = {"properties": {"roleDefinitionId": "r", "principalId": GUIDS[0]}}
        call(arm, "PUT", f"{container}{ROLES}/{GUIDS[0]}", role)
        call(arm, "PUT", f"{RG}{ROLES}/{GUIDS[1]}", role)

        status, _, headers = call(arm, "DELETE", RG)
        assert status == 202 and "/operationresults/" in headers["Location"]
        assert call(arm, "GET", headers["Location"])[0] == 202
        assert call(arm, "GET", headers["Location"])[0] == 200
        assert code(call(arm, "GET", RG)) == (404, "ResourceGroupNotFound")
        assert code(call(arm, "DELETE", RG)) == (404, "ResourceGroupNotFound")
        assert arm.resources() == {
            "Microsoft.Authorization/roleAssignments": [f"{container}{ROLES}/{GUIDS[0]}",
                                                        f"{RG}{ROLES}/{GUIDS[1]}"],
            "Microsoft.KeyVault/deletedVaults": [(
                f"/subscriptions/{SUB}/providers/Microsoft.KeyVault/locations/westeurope/"
                f"deletedVaults/tpi-t1-kv")]}

        call(arm, "PUT", RG, {"location": "westeurope"})
        assert code(call(arm, "PUT", vault, {"location": "westeurope"})) == (
            409, "VaultAlreadyExists")
        deleted = arm.resources()["Microsoft.KeyVault/deletedVaults"][0]
        assert call(arm, "POST", f"{deleted}/purge")[0] == 202
        assert call(arm, "PUT", vault, {"location": "westeurope"})[0] == 201


def test_lro_shapes_patch_and_injected_failures():
    with FakeArm(pending_operations=True) as arm:
        call(arm, "PUT", RG, {"location": "westeurope"})
        status, body, headers = call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(1, restore=True))
        assert status == 201 and body["properties"]["provisioningState"] == "Creating"
        assert "Location" not in headers
        operation = headers["Azure-AsyncOperation"]
        assert "/providers/Microsoft.Compute/locations/westeurope/operations/" in operation
        assert call(arm, "GET", operation)[1]["status"] == "InProgress"
        assert call(arm, "GET", operation)[1]["status"] == "Succeeded"
        assert call(arm, "GET", f"{COMPUTE}/tpi-t1")[1]["properties"][
            "provisioningState"] == "Succeeded"

        patch = {"tags": {"b": "2"}, "sku": {"capacity": 2},
                 "properties": {"virtualMachineProfile": {"evictionPolicy": "Deallocate"}}}
        status, body, headers = call(arm, "PATCH", f"{COMPUTE}/tpi-t1", patch)
        assert status == 200 and "Azure-AsyncOperation" in headers
        stored = arm.get(f"{COMPUTE}/tpi-t1")
        assert stored["tags"] == {"b": "2"} and stored["sku"]["name"] == "Standard_D2s_v3"
        profile = stored["properties"]["virtualMachineProfile"]
        assert (profile["evictionPolicy"], profile["priority"]) == ("Deallocate", "Spot")
        assert len(arm.instances(f"{COMPUTE}/tpi-t1")) == 2

        status, _, headers = call(arm, "DELETE", f"{COMPUTE}/tpi-t1/virtualMachines/1")
        assert status == 202 and {"Location", "Azure-AsyncOperation"} <= set(headers)
        assert call(arm, "DELETE", f"{COMPUTE}/tpi-t1/virtualMachines/1")[0] == 204
        status, _, headers = call(arm, "DELETE", f"{COMPUTE}/tpi-t1")
        assert status == 202 and {"Location", "Azure-AsyncOperation"} <= set(headers)
        assert call(arm, "GET", headers["Location"])[0] == 202
        assert call(arm, "GET", headers["Location"])[0] == 200
        assert call(arm, "DELETE", f"{COMPUTE}/tpi-t1")[0] == 204
        vnet = f"{RG}/providers/Microsoft.Network/virtualNetworks/tpi-t1"
        status, _, headers = call(arm, "PUT", vnet, {"location": "westeurope", "properties": {
            "subnets": [{"name": "tpi", "properties": {"addressPrefix": "10.0.0.0/20"}}]}})
        assert status == 201 and "Azure-AsyncOperation" in headers
        subnet = call(arm, "GET", f"{vnet}/subnets/tpi")[1]
        assert subnet["id"] == f"{vnet}/subnets/tpi" and subnet["properties"]["addressPrefix"]
        assert call(arm, "DELETE", vnet)[0] == 202
        assert "Microsoft.Network/virtualNetworks/subnets" not in arm.resources()
        assert call(arm, "PUT", IDENTITY, {"location": "westeurope"})[0] == 201
        assert call(arm, "DELETE", IDENTITY)[:2] == (200, None)
        assert code(call(arm, "GET", IDENTITY)) == (404, "ResourceNotFound")

        arm.fail("PUT", r"/virtualMachineScaleSets/", 409, "SkuNotAvailable",
                 "The requested VM size is not available.", operation=True)
        status, _, headers = call(arm, "PUT", f"{COMPUTE}/tpi-t2", spot_vmss(1, restore=True))
        assert status == 201
        call(arm, "GET", headers["Azure-AsyncOperation"])
        failed = call(arm, "GET", headers["Azure-AsyncOperation"])[1]
        assert (failed["status"], failed["error"]["code"]) == ("Failed", "SkuNotAvailable")
        assert arm.get(f"{COMPUTE}/tpi-t2")["properties"]["provisioningState"] == "Failed"
        assert arm.instances(f"{COMPUTE}/tpi-t2") == []
        arm.fail("GET", r"/tpi-t2$", 429, "TooManyRequests", times=2)
        assert code(call(arm, "GET", f"{COMPUTE}/tpi-t2")) == (429, "TooManyRequests")
        assert code(call(arm, "GET", f"{COMPUTE}/tpi-t2")) == (429, "TooManyRequests")
        assert call(arm, "GET", f"{COMPUTE}/tpi-t2")[0] == 200


def test_authentication_validation_and_unknown_paths(group):
    arm = group
    assert code(call(arm, "GET", RG, token=None)) == (401, "AuthenticationFailed")
    assert code(call(arm, "GET", RG, token=vault_token())) == (
        401, "InvalidAuthenticationTokenAudience")
    expired = jwt("https://management.azure.com", exp=time.time() - 5)
    assert code(call(arm, "GET", RG, token=expired)) == (401, "ExpiredAuthenticationToken")
    assert call(arm, "GET", RG, token="opaque-token")[0] == 200
    assert code(call(arm, "GET", RG, query="")) == (400, "MissingApiVersionParameter")
    usages = f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/westeurope/usages"
    assert code(call(arm, "GET", usages)) == (501, "NotImplemented")
    assert call(arm, "GET", f"{RG}/providers/Microsoft.Network/loadBalancers/x/probes")[0] == 501
    assert call(arm, "PUT", f"{COMPUTE}/tpi-t1/virtualMachines/0", {})[0] == 501
    assert code(call(arm, "GET", f"{RG}/providers/Microsoft.Storage/storageAccounts/x")) == (
        404, "ResourceNotFound")
    missing = IDENTITY.replace("/resourceGroups/tpi-t1/", "/resourceGroups/nope/")
    assert code(call(arm, "PUT", missing, {"location": "westeurope"})) == (
        404, "ResourceGroupNotFound")
    assert code(call(arm, "PUT", IDENTITY, {})) == (400, "LocationRequired")
    assert code(call(arm, "PUT", f"{RG}/providers/Microsoft.Storage/storageAccounts/Tpi_1",
                     {"location": "westeurope"})) == (400, "AccountNameInvalid")
    container = f"{RG}/providers/Microsoft.Storage/storageAccounts/nope/blobServices/default/" \
                "containers/c"
    assert code(call(arm, "PUT", container, {})) == (404, "ParentResourceNotFound")

    # case-insensitive: ARM's spelling comes back, the name as first given
    odd = (f"/SUBSCRIPTIONS/{SUB}/resourcegroups/TPI-T1/providers/microsoft.managedidentity/"
           f"userassignedidentities/TPI-Id")
    status, made, _ = call(arm, "PUT", odd, {"location": "westeurope"})
    assert status == 201 and made["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    kind = "providers/Microsoft.ManagedIdentity/userAssignedIdentities"
    assert made["id"] == f"{RG}/{kind}/TPI-Id"
    assert made["properties"]["tenantId"] == arm.tenant
    again = call(arm, "GET", f"{RG}/{kind}/tpi-id")[1]
    assert again["properties"]["clientId"] == made["properties"]["clientId"]

    provider = f"/subscriptions/{SUB}/providers/Microsoft.Compute"
    arm.unregister("Microsoft.Compute")
    assert call(arm, "GET", provider)[1]["registrationState"] == "NotRegistered"
    status, error, _ = call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(1, restore=True))
    assert (status, error["error"]["code"]) == (409, "MissingSubscriptionRegistration")
    assert "namespace 'Microsoft.Compute'" in error["error"]["message"]
    assert call(arm, "POST", f"{provider}/register")[1]["registrationState"] == "Registered"
    token = arm_token()
    assert call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(1, restore=True), token=token)[0] == 201
    recorded = arm.requests[-1]
    assert (recorded.method, recorded.query["api-version"]) == ("PUT", "2024-01-01")
    assert json.loads(recorded.body)["sku"]["capacity"] == 1
    assert recorded.headers["authorization"] == f"Bearer {token}"


def test_lists_filters_and_paging(group):
    arm = group
    arm.page_size = 2
    call(arm, "PUT", f"/subscriptions/{SUB}/resourceGroups/other", {"location": "westeurope"})
    for name in ("a", "b", "c"):
        call(arm, "PUT", f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
             {"location": "westeurope", "tags": {"tpi-task": "t1" if name != "c" else "t2"}})
    call(arm, "PUT", f"{COMPUTE}/tpi-t1", spot_vmss(3, restore=True) | {"tags": {"tpi-task": "t1"}})

    def every(path: str) -> list[dict]:
        found, page = [], call(arm, "GET", path)[1]
        while True:
            found += page["value"]
            if not page.get("nextLink"):
                return found
            page = call(arm, "GET", page["nextLink"])[1]

    groups = f"/subscriptions/{SUB}/resourcegroups"
    assert [g["name"] for g in every(groups + API)] == ["tpi-t1", "other"]
    tagged = every(f"{groups}{API}&$filter=tagName eq 'tpi-task' and tagValue eq 't1'")
    assert [g["name"] for g in tagged] == ["tpi-t1"]
    resources = f"/subscriptions/{SUB}/resources{API}&$filter="
    tagged = every(resources + "tagName eq 'tpi-task' and tagValue eq 't1'")
    assert [r["name"] for r in tagged] == ["a", "b", "tpi-t1"]
    assert all("tags" not in r for r in tagged)  # as ARM answers a tag-value filter
    assert "tags" in every(resources + "tagName eq 'tpi-task'")[0]
    typed = every(resources + "resourceType eq 'Microsoft.Compute/virtualMachineScaleSets'")
    assert [r["name"] for r in typed] == ["tpi-t1"]
    assert code(call(arm, "GET", resources + "resourceType eq 'x' and tagName eq 'y'")) == (
        400, "InvalidFilterInQueryString")
    assert len(every(f"{COMPUTE}/tpi-t1/virtualMachines{API}")) == 3
    kind = "providers/Microsoft.ManagedIdentity/userAssignedIdentities"
    assert len(every(f"/subscriptions/{SUB}/{kind}{API}")) == 3
    assert len(every(f"{RG}/{kind}{API}")) == 3
    assert call(arm, "GET", f"{RG}/{kind}{API}")[1]["nextLink"].startswith(arm.url)

"""One small async function per Azure resource of a task, on :class:`~tpi_azure.arm.Arm`.

Creates are PUTs (ARM's create-or-update: running one twice gives the same resource) and
deletes treat "not found" as done, so every function may run twice. A task's resources live
in its own resource group, named as the task; the storage account and the Key Vault are
shared by the tasks of a subscription and location, in the group ``tpi-shared-LOCATION``,
named after a digest of both (their names are global and short).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from tpi_azure.arm import VAULT_RESOURCE, VERSIONS, Arm, code_of
from tpi_azure.machines import Image
from tpi_core.errors import PermissionDenied, TpiError, TransientError

GONE = ("ResourceNotFound", "ResourceGroupNotFound", "NotFound", "SecretNotFound",
        "ParentResourceNotFound")
ROLES = {  # built-in role definitions (their ids are the same in every tenant)
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Virtual Machine Contributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
}
BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
_NAMESPACE = uuid.UUID("6f1b7c2e-4d0a-4a8e-9a57-0d5b3f1c2a90")
"""Role assignment names are uuid5 under this: the same assignment, the same name."""


def v(namespace: str) -> str:
    """The API version tpi uses for a provider."""
    return VERSIONS[namespace]


def digest(*parts: str, length: int = 20) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def shared_group(location: str) -> str:
    """The resource group of a location's shared storage account and Key Vault."""
    return f"tpi-shared-{location}"


def account_name(subscription: str, location: str) -> str:
    """The shared storage account of a subscription and location (24 characters at most,
    lower-case letters and digits, globally unique)."""
    return "tpi" + digest(subscription, location)


def vault_name(subscription: str, location: str) -> str:
    """The shared Key Vault of a subscription and location (3 to 24 characters)."""
    return "tpi-" + digest(subscription, location, "vault", length=18)


def secret_name(task_id: str) -> str:
    """The Key Vault secret holding a task's environment values."""
    return f"{task_id}-environment"


def group_id(arm: Arm, group: str) -> str:
    return arm.sub(f"/resourceGroups/{group}")


def resource_id(arm: Arm, group: str, kind: str, name: str) -> str:
    """An ARM id: ``kind`` is ``Namespace/type``."""
    return f"{group_id(arm, group)}/providers/{kind}/{name}"


def tags_of(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags made valid for ARM: names at most 512 characters without ``<>%&\\?/``, values
    at most 256."""
    found = {}
    for key, value in tags.items():
        key = "".join("_" if c in '<>%&\\?/' else c for c in str(key))[:512]
        if key:
            found[key] = str(value)[:256]
    return found


# resource groups ---------------------------------------------------------------------------

async def create_group(arm: Arm, name: str, location: str, tags: Mapping[str, str]) -> None:
    await arm.call("PUT", group_id(arm, name), version=v("resources"),
                   body={"location": location, "tags": dict(tags)},
                   what=f"create resource group {name}")


async def get_group(arm: Arm, name: str) -> dict | None:
    return await arm.call("GET", group_id(arm, name), version=v("resources"), ok=GONE,
                          what=f"read resource group {name}")


async def delete_group(arm: Arm, name: str) -> None:
    """The group and everything in it (waited for)."""
    await arm.call("DELETE", group_id(arm, name), version=v("resources"), ok=GONE,
                   what=f"delete resource group {name}")


async def tagged(arm: Arm, name: str, value: str | None = None) -> list[dict]:
    """The subscription's resources with tag ``name`` (equal to ``value``, when given; ARM
    then leaves the tags out of its answer)."""
    condition = f"tagName eq '{name}'" + (f" and tagValue eq '{value}'" if value else "")
    return [r async for r in arm.pages(arm.sub("/resources"), version=v("resources"),
                                       query={"$filter": condition})]


async def tpi_groups(arm: Arm) -> list[dict]:
    """The resource groups tagged as tpi tasks'."""
    return [g async for g in arm.pages(arm.sub("/resourcegroups"), version=v("resources"),
                                       query={"$filter": "tagName eq 'tpi-task'"})]


# network ------------------------------------------------------------------------------------

async def create_network(arm: Arm, group: str, name: str, location: str,
                         tags: Mapping[str, str]) -> str:
    """A network security group with no inbound rule (Azure's defaults let in only the
    virtual network and the load balancer's probes, and deny the internet), and a virtual
    network with one subnet behind it; the subnet's id."""
    nsg = resource_id(arm, group, "Microsoft.Network/networkSecurityGroups", name)
    await arm.call("PUT", nsg, version=v("Microsoft.Network"), what=f"create NSG {name}",
                   body={"location": location, "tags": dict(tags),
                         "properties": {"securityRules": []}})
    vnet = resource_id(arm, group, "Microsoft.Network/virtualNetworks", name)
    await arm.call("PUT", vnet, version=v("Microsoft.Network"),
                   what=f"create virtual network {name}", body={
                       "location": location, "tags": dict(tags), "properties": {
                           "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                           "subnets": [{"name": "tpi", "properties": {
                               "addressPrefix": "10.0.0.0/20",
                               "networkSecurityGroup": {"id": nsg}}}]}})
    return f"{vnet}/subnets/tpi"


# identity and roles -------------------------------------------------------------------------

async def create_identity(arm: Arm, group: str, name: str, location: str,
                          tags: Mapping[str, str]) -> dict:
    """The task's user-assigned identity: its ``id``, ``principalId``, ``clientId``,
    ``tenantId``."""
    ident = resource_id(arm, group, "Microsoft.ManagedIdentity/userAssignedIdentities", name)
    found = await arm.call("PUT", ident, version=v("Microsoft.ManagedIdentity"),
                           body={"location": location, "tags": dict(tags)},
                           what=f"create managed identity {name}") or {}
    return {"id": ident, **(found.get("properties") or {})}


async def get_identity(arm: Arm, ident: str) -> dict:
    """A user-assigned identity by id (``permission_set``)."""
    found = await arm.call("GET", ident, version=v("Microsoft.ManagedIdentity"),
                           what=f"read managed identity {ident.rsplit('/', 1)[-1]}") or {}
    return {"id": ident, **(found.get("properties") or {})}


def assignment_name(scope: str, role: str, principal: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{scope}|{role}|{principal}"))


async def assign(arm: Arm, scope: str, role: str, principal: str, *,
                 principal_type: str = "ServicePrincipal", condition: str = "") -> str:
    """A role assignment (``role``: a name of :data:`ROLES`) to ``principal`` at ``scope``;
    its id. A principal Entra ID has not seen yet is waited for."""
    name = assignment_name(scope, role, principal)
    path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
    properties: dict[str, Any] = {
        "roleDefinitionId": arm.sub(
            f"/providers/Microsoft.Authorization/roleDefinitions/{ROLES[role]}"),
        "principalId": principal}
    if principal_type:  # else ARM finds out (the caller may be a user or an app)
        properties["principalType"] = principal_type
    if condition:
        properties.update(condition=condition, conditionVersion="2.0")
    for attempt in range(20):
        try:
            await arm.call("PUT", path, version=v("Microsoft.Authorization"),
                           body={"properties": properties}, ok=("RoleAssignmentExists",),
                           what=f"assign {role}")
            return path
        except TransientError as exc:
            if code_of(exc) != "PrincipalNotFound" or attempt == 19:
                raise
            await anyio.sleep(3)
    raise AssertionError("unreachable")


async def unassign(arm: Arm, path: str) -> None:
    await arm.call("DELETE", path, version=v("Microsoft.Authorization"), ok=GONE,
                   what="delete a role assignment")


async def assignments_of(arm: Arm, scope: str, principal: str) -> list[str]:
    """The ids of a principal's role assignments at or below ``scope``."""
    path = f"{scope}/providers/Microsoft.Authorization/roleAssignments"
    return [a["id"] async for a in arm.pages(path, version=v("Microsoft.Authorization"),
                                             query={"$filter": f"principalId eq '{principal}'"})]


def prefix_condition(prefix: str) -> str:
    """An ABAC condition: blob reads, writes and deletes only under ``prefix/``, listings
    only of it."""
    path = f"@Resource[{BLOBS}:path] StringStartsWith '{prefix}/'"
    listed = f"@Request[{BLOBS}:prefix] StringStartsWith '{prefix}/'"
    touch = " AND ".join(f"!(ActionMatches{{'{BLOBS}/{a}'}}"
                         + (" AND NOT SubOperationMatches{'Blob.List'})" if a == "read"
                            else ")")
                         for a in ("read", "write", "delete", "add/action"))
    lists = f"!(ActionMatches{{'{BLOBS}/read'}} AND SubOperationMatches{{'Blob.List'}})"
    return f"(({touch}) OR ({path})) AND (({lists}) OR ({listed}))"


# storage account, container, Key Vault ----------------------------------------------------

async def create_account(arm: Arm, group: str, name: str, location: str) -> dict:
    """The shared storage account (StorageV2, LRS, TLS 1.2, no public blob access); its
    ARM body."""
    path = resource_id(arm, group, "Microsoft.Storage/storageAccounts", name)
    existing = await arm.call("GET", path, version=v("Microsoft.Storage"), ok=GONE,
                              what=f"read storage account {name}")
    if existing:
        return existing
    return await arm.call("PUT", path, version=v("Microsoft.Storage"),
                          what=f"create storage account {name}", body={
                              "location": location, "kind": "StorageV2",
                              "sku": {"name": "Standard_LRS"},
                              "tags": {"tpi-managed": "true"},
                              "properties": {"minimumTlsVersion": "TLS1_2",
                                             "allowBlobPublicAccess": False,
                                             "supportsHttpsTrafficOnly": True}}) or {}


async def get_account(arm: Arm, group: str, name: str) -> dict | None:
    return await arm.call("GET", resource_id(arm, group, "Microsoft.Storage/storageAccounts",
                                             name), version=v("Microsoft.Storage"),
                          ok=GONE, what=f"read storage account {name}")


async def account_key(arm: Arm, account: dict) -> str:
    """The account's first key (listKeys: what Contributors may read)."""
    found = await arm.call("POST", f"{account['id']}/listKeys", version=v("Microsoft.Storage"),
                           what=f"read the keys of storage account {account['name']}") or {}
    keys = found.get("keys") or []
    return str(keys[0]["value"]) if keys else ""


async def create_vault(arm: Arm, group: str, name: str, location: str, tenant: str) -> dict:
    """The shared Key Vault (role-based access, purge protection off: a task's secret can be
    purged after its delete); its ARM body."""
    path = resource_id(arm, group, "Microsoft.KeyVault/vaults", name)
    existing = await arm.call("GET", path, version=v("Microsoft.KeyVault"), ok=GONE,
                              what=f"read key vault {name}")
    if existing:
        return existing
    vault = await arm.call("PUT", path, version=v("Microsoft.KeyVault"),
                           what=f"create key vault {name}", body={
                               "location": location, "tags": {"tpi-managed": "true"},
                               "properties": {"tenantId": tenant,
                                              "sku": {"family": "A", "name": "standard"},
                                              "enableRbacAuthorization": True,
                                              "softDeleteRetentionInDays": 7}}) or {}
    for _ in range(90):  # a new vault registers its DNS name before its URI answers
        if (vault.get("properties") or {}).get("provisioningState", "Succeeded") == "Succeeded":
            return vault
        await anyio.sleep(arm.poll_interval)
        vault = await get_vault(arm, group, name) or vault
    raise TransientError(f"key vault {name} is not ready after {90 * arm.poll_interval:g} s")


async def get_vault(arm: Arm, group: str, name: str) -> dict | None:
    return await arm.call("GET", resource_id(arm, group, "Microsoft.KeyVault/vaults", name),
                          version=v("Microsoft.KeyVault"), ok=GONE,
                          what=f"read key vault {name}")


def vault_uri(vault: Mapping[str, Any]) -> str:
    return str((vault.get("properties") or {}).get("vaultUri") or "").rstrip("/") + "/"


async def put_secret(arm: Arm, vault: Mapping[str, Any], name: str,
                     values: Mapping[str, str], tags: Mapping[str, str],
                     patience: float = 180) -> None:
    """The environment as one secret (JSON). A secret deleted but not purged (a task applied
    again after a destroy that could not purge) is recovered first; a refusal is asked again
    for ``patience`` seconds (a role just assigned takes minutes to reach Key Vault)."""
    url = f"{vault_uri(vault)}secrets/{name}"
    body = {"value": json.dumps(dict(values)), "contentType": "application/json",
            "tags": dict(list(tags.items())[:15])}
    limit, recovered = time.monotonic() + patience, False
    while True:
        try:
            await arm.call("PUT", url, version=v("vault"), body=body, resource=VAULT_RESOURCE,
                           what=f"store secret {name}")
            return
        except PermissionDenied:
            if time.monotonic() > limit:
                raise
        except TpiError as exc:
            if "deleted but recoverable" not in str(exc) or time.monotonic() > limit:
                raise
            if not recovered:
                recovered = True
                await arm.call("POST", f"{vault_uri(vault)}deletedsecrets/{name}/recover",
                               version=v("vault"), resource=VAULT_RESOURCE, ok=GONE,
                               what=f"recover secret {name}")
        await anyio.sleep(min(arm.poll_interval * 5, 10))


async def get_secret(arm: Arm, uri: str, name: str) -> dict[str, str]:
    found = await arm.call("GET", f"{uri.rstrip('/')}/secrets/{name}", version=v("vault"),
                           resource=VAULT_RESOURCE, ok=GONE, what=f"read secret {name}")
    return json.loads(found["value"]) if found else {}


async def delete_secret(arm: Arm, vault: Mapping[str, Any], name: str) -> None:
    """Delete, then purge (so the name is free again; a purge refused is left to the
    vault's retention)."""
    uri = vault_uri(vault)
    await arm.call("DELETE", f"{uri}secrets/{name}", version=v("vault"), ok=GONE,
                   resource=VAULT_RESOURCE, what=f"delete secret {name}")
    for _ in range(10):
        try:
            await arm.call("DELETE", f"{uri}deletedsecrets/{name}", version=v("vault"),
                           ok=GONE, resource=VAULT_RESOURCE, what=f"purge secret {name}")
            return
        except Exception as exc:  # a delete still in progress answers 409 for a while
            if "Conflict" not in str(exc):
                return  # purge not allowed: the vault's retention ends it
            await anyio.sleep(2)


# scale set and autoscale --------------------------------------------------------------------

def scale_set_body(*, location: str, size: str, capacity: int, image: Image, disk_size: int,
                   spot: float | None, identity: str, subnet: str, custom_data: str,
                   tags: Mapping[str, str], deadline: float) -> dict:
    """A Uniform scale set of ``capacity`` instances: the image, the disk, the identity, the
    network (a public address for the way out; the NSG lets nothing in), CustomData (nothing
    secret; ``custom_data`` as the model takes it, base64), Spot with Try & Restore, and
    Scheduled Events for the agent's notice."""
    os_disk: dict[str, Any] = {"createOption": "FromImage", "caching": "ReadWrite",
                               "managedDisk": {"storageAccountType": "StandardSSD_LRS"}}
    if disk_size > 0:
        os_disk["diskSizeGB"] = disk_size
    profile: dict[str, Any] = {
        "osProfile": {
            "computerNamePrefix": "tpi", "adminUsername": "tpi",
            # nobody logs in (no inbound rule, no key kept): a random password, never stored
            "adminPassword": secrets.token_urlsafe(30) + "Aa1!",
            "customData": custom_data,
            "linuxConfiguration": {"disablePasswordAuthentication": False}},
        "storageProfile": {"imageReference": image.reference(), "osDisk": os_disk},
        "networkProfile": {"networkInterfaceConfigurations": [{"name": "tpi", "properties": {
            "primary": True, "ipConfigurations": [{"name": "tpi", "properties": {
                "subnet": {"id": subnet},
                "publicIPAddressConfiguration": {"name": "tpi", "properties": {
                    "idleTimeoutInMinutes": 15}}}}]}}]},
        "scheduledEventsProfile": {"terminateNotificationProfile": {
            "enable": True, "notBeforeTimeout": "PT5M"}},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
    }
    properties: dict[str, Any] = {
        "orchestrationMode": "Uniform", "upgradePolicy": {"mode": "Manual"},
        "overprovision": False, "singlePlacementGroup": False,
        "virtualMachineProfile": profile}
    if spot is not None:
        profile.update(priority="Spot", evictionPolicy="Delete",
                       billingProfile={"maxPrice": spot if spot > 0 else -1})
        hours = max(1, math.ceil((deadline - datetime.now(UTC).timestamp()) / 3600))
        properties["spotRestorePolicy"] = {"enabled": True,
                                           "restoreTimeout": f"PT{min(hours, 24 * 7)}H"}
    return {"location": location, "tags": dict(tags),
            "sku": {"name": size, "tier": "Standard", "capacity": capacity},
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity: {}}},
            "properties": properties}


def scale_set_id(arm: Arm, group: str, name: str) -> str:
    return resource_id(arm, group, "Microsoft.Compute/virtualMachineScaleSets", name)


async def create_scale_set(arm: Arm, group: str, name: str, body: dict) -> None:
    """The scale set; one that exists keeps its model and gets the wanted capacity (a
    stopped task brought back)."""
    path = scale_set_id(arm, group, name)
    existing = await get_scale_set(arm, group, name)
    if existing is None:
        await arm.call("PUT", path, version=v("Microsoft.Compute"), body=body,
                       what=f"create scale set {name}")
    elif (existing.get("sku") or {}).get("capacity") != body["sku"]["capacity"]:
        await resize(arm, group, name, body["sku"]["capacity"])


async def get_scale_set(arm: Arm, group: str, name: str) -> dict | None:
    return await arm.call("GET", scale_set_id(arm, group, name), version=v("Microsoft.Compute"),
                          ok=GONE, what=f"read scale set {name}")


async def resize(arm: Arm, group: str, name: str, capacity: int) -> None:
    await arm.call("PATCH", scale_set_id(arm, group, name), version=v("Microsoft.Compute"),
                   body={"sku": {"capacity": capacity}}, what=f"resize scale set {name}")


async def instances(arm: Arm, group: str, name: str) -> list[dict]:
    """The scale set's instances, with their instance views."""
    path = scale_set_id(arm, group, name) + "/virtualMachines"
    try:
        return [i async for i in arm.pages(path, version=v("Microsoft.Compute"),
                                           query={"$expand": "instanceView"})]
    except Exception as exc:
        if code_of(exc) in GONE:
            return []
        raise


async def delete_instances(arm: Arm, group: str, name: str, ids: list[str]) -> None:
    """Instances out of the scale set, its capacity lowered: nothing replaces them."""
    await arm.call("POST", scale_set_id(arm, group, name) + "/delete",
                   version=v("Microsoft.Compute"), body={"instanceIds": ids},
                   what=f"delete instances {', '.join(ids)} of {name}")


async def simulate_eviction(arm: Arm, group: str, name: str, instance: str) -> None:
    await arm.call("POST", scale_set_id(arm, group, name)
                   + f"/virtualMachines/{instance}/simulateEviction",
                   version=v("Microsoft.Compute"), what=f"evict instance {instance} of {name}")


async def delete_scale_set(arm: Arm, group: str, name: str) -> None:
    await arm.call("DELETE", scale_set_id(arm, group, name), version=v("Microsoft.Compute"),
                   ok=GONE, what=f"delete scale set {name}")


async def create_deadline(arm: Arm, group: str, name: str, location: str, capacity: int,
                          deadline: float, tags: Mapping[str, str]) -> None:
    """An autoscale setting that holds the scale set at 0 from the deadline on: the machines
    end at the deadline cloud-side, with or without an agent. Before it, no rule: capacity
    is what tpi and the replicas set."""
    start = datetime.fromtimestamp(deadline, UTC)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    target = scale_set_id(arm, group, name)
    await arm.call("PUT", resource_id(arm, group, "Microsoft.Insights/autoscalesettings",
                                      f"{name}-deadline"),
                   version=v("Microsoft.Insights"), what=f"create the deadline of {name}",
                   body={"location": location, "tags": dict(tags), "properties": {
                       "enabled": True, "targetResourceUri": target, "profiles": [
                           {"name": "until the deadline",
                            "capacity": {"minimum": "0", "maximum": str(max(capacity, 1)),
                                         "default": str(capacity)}, "rules": []},
                           {"name": "after the deadline",
                            "capacity": {"minimum": "0", "maximum": "0", "default": "0"},
                            "rules": [], "fixedDate": {
                                "timeZone": "UTC", "start": start.strftime(stamp),
                                "end": (start + timedelta(days=3650)).strftime(stamp)}}]}})


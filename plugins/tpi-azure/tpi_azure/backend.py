"""The Azure backend: a Virtual Machine Scale Set of task machines and a Blob prefix per task.

``steps`` lists the task's resources, each with its create and its delete (destroy deletes
them in reverse); each carries ``tpi-task``/``tpi-managed`` and the task's tags::

    resource group         the task's own, named as the task, in its location (or the
                           user's ``AZURE_DEFAULTS_GROUP``, never created or deleted)
    network                an NSG with no inbound rule, a virtual network and subnet behind it
    identity + roles       a user-assigned identity allowed the task's prefix of the
                           container (an ABAC condition), reading the agent bundles, reading
                           its own secret, and its own scale set (skipped with
                           ``permission_set``: the user's identity is used)
    environment secret     ``<id>-environment`` in the location's Key Vault (only with
                           values; never in CustomData)
    scale set              Uniform, capacity = parallelism, CustomData = the shared boot;
                           Spot with Try & Restore, so an evicted instance comes back
    deadline               an autoscale setting that holds the scale set at 0 from the
                           deadline on

The storage account and the Key Vault are shared by the tasks of a subscription and
location (group ``tpi-shared-LOCATION``), with a prefix per task in the container ``tpi``,
or ``storage.container``. Credentials are DefaultAzureCredential's (:mod:`tpi_azure.auth`)
and ``AZURE_SUBSCRIPTION_ID`` or the Azure CLI's default subscription; every call is REST on
the core's transport (:mod:`tpi_azure.arm`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from tpi_azure import boot, machines, resources
from tpi_azure.arm import MANAGEMENT_RESOURCE, Arm
from tpi_azure.auth import token_source
from tpi_core.backend import AGENT_PREFIX, Backend, Capability, Launch, Observation, TaskRef
from tpi_core.boot.script import pack, render
from tpi_core.errors import (
    PermissionDenied,
    ResourceNotFound,
    UsageError,
    check_fields,
)
from tpi_core.model import Event, Task
from tpi_core.steps import Step, creates
from tpi_core.storage import Storage
from tpi_core.tags import OwnTags

TAGS = OwnTags("tpi-task", "tpi-managed", "tpi-name", "tpi-container", "tpi-region")
"""tpi's own tag keys."""
SUBSCRIPTION_ENV = "AZURE_SUBSCRIPTION_ID"
GROUP_ENV = "AZURE_DEFAULTS_GROUP"
"""A resource group of the user's (the Azure CLI's default group) where apply puts tasks,
instead of a group of their own."""
CLI_PROFILE = "~/.azure/azureProfile.json"
CUSTOM_DATA_LIMIT = 65535
"""CustomData's most, in bytes before base64 (the boot script goes gzipped)."""
CONTAINER = "tpi"
"""The container of tpi's own storage account: a prefix per task."""
_IDENTITY = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                       r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$", re.I)


class AzureBackend(Backend):
    """Tasks on Virtual Machine Scale Sets, storage in Azure Blob."""

    NAME = "azure"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.SPOT, Capability.GPU,
                              Capability.FIND})
    AGENT = ("tpi-azure", "tpi_azure")
    SIZE_ALIASES = machines.SIZE_ALIASES

    def __init__(self, subscription: str | None = None):
        super().__init__()
        self._subscription = subscription
        self._arm: Arm | None = None
        self._tokens: Any = None
        self._lock = anyio.Lock()
        self._accounts: dict[str, tuple[dict, str]] = {}
        self._groups: dict[str, tuple[str, bool]] = {}

    async def arm(self) -> Arm:
        """ARM for the subscription (from the environment, else the Azure CLI's default),
        made once."""
        async with self._lock:
            if self._arm is None:
                subscription = self._subscription or os.environ.get(SUBSCRIPTION_ENV) \
                    or _cli_subscription()
                if not subscription:
                    raise UsageError("no Azure subscription: set AZURE_SUBSCRIPTION_ID, or "
                                     "`az account set --subscription ...`")
                self._tokens = token_source()

                async def token(resource: str) -> str:
                    return await self._tokens.get(resource)

                self._arm = Arm(subscription, token)
            return self._arm

    async def group_of(self, ref: TaskRef, new_in: str = "") -> tuple[str, bool]:
        """The task's resource group, and whether it is the task's own: the group named as
        the task, else the group its tagged resources are in (the user's). When nothing of
        the task exists (not kept: apply decides): ``new_in``, a group of the user's, else
        the task's own to be."""
        if ref.task_id not in self._groups:
            arm = await self.arm()
            if await resources.get_group(arm, ref.task_id) is not None:
                self._groups[ref.task_id] = (ref.task_id, True)
            elif tagged := await resources.tagged(arm, TAGS.task, ref.task_id):
                self._groups[ref.task_id] = (tagged[0]["id"].split("/")[4], False)
            else:
                return (new_in, False) if new_in else (ref.task_id, True)
        return self._groups[ref.task_id]

    # storage ---------------------------------------------------------------------------------

    async def own_bucket(self, ref: TaskRef) -> str:
        return CONTAINER

    async def _account(self, location: str, create: bool) -> tuple[dict, str]:
        """tpi's storage account of a location (created with ``create``) and its key; an
        account that does not exist is ``({"name": NAME}, "")``, not kept."""
        if location not in self._accounts:
            arm = await self.arm()
            group = resources.shared_group(location)
            name = resources.account_name(arm.subscription, location)
            if create:
                await resources.create_group(arm, group, location, {"tpi-managed": "true"})
                account = await resources.create_account(arm, group, name, location)
            else:
                account = await resources.get_account(arm, group, name)
                if account is None:
                    return {"name": name}, ""
            try:
                key = await resources.account_key(arm, account)
            except PermissionDenied:
                key = ""  # no listKeys: the caller's Entra token signs instead
            self._accounts[location] = (account, key)
        return self._accounts[location]

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        """The task's prefix: in the container ``tpi`` of the location's account, or
        ``storage.container`` (in ``container_opts.account``, else that account)."""
        bucket, prefix = await self.bucket_location(ref)
        return await self._blobs(ref, bucket, prefix, create is not None)

    async def agent_storage(self, ref: TaskRef) -> Storage:
        """``tpi-agent/`` of the task's container: shared by its tasks."""
        bucket, _ = await self.bucket_location(ref)
        return await self._blobs(ref, bucket, AGENT_PREFIX, False)

    async def _blobs(self, ref: TaskRef, container: str, prefix: str,
                     create: bool) -> Storage:
        from tpi_azure.storage import BlobStorage  # start-up cost: the HTTP stack, when used

        other = (ref.container_opts or {}).get("account", "")
        if other:
            url = f"az://{container}/{prefix}?account={other}"
            return self.kept_storage(url, lambda: BlobStorage.from_url(url))
        location = machines.region(ref.region)
        account, key = await self._account(location, create)
        name, endpoint = _endpoint(account)
        options = {"account": name, **({"endpoint_url": endpoint} if endpoint else {})}
        if "id" not in account:
            options["absent"] = f"tpi's storage account for {location} ({name}) does not exist"
        url = f"az://{container}/{prefix}"
        storage = self.kept_storage((url, name, "id" in account), lambda: BlobStorage(
            container, prefix, key=key, **options))
        if create:
            if container == CONTAINER and not ref.container:
                await storage.create_container()
            elif not await storage.exists_container():
                raise ResourceNotFound(f"storage.container: container {container!r} does not "
                                       f"exist in storage account {name}")
        return storage

    # create and delete -----------------------------------------------------------------------

    def validate(self, task: Task) -> None:
        """Size, region and image aliases and ``permission_set`` are usable (no request)."""
        check_fields(task, {"region": machines.region, "machine": machines.size,
                            "image": machines.image, "permission_set": _check_identity})

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        """Group, network, identity, secret, scale set, deadline (see the module
        docstring); deleted from the task id alone."""
        name = ref.task_id
        make = creates(_Creation(self, task, launch) if task and launch else None)
        deleting = _Deletion(self, ref)
        return [
            Step(f"resource group {name}", make("group"), deleting.group),
            Step(f"network {name}", make("network"), deleting.network),
            Step(f"managed identity {name}", make("identity"), deleting.identity),
            Step(f"secret {resources.secret_name(name)}", make("environment"),
                 deleting.environment),
            Step(f"scale set {name}", make("scale_set"), deleting.scale_set),
            Step(f"deadline {name}", make("deadline"), deleting.deadline),
        ]

    # read back -------------------------------------------------------------------------------

    async def observe(self, ref: TaskRef) -> Observation:
        """Instances running and wanted, and events from their instance views."""
        arm, (group, _) = await self.arm(), await self.group_of(ref)
        found = await resources.get_scale_set(arm, group, ref.task_id)
        if found is None:
            return Observation(False)
        instances = await resources.instances(arm, group, ref.task_id)
        running = [i for i in instances if _running(i)]
        events = [e for i in instances for e in instance_events(i)]
        created = [_time(i.get("properties", {}).get("timeCreated")) for i in running]
        return Observation(True, len(running), int((found.get("sku") or {}).get("capacity")
                                                   or 0),
                           tuple(sorted(events, key=lambda e: e.time)),
                           first_up=min((c for c in created if c), default=None))

    async def set_capacity(self, ref: TaskRef, machines_: int) -> None:
        """Resize the task's scale set (stop: 0, start: parallelism)."""
        arm, (group, _) = await self.arm(), await self.group_of(ref)
        if await resources.get_scale_set(arm, group, ref.task_id) is None:
            raise ResourceNotFound(f"the task's scale set {ref.task_id} does not exist")
        await resources.resize(arm, group, ref.task_id, machines_)

    async def lose_machine(self, ref: TaskRef, machine: str, grace: float) -> str:
        """A Spot instance: the scale set's own eviction rehearsal (``simulateEviction``:
        the Preempt notice, then the eviction, then Try & Restore brings capacity back). A
        regular one: deleted, and the capacity raised back."""
        arm, name = await self.arm(), ref.task_id
        group, _ = await self.group_of(ref)
        instance = machine.rsplit("_", 1)[-1]
        found = await resources.get_scale_set(arm, group, name)
        if found is None or not any(i.get("instanceId") == instance for i in
                                    await resources.instances(arm, group, name)):
            raise UsageError(f"instance {machine} is not in the scale set of task {name}")
        profile = (found.get("properties") or {}).get("virtualMachineProfile") or {}
        if profile.get("priority") == "Spot":
            await resources.simulate_eviction(arm, group, name, instance)
            return f"simulated the eviction of instance {machine}; Try & Restore replaces it"
        capacity = int((found.get("sku") or {}).get("capacity") or 0)
        await resources.delete_instances(arm, group, name, [instance])
        await resources.resize(arm, group, name, capacity)
        return f"deleted instance {machine}; the scale set makes another"

    async def find(self, region: str | None = None) -> list[TaskRef]:
        """Tasks from the tags of their resource groups and resources (a task in the user's
        group), and the task prefixes of tpi's containers (the given location's, else every
        location's that has one)."""
        arm = await self.arm()
        groups = await resources.tpi_groups(arm) + await resources.tagged(arm, TAGS.task)
        wanted = machines.region(region) if region else None
        by_location: dict[str, list[dict]] = {}
        for group in groups:
            location = (group.get("tags") or {}).get(TAGS.region) or group.get("location", "")
            if wanted is None or machines.region(location) == wanted:
                by_location.setdefault(machines.region(location), []).append(
                    group.get("tags") or {})
        locations = {wanted} if wanted else set(by_location) | set(
            machines.REGION_ALIASES.table.values())

        async def one(location: str) -> list[TaskRef]:
            prefixes: list[str] = []
            try:
                ref = TaskRef("", self.NAME, location)
                storage = await self._blobs(ref, CONTAINER, "", False)
                prefixes = await storage.top_prefixes()
            except ResourceNotFound:
                pass
            return TAGS.found(by_location.get(location, []), prefixes, self.NAME, location)

        return await self.find_in(sorted(locations), one)

    @classmethod
    def default_region(cls) -> str | None:
        """``AZURE_DEFAULTS_LOCATION``, as the Azure CLI reads it."""
        return os.environ.get("AZURE_DEFAULTS_LOCATION") or None

    async def aclose(self) -> None:
        """Close every storage handed out, the ARM connections and the token source."""
        await super().aclose()
        if self._arm is not None:
            await self._arm.aclose()
        if self._tokens is not None:
            await self._tokens.close()


def instance_events(instance: dict) -> list[Event]:
    """An instance's statuses (provisioning, power), each at its time when it says one."""
    name = instance.get("name", "")
    view = (instance.get("properties") or {}).get("instanceView") or {}
    events = []
    for status in view.get("statuses") or ():
        code = str(status.get("code") or "unknown").replace("/", "-").lower()
        when = _time(status.get("time")) or _time(
            (instance.get("properties") or {}).get("timeCreated")) or 0.0
        detail = status.get("message") or status.get("displayStatus") or ""
        events.append(Event(when, f"instance-{code}", f"{name}: {detail}".rstrip(": "),
                            source="azure"))
    return events


def _running(instance: dict) -> bool:
    properties = instance.get("properties") or {}
    if properties.get("provisioningState") not in ("Succeeded", "Creating", "Updating"):
        return False
    codes = [s.get("code", "") for s in (properties.get("instanceView") or {}).get(
        "statuses") or ()]
    power = [c for c in codes if c.startswith("PowerState/")]
    return not power or power[-1] in ("PowerState/running", "PowerState/starting")


def _time(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _endpoint(account: dict) -> tuple[str, str]:
    """The account's name and its blob endpoint when that is not the usual
    ``https://NAME.blob.core.windows.net/`` (an emulator's, a sovereign cloud's)."""
    name = account.get("name", "")
    endpoint = str(((account.get("properties") or {}).get("primaryEndpoints") or {}).get(
        "blob") or "").rstrip("/")
    if not endpoint or endpoint == f"https://{name}.blob.core.windows.net":
        return name, ""
    path = endpoint.split("://", 1)[-1].partition("/")[2]
    return (path.rsplit("/", 1)[-1] or name), endpoint


def _cli_subscription() -> str:
    """The Azure CLI's default subscription (``az account set``), if it has one."""
    path = Path(os.path.expanduser(CLI_PROFILE))
    try:
        profile = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return ""
    return next((s.get("id", "") for s in profile.get("subscriptions") or ()
                 if s.get("isDefault")), "")


def _check_identity(value: str) -> None:
    if value and not _IDENTITY.match(value):
        raise UsageError(f"permission_set {value!r} is not a user-assigned identity's id "
                         "(/subscriptions/S/resourceGroups/G/providers/"
                         "Microsoft.ManagedIdentity/userAssignedIdentities/NAME)")


def _caller(token: str) -> str:
    """The object id (``oid``) in an access token: who is calling, for the vault role."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("oid") or "")
    except (IndexError, ValueError, AttributeError):
        return ""


class _Creation:
    """The create side of one task's steps; each step looks up what it needs again, so a
    second run (apply twice, ``tpi start``) gives the same resources."""

    def __init__(self, backend: AzureBackend, task: Task, launch: Launch):
        self.backend, self.task, self.launch = backend, task, launch
        self.name, self.location = task.id, machines.region(task.region)
        self.tags = resources.tags_of(TAGS.tags(task.id, task.tags, task.name,
                                                task.storage.container, self.location))
        _check_identity(task.permission_set)

    async def group(self) -> None:
        """The task's own group; or the user's (``AZURE_DEFAULTS_GROUP``), which must exist
        and is never deleted; a task applied before keeps its group."""
        arm = await self.backend.arm()
        group, own = await self.backend.group_of(
            TaskRef.of(self.task), new_in=os.environ.get(GROUP_ENV, "").strip())
        self.group_name = group
        self.backend._groups[self.name] = (group, own)
        if own:
            await resources.create_group(arm, group, self.location, self.tags)
        elif await resources.get_group(arm, group) is None:
            raise ResourceNotFound(f"resource group {group} ({GROUP_ENV}) does not exist")

    async def network(self) -> None:
        self.subnet = await resources.create_network(await self.backend.arm(),
                                                     self.group_name, self.name,
                                                     self.location, self.tags)

    async def identity(self) -> None:
        arm = await self.backend.arm()
        if self.task.permission_set:
            self.ident = await resources.get_identity(arm, self.task.permission_set)
            return
        self.ident = await resources.create_identity(arm, self.group_name, self.name,
                                                     self.location, self.tags)
        principal = self.ident["principalId"]
        container, prefix = await self.backend.bucket_location(TaskRef.of(self.task))
        account = await self._account()
        scope = f"{account['id']}/blobServices/default/containers/{container}"
        await resources.assign(arm, scope, "Storage Blob Data Contributor", principal,
                               condition=resources.prefix_condition(prefix))
        await resources.assign(arm, scope, "Storage Blob Data Reader", principal,
                               condition=resources.prefix_condition(AGENT_PREFIX))

    async def environment(self) -> None:
        """The secret, then (a scope must exist) the identity's right to read it."""
        if not self.task.environment:
            return
        arm, vault = await self.backend.arm(), await self._vault()
        secret = resources.secret_name(self.name)
        await resources.put_secret(arm, vault, secret, self.task.environment, self.tags)
        if not self.task.permission_set:
            await resources.assign(arm, f"{vault['id']}/secrets/{secret}",
                                   "Key Vault Secrets User", self.ident["principalId"])

    async def scale_set(self) -> None:
        arm = await self.backend.arm()
        account = await self._account()
        vault = await self._vault() if self.task.environment else {}
        name, endpoint = _endpoint(account)
        script = pack(render(boot.machine_boot(
            self.launch, endpoint=endpoint or f"https://{name}.blob.core.windows.net",
            account=name, client_id=self.ident.get("clientId", ""),
            subscription=arm.subscription, group=self.group_name, scale_set=self.name,
            vault=resources.vault_uri(vault) if vault else "")), CUSTOM_DATA_LIMIT)
        size = machines.size(self.task.machine)
        body = resources.scale_set_body(
            location=self.location, size=size, capacity=self.task.parallelism,
            image=machines.image(self.task.image), disk_size=self.task.disk_size,
            spot=self.task.spot if self.task.spot >= 0 else None,
            identity=self.ident["id"], subnet=self.subnet, custom_data=script,
            tags=self.tags, deadline=self.launch.deadline)
        await resources.create_scale_set(arm, self.group_name, self.name, body)
        if not self.task.permission_set:  # its own scale set: leaving, the replicas' leases
            await resources.assign(arm, resources.scale_set_id(arm, self.group_name, self.name),
                                   "Virtual Machine Contributor", self.ident["principalId"])

    async def deadline(self) -> None:
        await resources.create_deadline(await self.backend.arm(), self.group_name, self.name,
                                        self.location, self.task.parallelism,
                                        self.launch.deadline, self.tags)

    async def _account(self) -> dict:
        return (await self.backend._account(self.location, True))[0]

    async def _vault(self) -> dict:
        """The location's Key Vault, made once, where the caller may write secrets: it is
        given Key Vault Secrets Officer there (when it may assign roles; else it must have
        the right already)."""
        arm = await self.backend.arm()
        group = resources.shared_group(self.location)
        name = resources.vault_name(arm.subscription, self.location)
        vault = await resources.get_vault(arm, group, name)
        if vault is None:
            await resources.create_group(arm, group, self.location, {"tpi-managed": "true"})
            vault = await resources.create_vault(arm, group, name, self.location,
                                                 self.ident.get("tenantId", ""))
        caller = _caller(await self.backend._tokens.get(MANAGEMENT_RESOURCE))
        if caller:
            with contextlib.suppress(PermissionDenied):
                await resources.assign(arm, vault["id"], "Key Vault Secrets Officer", caller,
                                       principal_type="")
        return vault


class _Deletion:
    """The delete side of a task's steps, from its id alone; each may run twice."""

    def __init__(self, backend: AzureBackend, ref: TaskRef):
        self.backend, self.ref, self.name = backend, ref, ref.task_id

    async def deadline(self) -> None:
        arm, group = await self.backend.arm(), await self._group()
        await arm.call("DELETE", resources.resource_id(
            arm, group, "Microsoft.Insights/autoscalesettings", f"{self.name}-deadline"),
            version=resources.v("Microsoft.Insights"), ok=resources.GONE,
            what=f"delete the deadline of {self.name}")

    async def scale_set(self) -> None:
        await resources.delete_scale_set(await self.backend.arm(), await self._group(),
                                         self.name)

    async def environment(self) -> None:
        arm = await self.backend.arm()
        location = await self._location()
        if location is None:
            return
        vault = await resources.get_vault(arm, resources.shared_group(location),
                                          resources.vault_name(arm.subscription, location))
        if vault is not None:
            await resources.delete_secret(arm, vault, resources.secret_name(self.name))

    async def identity(self) -> None:
        """The identity's role assignments (ARM keeps them after their principal is gone),
        then the identity."""
        arm = await self.backend.arm()
        path = resources.resource_id(arm, await self._group(),
                                     "Microsoft.ManagedIdentity/userAssignedIdentities",
                                     self.name)
        found = await arm.call("GET", path, version=resources.v("Microsoft.ManagedIdentity"),
                               ok=resources.GONE, what=f"read managed identity {self.name}")
        if found is None:
            return
        principal = (found.get("properties") or {}).get("principalId", "")
        if principal:
            for assignment in await resources.assignments_of(arm, arm.sub(), principal):
                await resources.unassign(arm, assignment)
        await arm.call("DELETE", path, version=resources.v("Microsoft.ManagedIdentity"),
                       ok=resources.GONE, what=f"delete managed identity {self.name}")

    async def network(self) -> None:
        arm, group = await self.backend.arm(), await self._group()
        for kind in ("virtualNetworks", "networkSecurityGroups"):
            await arm.call("DELETE", resources.resource_id(
                arm, group, f"Microsoft.Network/{kind}", self.name),
                version=resources.v("Microsoft.Network"), ok=resources.GONE,
                what=f"delete {kind[:-1]} {self.name}")

    async def group(self) -> None:
        """The task's own group; never the user's."""
        group, own = await self.backend.group_of(self.ref)
        if own:
            await resources.delete_group(await self.backend.arm(), group)

    async def _group(self) -> str:
        return (await self.backend.group_of(self.ref))[0]

    async def _location(self) -> str | None:
        """The task's location: its group's, else its ref's."""
        found = await resources.get_group(await self.backend.arm(), await self._group())
        if found is not None:
            return found.get("location") or None
        return machines.region(self.ref.region) if self.ref.region else None


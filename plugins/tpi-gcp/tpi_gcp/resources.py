"""One small async function per GCP resource of a task, on :class:`~tpi_gcp.rest.GoogleApis`.

Creates treat "already exists" as done and deletes "not found", so every function may run
twice. Compute Engine resources are named after the task id; the service account after a
digest of it (account ids are 6 to 30 characters).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tpi_core.errors import BackendError
from tpi_gcp.machines import Machine
from tpi_gcp.rest import GoogleApis

ALREADY = ("alreadyExists", "conflict")
GONE = ("notFound",)
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
FIREWALL_PRIORITY = 900
"""Above the default network's rules (65534): its allow-ssh no longer reaches the task."""
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")


def compute(project: str, path: str) -> str:
    """A Compute Engine path of the project (``global/firewalls``...)."""
    return f"/compute/v1/projects/{project}/{path}"


def account_id(task_id: str) -> str:
    """The task's service account id (``tpi-`` and 16 hex digits)."""
    return "tpi-" + hashlib.sha256(task_id.encode()).hexdigest()[:16]


def account_email(project: str, task_id: str) -> str:
    return f"{account_id(task_id)}@{project}.iam.gserviceaccount.com"


def secret_id(task_id: str) -> str:
    """The Secret Manager secret holding a task's environment values."""
    return f"{task_id}-environment"


def labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags made valid as GCE labels: lower case, ``[a-z0-9_-]``, 63 characters, keys that
    start with a letter (others are left out)."""
    found = {}
    for key, value in tags.items():
        key = _LABEL_BAD.sub("_", key.lower())[:63]
        if key and key[0].isalpha():
            found[key] = _LABEL_BAD.sub("_", str(value).lower())[:63]
    return found


# service account and its grants ------------------------------------------------------------

def grants(*, project: str, bucket: str, prefix: str, agent: str, region: str, group: str,
           secret: str) -> list[dict]:
    """What a task's machines may do, as conditioned project bindings: the task's prefix
    and the agent bundles of the bucket, its own secret, and leaving its own group."""
    objects = f"projects/_/buckets/{bucket}/objects/"
    where = (f'resource.name.startsWith("{objects}{prefix}/") || '
             f'resource.name.startsWith("{objects}{agent}/")') if prefix else (
        f'resource.name.startsWith("{objects}")')
    group_name = f"projects/{project}/regions/{region}/instanceGroupManagers/{group}"
    return [
        {"role": "roles/storage.objectUser",
         "condition": {"title": "tpi task prefix", "expression": where}},
        {"role": "roles/storage.objectViewer",  # listing is checked on the bucket
         "condition": {"title": "tpi task bucket",
                       "expression": f'resource.name == "projects/_/buckets/{bucket}"'}},
        {"role": "roles/secretmanager.secretAccessor",
         "condition": {"title": "tpi task environment", "expression":
                       f'resource.name.startsWith("projects/{project}/secrets/{secret}")'}},
        {"role": "roles/compute.instanceAdmin.v1",
         "condition": {"title": "tpi task group", "expression":
                       f'resource.name == "{group_name}" || resource.type == '
                       '"compute.googleapis.com/Instance"'}},
    ]


async def create_account(g: GoogleApis, task_id: str, bindings: Sequence[dict]) -> str:
    """The task's service account with its grants; its email."""
    email = account_email(g.project, task_id)
    await g.call("POST", f"/v1/projects/{g.project}/serviceAccounts", api="iam", ok=ALREADY,
                 body={"accountId": account_id(task_id),
                       "serviceAccount": {"displayName": f"tpi task {task_id}"[:100]}},
                 what=f"create service account {email}")
    await _edit_policy(g, email, bindings)
    return email


async def delete_account(g: GoogleApis, task_id: str) -> None:
    """The task's grants, then its service account."""
    email = account_email(g.project, task_id)
    await _edit_policy(g, email, ())
    await g.call("DELETE", f"/v1/projects/{g.project}/serviceAccounts/{email}", api="iam",
                 ok=GONE, what=f"delete service account {email}")


async def _edit_policy(g: GoogleApis, email: str, bindings: Sequence[dict]) -> None:
    """The project policy with exactly ``bindings`` for the account (read, edit, write with
    the etag read: a concurrent change makes the write fail, and it is tried again)."""
    member = f"serviceAccount:{email}"
    for _ in range(5):
        policy = await g.call("POST", f"/v1/projects/{g.project}:getIamPolicy",
                              api="resourcemanager", body={"options":
                                                           {"requestedPolicyVersion": 3}},
                              what="read the project's IAM policy") or {}
        kept = [b for b in policy.get("bindings", [])
                if member not in b.get("members", [])]
        kept += [{**b, "members": [member]} for b in bindings]
        if kept == policy.get("bindings", []):
            return
        policy.update(bindings=kept, version=3)
        written = await g.call("POST", f"/v1/projects/{g.project}:setIamPolicy",
                               api="resourcemanager", body={"policy": policy},
                               ok=("aborted", "ABORTED"), what="write the project's IAM policy")
        if written is not None:
            return
    raise BackendError("the project's IAM policy kept changing while tpi edited it")


# environment -----------------------------------------------------------------------------

async def put_environment(g: GoogleApis, task_id: str, values: Mapping[str, str],
                          tags: Mapping[str, str]) -> None:
    """The environment as one secret version (JSON); a new version replaces a stale one."""
    name = secret_id(task_id)
    await g.call("POST", f"/v1/projects/{g.project}/secrets", api="secretmanager",
                 query={"secretId": name}, ok=ALREADY, what=f"create secret {name}",
                 body={"replication": {"automatic": {}}, "labels": labels(tags)})
    data = base64.b64encode(json.dumps(dict(values)).encode()).decode()
    await g.call("POST", f"/v1/projects/{g.project}/secrets/{name}:addVersion",
                 api="secretmanager", body={"payload": {"data": data}},
                 what=f"store secret {name}")


async def get_environment(g: GoogleApis, task_id: str) -> dict[str, str]:
    """The stored environment; a task without one has none."""
    name = secret_id(task_id)
    found = await g.call("GET", f"/v1/projects/{g.project}/secrets/{name}/versions/"
                                "latest:access", api="secretmanager", ok=GONE,
                         what=f"read secret {name}")
    return json.loads(base64.b64decode(found["payload"]["data"])) if found else {}


async def delete_environment(g: GoogleApis, task_id: str) -> None:
    name = secret_id(task_id)
    await g.call("DELETE", f"/v1/projects/{g.project}/secrets/{name}", api="secretmanager",
                 ok=GONE, what=f"delete secret {name}")


# firewall, template, group -----------------------------------------------------------------

async def create_firewall(g: GoogleApis, name: str, ports: Sequence[int] = ()) -> None:
    """Ingress denied to the task's machines from everywhere (its network tag), above the
    default network's rules; with ``ports``, those are opened instead."""
    body: dict[str, Any] = {"name": name, "network": "global/networks/default",
                            "direction": "INGRESS", "priority": FIREWALL_PRIORITY,
                            "sourceRanges": ["0.0.0.0/0"], "targetTags": [name],
                            "description": f"tpi task {name}: no inbound connection"}
    if ports:
        body["allowed"] = [{"IPProtocol": "tcp", "ports": [str(p) for p in ports]}]
    else:
        body["denied"] = [{"IPProtocol": "all"}]
    await g.operate("POST", compute(g.project, "global/firewalls"), body=body, ok=ALREADY,
                    what=f"create firewall {name}")


async def delete_firewall(g: GoogleApis, name: str) -> None:
    await g.operate("DELETE", compute(g.project, f"global/firewalls/{name}"), ok=GONE,
                    what=f"delete firewall {name}")


def template_body(*, name: str, machine: Machine, image: str, disk_size: int, spot: bool,
                  account: str, startup_script: str, deadline: float,
                  tags: Mapping[str, str]) -> dict:
    """The instance template: the image, the disk, the GPUs, SPOT provisioning, the
    account, the startup script (nothing secret), and the deadline as every instance's
    termination time (the machines end at the deadline with or without an agent)."""
    disk = {"boot": True, "autoDelete": True, "initializeParams": {
        "sourceImage": image, "diskType": "pd-balanced"}}
    if disk_size > 0:
        disk["initializeParams"]["diskSizeGb"] = str(disk_size)
    scheduling: dict[str, Any] = {
        "terminationTime": datetime.fromtimestamp(deadline, UTC).isoformat(
            timespec="seconds").replace("+00:00", "Z"),
        "instanceTerminationAction": "DELETE", "automaticRestart": not spot,
        "onHostMaintenance": "TERMINATE" if (spot or machine.gpus) else "MIGRATE"}
    if spot:
        scheduling["provisioningModel"] = "SPOT"
    properties: dict[str, Any] = {
        "machineType": machine.type, "disks": [disk],
        "networkInterfaces": [{"network": "global/networks/default", "accessConfigs": [
            {"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}],
        "serviceAccounts": [{"email": account, "scopes": [SCOPE]}],
        "metadata": {"items": [{"key": "startup-script", "value": startup_script}]},
        "tags": {"items": [name]}, "labels": labels(tags), "scheduling": scheduling}
    if machine.accelerator:
        properties["guestAccelerators"] = [{"acceleratorType": machine.accelerator,
                                            "acceleratorCount": machine.count}]
    return {"name": name, "description": f"tpi task {name}", "properties": properties}


async def create_template(g: GoogleApis, body: dict) -> None:
    await g.operate("POST", compute(g.project, "global/instanceTemplates"), body=body,
                    ok=ALREADY, what=f"create instance template {body['name']}")


async def delete_template(g: GoogleApis, name: str) -> None:
    await g.operate("DELETE", compute(g.project, f"global/instanceTemplates/{name}"), ok=GONE,
                    what=f"delete instance template {name}")


def group_path(project: str, region: str, name: str = "") -> str:
    path = compute(project, f"regions/{region}/instanceGroupManagers")
    return f"{path}/{name}" if name else path


async def create_group(g: GoogleApis, region: str, name: str, size: int,
                       owner: Mapping[str, str]) -> None:
    """The regional managed instance group at ``size`` (a stopped task's, brought back);
    its description carries tpi's own tags (a group has no labels)."""
    existing = await get_group(g, region, name)
    if existing is None:
        await g.operate("POST", group_path(g.project, region), ok=ALREADY,
                        what=f"create instance group {name}", body={
                            "name": name, "baseInstanceName": name, "targetSize": size,
                            "instanceTemplate": compute(
                                g.project, f"global/instanceTemplates/{name}"),
                            "description": json.dumps(dict(owner), sort_keys=True)})
    elif existing.get("targetSize") != size:
        await resize(g, region, name, size)


async def get_group(g: GoogleApis, region: str, name: str) -> dict | None:
    return await g.call("GET", group_path(g.project, region, name), ok=GONE,
                        what=f"read instance group {name}")


async def resize(g: GoogleApis, region: str, name: str, size: int) -> None:
    await g.operate("POST", group_path(g.project, region, name) + f"/resize?size={size}",
                    what=f"resize instance group {name}")


async def managed_instances(g: GoogleApis, region: str, name: str) -> list[dict]:
    """The group's instances, with their status, current action and last errors."""
    found = await g.call("POST", group_path(g.project, region, name) + "/listManagedInstances",
                         ok=GONE, what=f"list the instances of {name}") or {}
    return found.get("managedInstances") or []


async def delete_group(g: GoogleApis, region: str, name: str) -> None:
    """The group and its instances."""
    await g.operate("DELETE", group_path(g.project, region, name), ok=GONE,
                    what=f"delete instance group {name}")


async def leave_group(g: GoogleApis, region: str, name: str, instance: str) -> None:
    """One instance out of the group, its target size lowered: nothing replaces it."""
    await g.operate("POST", group_path(g.project, region, name) + "/deleteInstances",
                    body={"instances": [instance]}, what=f"leave instance group {name}")


async def tpi_groups(g: GoogleApis, region: str) -> list[dict]:
    """The groups of a region whose name is a tpi task's."""
    return [item async for item in g.pages(group_path(g.project, region), "items",
                                            query={"filter": 'name eq "tpi-.*"'})]


async def delete_instance(g: GoogleApis, instance_url: str) -> None:
    """Delete one instance (its group, keeping its size, makes another: a preemption)."""
    path = instance_url[instance_url.index("/compute/"):] if "/compute/" in instance_url \
        else compute(g.project, instance_url)
    await g.operate("DELETE", path, ok=GONE, what=f"delete instance {path.rsplit('/', 1)[-1]}")


# bucket -------------------------------------------------------------------------------------

async def create_bucket(g: GoogleApis, bucket: str, region: str) -> None:
    """The tpi bucket of a project and region: uniform access, labelled; existing is fine."""
    await g.call("POST", "/storage/v1/b", api="storage", query={"project": g.project},
                 ok=ALREADY, what=f"create bucket {bucket}", body={
                     "name": bucket, "location": region,
                     "labels": {"tpi-managed": "true"},
                     "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}}})


async def bucket_exists(g: GoogleApis, bucket: str) -> bool:
    return await g.call("GET", f"/storage/v1/b/{bucket}", api="storage", ok=GONE,
                        what=f"read bucket {bucket}") is not None


async def task_prefixes(g: GoogleApis, bucket: str) -> list[str]:
    """The top-level prefixes of a bucket (one per task in the tpi bucket)."""
    found = await g.call("GET", f"/storage/v1/b/{bucket}/o", api="storage", ok=GONE,
                         query={"delimiter": "/", "fields": "prefixes"},
                         what=f"list bucket {bucket}") or {}
    return [p.rstrip("/") for p in found.get("prefixes") or []]

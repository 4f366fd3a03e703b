"""The GCP backend: a regional managed instance group of task machines and a GCS prefix per
task.

``steps`` lists the task's resources, each with its create and its delete (destroy deletes
them in reverse); those that take labels carry ``tpi-task``/``tpi-managed`` and the task's
tags made valid as labels, a group (which takes none) carries tpi's tags in its
description::

    service account + grants    its own prefix and the bucket's agent bundles, its secret,
                                its own group (skipped with ``permission_set``: the user's
                                account is used); conditioned bindings on the project
    environment secret          Secret Manager ``<id>-environment`` (only with values)
    firewall                    ingress denied to the task's network tag, above the default
                                network's rules (their allow-ssh no longer reaches it)
    instance template           image, disk, GPUs, SPOT, the account, the startup script
                                (nothing secret), the deadline as termination time
    instance group              regional, size = parallelism, recreating lost instances

Storage is one tpi bucket per project and region (``tpi-<project>-<region>``) with a prefix
per task, or ``storage.container``. Credentials are Application Default Credentials and
``GOOGLE_CLOUD_PROJECT``; every call is REST on the core's transport (:mod:`tpi_gcp.rest`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio

from tpi_core.backend import AGENT_PREFIX, Backend, Capability, Launch, Observation, TaskRef
from tpi_core.boot.script import render
from tpi_core.errors import PermissionDenied, ResourceNotFound, TpiError, UsageError, check_fields
from tpi_core.model import Event, Task
from tpi_core.steps import Step, creates
from tpi_core.storage import Storage, split_url
from tpi_core.tags import OwnTags
from tpi_gcp import auth, boot, machines, resources
from tpi_gcp.rest import ENDPOINT_ENV, GoogleApis

TAGS = OwnTags("tpi-task", "tpi-managed", "tpi-name", "tpi-container", "tpi-region")
"""tpi's own keys, in labels and in a group's description."""
PROJECT_ENV = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT")
_ACCOUNT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]@[a-z][-a-z0-9.:]+"
                      r"\.iam\.gserviceaccount\.com$")
_LIVE = ("PROVISIONING", "STAGING", "RUNNING")


class GCPBackend(Backend):
    """Tasks on regional managed instance groups, storage in GCS."""

    NAME = "gcp"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.SPOT, Capability.GPU,
                              Capability.FIND})
    AGENT = ("tpi-gcp", "tpi_gcp")
    SIZE_ALIASES = machines.SIZE_ALIASES

    def __init__(self, project: str | None = None):
        super().__init__()
        self._project = project
        self._apis: GoogleApis | None = None
        self._token: Any = None
        self._lock = anyio.Lock()

    async def apis(self) -> GoogleApis:
        """The project's APIs (the project from the environment, else from ADC), made once:
        the regions of a search ask for them all at once."""
        async with self._lock:
            return await self._open_apis()

    async def _open_apis(self) -> GoogleApis:
        if self._apis is None:
            fake = bool(os.environ.get(ENDPOINT_ENV))
            project = self._project or next(
                (os.environ[n] for n in PROJECT_ENV if os.environ.get(n)), "")
            with _credentials():
                if not fake:
                    self._token = auth.token_source(resources.SCOPE)
                if not project and self._token is not None:
                    project = await self._token.get_project() or ""
            if not project:
                raise UsageError("no GCP project: set GOOGLE_CLOUD_PROJECT, or "
                                 "`gcloud config set project ...`")

            async def token() -> str | None:
                if self._token is None:
                    return None
                with _credentials():
                    return await self._token.get()

            self._apis = GoogleApis(project, token)
        return self._apis

    # storage ---------------------------------------------------------------------------------

    async def own_bucket(self, ref: TaskRef) -> str:
        """``tpi-<project>-<region>``."""
        g = await self.apis()
        return f"tpi-{g.project}-{machines.region(ref.region)}"[:63]

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        """The task's prefix: in the tpi bucket of the project and region, or the container."""
        bucket, prefix = await self.bucket_location(ref)
        if create:
            g = await self.apis()
            if not ref.container:
                await resources.create_bucket(g, bucket, machines.region(ref.region))
            elif not await resources.bucket_exists(g, bucket):
                raise ResourceNotFound(f"storage.container: bucket {bucket!r} does not exist "
                                       "or is not readable")
        return self._gcs(f"gs://{bucket}/{prefix}")

    async def agent_storage(self, ref: TaskRef) -> Storage:
        """``tpi-agent/`` of the task's bucket: shared by the bucket's tasks."""
        bucket, _ = await self.bucket_location(ref)
        return self._gcs(f"gs://{bucket}/{AGENT_PREFIX}")

    def _gcs(self, url: str) -> Storage:
        from tpi_gcp.storage import GCSStorage  # start-up cost: the HTTP stack, when used

        return self.kept_storage(url, lambda: GCSStorage.from_url(url))

    # create and delete -----------------------------------------------------------------------

    def validate(self, task: Task) -> None:
        """Size, region and image aliases and ``permission_set`` are usable (no request)."""
        check_fields(task, {"region": machines.region, "machine": machines.machine,
                            "image": machines.image, "permission_set": _check_account})

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        """Account, secret, firewall, template, group (see the module docstring); deleted
        from the task id alone."""
        name, region = ref.task_id, machines.region(ref.region)
        make = creates(_Creation(self, task, launch) if task and launch else None)

        async def g() -> GoogleApis:
            return await self.apis()

        return [
            Step(f"service account {resources.account_id(name)}", make("account"),
                 lambda: _then(g, resources.delete_account, name)),
            Step(f"secret {resources.secret_id(name)}", make("environment"),
                 lambda: _then(g, resources.delete_environment, name)),
            Step(f"firewall {name}", make("firewall"),
                 lambda: _then(g, resources.delete_firewall, name)),
            Step(f"instance template {name}", make("template"),
                 lambda: _then(g, resources.delete_template, name)),
            Step(f"instance group {name} ({region})", make("group"),
                 lambda: _then(g, resources.delete_group, region, name)),
        ]

    # read back -------------------------------------------------------------------------------

    async def observe(self, ref: TaskRef) -> Observation:
        """Instances running and wanted, and events from the group's instances."""
        g, region = await self.apis(), machines.region(ref.region)
        group = await resources.get_group(g, region, ref.task_id)
        if group is None:
            return Observation(False)
        instances = await resources.managed_instances(g, region, ref.task_id)
        running = [i for i in instances if i.get("instanceStatus") in _LIVE
                   and i.get("currentAction") in (None, "NONE", "CREATING", "VERIFYING")]
        events = [e for i in instances for e in instance_events(i)]
        return Observation(True, len(running), int(group.get("targetSize") or 0),
                           tuple(sorted(events, key=lambda e: e.time)))

    async def set_capacity(self, ref: TaskRef, machines_: int) -> None:
        """Resize the task's group (stop: 0, start: parallelism)."""
        g = await self.apis()
        region = machines.region(ref.region)
        if await resources.get_group(g, region, ref.task_id) is None:
            raise ResourceNotFound(f"the task's instance group {ref.task_id} does not exist")
        await resources.resize(g, region, ref.task_id, machines_)

    async def lose_machine(self, ref: TaskRef, machine: str, grace: float) -> str:
        """Delete the instance without lowering the group's size, as a preemption does; the
        group recreates it."""
        g, region = await self.apis(), machines.region(ref.region)
        for instance in await resources.managed_instances(g, region, ref.task_id):
            if instance.get("instance", "").rsplit("/", 1)[-1] == machine:
                await resources.delete_instance(g, instance["instance"])
                return f"deleted instance {machine}; its group recreates it"
        raise UsageError(f"instance {machine} is not in the group of task {ref.task_id}")

    async def find(self, region: str | None = None) -> list[TaskRef]:
        """Tasks of a region (default: every region alias) from their groups and the task
        prefixes of the tpi bucket."""
        async def one(name: str) -> list[TaskRef]:
            g = await self.apis()
            owners = []
            for group in await resources.tpi_groups(g, name):
                try:
                    owners.append(json.loads(group.get("description") or "{}"))
                except ValueError:
                    continue
            bucket = await self.own_bucket(TaskRef("", self.NAME, name))
            prefixes = await resources.task_prefixes(g, bucket)
            return TAGS.found(owners, prefixes, self.NAME, name)

        regions = [region] if region else sorted(set(machines.REGION_ALIASES.table.values()))
        return await self.find_in(regions, one)

    @classmethod
    def default_region(cls) -> str | None:
        """``CLOUDSDK_COMPUTE_REGION``, as gcloud reads it."""
        return os.environ.get("CLOUDSDK_COMPUTE_REGION") or None

    async def aclose(self) -> None:
        """Close every storage handed out, the API connections and the token."""
        await super().aclose()
        if self._apis is not None:
            await self._apis.aclose()
        if self._token is not None:
            await self._token.close()


def instance_events(instance: dict) -> list[Event]:
    """An instance's state, and the errors of its last creation attempt."""
    name = instance.get("instance", "").rsplit("/", 1)[-1]
    when = time.time()  # the group tells each instance's state now, not since when
    status = str(instance.get("instanceStatus") or instance.get("currentAction") or "unknown")
    events = [Event(when, f"instance-{status.lower()}", name, source="gcp")]
    for error in ((instance.get("lastAttempt") or {}).get("errors") or {}).get("errors") or []:
        events.append(Event(when, "instance-error", f"{name}: {error.get('code', '')}: "
                                                    f"{error.get('message', '')}", source="gcp"))
    return events


async def _then(apis, action, *args) -> None:
    await action(await apis(), *args)


@contextlib.contextmanager
def _credentials() -> Iterator[None]:
    """Application Default Credentials that cannot be had (no file, no metadata server, a
    refused token) as one clear error: a search over every cloud skips this one."""
    try:
        yield
    except TpiError:
        raise
    except Exception as exc:
        raise PermissionDenied(f"no usable GCP credentials (Application Default Credentials: "
                               f"`gcloud auth application-default login`, or "
                               f"GOOGLE_APPLICATION_CREDENTIALS): {type(exc).__name__}: {exc}"
                               ) from exc


def _check_account(value: str) -> None:
    if value and not _ACCOUNT.match(value):
        raise UsageError(f"permission_set {value!r} is not a service account email "
                         "(NAME@PROJECT.iam.gserviceaccount.com)")


class _Creation:
    """The create side of one task's steps; each step looks up what it needs again, so a
    second run (apply twice, ``tpi start``) gives the same resources."""

    def __init__(self, backend: GCPBackend, task: Task, launch: Launch):
        self.backend, self.task, self.launch = backend, task, launch
        self.name, self.region = task.id, machines.region(task.region)
        self.machine = machines.machine(task.machine)
        self.tags = resources.labels(TAGS.tags(task.id, task.tags, task.name))
        _check_account(task.permission_set)

    async def account(self) -> None:
        g = await self.backend.apis()
        if self.task.permission_set:
            self.email = self.task.permission_set
            return
        bucket, prefix = split_url(self.launch.storage_url)
        self.email = await resources.create_account(g, self.name, resources.grants(
            project=g.project, bucket=bucket, prefix=prefix, agent=AGENT_PREFIX,
            region=self.region, group=self.name, secret=resources.secret_id(self.name)))

    async def environment(self) -> None:
        if self.task.environment:
            await resources.put_environment(await self.backend.apis(), self.name,
                                            self.task.environment, self.tags)

    async def firewall(self) -> None:
        await resources.create_firewall(await self.backend.apis(), self.name)

    async def template(self) -> None:
        g = await self.backend.apis()
        script = render(boot.machine_boot(self.launch, project=g.project, region=self.region,
                                          group=self.name))
        await resources.create_template(g, resources.template_body(
            name=self.name, machine=self.machine, image=machines.image(self.task.image),
            disk_size=self.task.disk_size, spot=self.task.spot >= 0, account=self.email,
            startup_script=script, deadline=self.launch.deadline, tags=self.tags))

    async def group(self) -> None:
        owner = TAGS.tags(self.task.id, {}, self.task.name, self.task.storage.container,
                          self.task.region)
        await resources.create_group(await self.backend.apis(), self.region, self.name,
                                     self.task.parallelism, owner)

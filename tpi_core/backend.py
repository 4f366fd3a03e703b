"""The backend interface: one abstract class per extension point (hatch's habit).

A backend owns a cloud's compute and hands out its object storage. Everything a task
reports (status, logs, events of its agents) lives in that storage and is read by the core;
a backend only adds what its machines look like from the cloud's side.

Writing a backend takes two files: a package with a :class:`Backend` subclass, and an entry
point in its ``pyproject.toml``::

    [project.entry-points."tpi.backends"]
    mycloud = "tpi_mycloud.backend:MyCloudBackend"

Contracts every implementation keeps:

- ``storage`` and every step of ``steps`` are idempotent: calling them twice gives the same
  result as once, and a delete of something gone succeeds. ``steps`` is the one list of a
  task's resources: each :class:`~tpi_core.steps.Step` pairs a create with its delete, and
  built from the ref alone (for ``destroy``) it lists the same resources.
- ``create_steps`` returns once the cloud has *accepted* the resources; it never waits for
  machines to boot. The cloud (scaling group, Job, supervisor) runs and recovers the task.
- Nothing secret goes into user-data, metadata, labels or logs: environment values reach
  the machine through a task-scoped secret store, never through startup data.
- Errors leave a backend only as :mod:`tpi_core.errors` types, mapped once at the SDK call
  site; :class:`~tpi_core.errors.TransientError` means "try again later".
- ``observe`` and ``find`` are read-only and fast (a handful of API calls).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from tpi_core.agent.lease import holder
from tpi_core.concurrent import task_group
from tpi_core.errors import BackendError, TpiError, UsageError
from tpi_core.machines import Aliases
from tpi_core.model import Event, Task, frozen_map
from tpi_core.retry import poll
from tpi_core.steps import Step
from tpi_core.storage import Storage

if TYPE_CHECKING:
    from tpi_core.boot.bundle import Bundle


class Capability(enum.Enum):
    """Optional abilities a backend declares in ``CAPABILITIES``."""

    STOP_START = "stop-start"
    SPOT = "spot"
    GPU = "gpu"
    FIND = "find"


@dataclass(frozen=True, slots=True)
class TaskRef:
    """What identifies a task's resources without its tasks file (from the index or tags)."""

    task_id: str
    cloud: str
    region: str
    name: str = ""
    container: str = ""
    container_opts: Mapping[str, str] = field(default_factory=frozen_map)
    tags: Mapping[str, str] = field(default_factory=frozen_map)
    """The task's own tags, when the ref comes from a tasks file (for what it creates)."""

    @classmethod
    def of(cls, task: Task) -> TaskRef:
        """The reference of a loaded task."""
        return cls(task.id, task.cloud, task.region, task.name, task.storage.container,
                   task.storage.container_opts, task.tags)

    def container_path(self, root: str = "a bucket root") -> tuple[str, str]:
        """``storage.container`` (``bucket[/path]``) as ``(bucket, prefix)``; the prefix is
        the path, else the task id. A container that names its bucket's ``root`` (``bucket/``)
        is refused: destroy deletes the task's prefix, which would be everything in it."""
        bucket, slash, path = self.container.partition("/")
        if slash and not path.strip("/"):
            raise UsageError(f"storage.container {self.container!r} names {root}; destroy "
                             "deletes the task's prefix, so give a path")
        return bucket, path.strip("/") or self.task_id


@dataclass(frozen=True, slots=True)
class Observation:
    """What the cloud shows of a task's compute."""

    exists: bool
    machines: int = 0
    desired: int = 0
    events: tuple[Event, ...] = ()
    lost: bool = False
    """What runs and recovers the task is gone while it still wants machines (a local
    supervisor killed): nothing will run it until ``apply`` or ``start`` brings it back."""
    first_up: float | None = None
    """When the first of the running machines came up (epoch seconds), if the cloud says."""
    failed: Mapping[int, str] = field(default_factory=frozen_map)
    """Replicas the cloud gave up on before their agent could say (a container that cannot
    start), by replica, with why; a replica whose report is final keeps it."""
    waiting: Mapping[int, str] = field(default_factory=frozen_map)
    """Why replicas the cloud wants are not running yet (an image that cannot be pulled, no
    node that fits), by replica."""


@dataclass(frozen=True, slots=True)
class Launch:
    """What ``create_steps`` needs besides the task: where its storage is, and where the
    agent bundle its machines install is (for a backend with ``AGENT``)."""

    storage_url: str
    deadline: float
    agent_url: str = ""
    """URL of the agent bundle (``<agent_storage>/<digest>``); empty without ``AGENT``."""
    agent_digest: str = ""
    agent_wheels: tuple[str, ...] = ()
    """The bundle's wheels, by file name."""
    agent_python: str = ""
    """The bundle's standalone Python archive, by file name, when it has one."""


@dataclass(frozen=True, slots=True)
class MachineType:
    """One row of ``tpi machines``: a size alias and what it means on this backend."""

    alias: str
    native: str
    detail: str = ""


AGENT_PREFIX = "tpi-agent"
"""Where a cloud keeps agent bundles in the bucket of :meth:`Backend.bucket_location`, one
``<digest>/`` each (shared by the bucket's tasks, never destroyed with one: a bundle is
small)."""


class Backend(ABC):
    """A cloud (or this computer) that runs tasks.

    The engine calls, for ``apply``: :meth:`storage` (creates the container), uploads the
    workdir into it, then runs :meth:`create_steps`. For ``destroy``: downloads the output,
    runs :meth:`delete_steps` in reverse, then deletes the task's storage prefix. Both come
    from :meth:`steps`. A subclass with an ``__init__`` calls ``super().__init__()``.
    """

    NAME: ClassVar[str]
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset()
    AGENT: ClassVar[tuple[str, str] | None] = None
    """``(distribution, import package)`` of the plugin a machine of this backend runs the
    agent with, e.g. ``("tpi-aws", "tpi_aws")``. When set, apply puts an agent bundle
    (:mod:`tpi_core.boot.bundle`) into :meth:`agent_storage` and passes its URL in
    :class:`Launch`; the machines boot with :func:`tpi_core.boot.script.render`."""
    AGENT_VENDORED: ClassVar[tuple[str, ...]] = ()
    """Third-party distributions whose wheels the bundle carries (pure Python): for
    machines that install it with no package index (a pod, from a ConfigMap)."""
    SIZE_ALIASES: ClassVar[Aliases | None] = None
    """The backend's size aliases, for ``tpi machines`` (:func:`tpi_core.machines.load`)."""

    def __init__(self) -> None:
        self._storages: dict[Hashable, Storage] = {}
        self._bundles: dict[tuple, Bundle] = {}

    def kept_storage(self, key: Hashable, make: Callable[[], Storage], *,
                     renew: bool = False) -> Storage:
        """The storage kept under ``key``, made by ``make`` the first time (and again with
        ``renew``): callers ask for a task's storage again and again (status, logs), and
        :meth:`aclose` closes every one handed out."""
        if renew or key not in self._storages:
            self._storages[key] = make()
        return self._storages[key]

    def validate(self, task: Task) -> None:
        """Raise :class:`~tpi_core.errors.UsageError` for settings this backend cannot use
        (an unknown size alias, a malformed ``permission_set``), before anything is created.
        Pure: no request is made."""

    @abstractmethod
    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        """The storage rooted at the task's prefix.

        ``create`` is the task being applied: make its container first (idempotent), with
        whatever of the task that takes (a claim's size, a bucket's tags, a server's image).
        """

    async def bucket_location(self, ref: TaskRef) -> tuple[str, str]:
        """``(bucket, prefix)`` of a task on an object store: ``storage.container``
        (``bucket[/path]``) when set, else the backend's own bucket (:meth:`own_bucket`)
        and the task id. Clouds share it; a cluster's claims have no such bucket."""
        if ref.container:
            return ref.container_path()
        return await self.own_bucket(ref), ref.task_id

    async def own_bucket(self, ref: TaskRef) -> str:
        """tpi's bucket for the task's region: one per account (AWS) or project (GCP) and
        region, or per storage account (Azure). Only backends on an object store have one."""
        raise NotImplementedError(f"the {self.NAME} backend keeps no bucket of its own")

    def agent_distributions(self, ref: TaskRef) -> list[tuple[str, str]]:
        """The tpi distributions the task's machines run (besides the core): :attr:`AGENT`."""
        return [self.AGENT] if self.AGENT else []

    def agent_bundle(self, ref: TaskRef) -> Bundle:
        """The agent bundle of the task's machines, built once per set of distributions (a
        blocking call: it reads and zips the installed packages)."""
        # packaging: only for a backend with machines
        from tpi_core.boot.bundle import build

        key = (tuple(self.agent_distributions(ref)), self.AGENT_VENDORED)
        if key not in self._bundles:
            self._bundles[key] = build(list(key[0]), vendored=self.AGENT_VENDORED)
        return self._bundles[key]

    async def publish_agent(self, ref: TaskRef, built: Bundle) -> tuple[str, bool]:
        """Put the bundle where the task's machines read it: its URL, and whether it was
        uploaded now (else it was in place already). Default: ``<digest>/`` under
        :meth:`agent_storage`."""
        from tpi_core.boot.bundle import publish

        place = await self.agent_storage(ref)
        prefix, uploaded = await publish(built, place)
        return place.child(prefix).url, uploaded

    async def agent_storage(self, ref: TaskRef) -> Storage:
        """Where agent bundles are kept for the task, one ``<digest>/`` each; the task's
        machines must be able to read it. Default: ``.tpi-agent/`` of the task's storage
        (not shared); a cloud shares one place between the tasks of an account."""
        return (await self.storage(ref)).child(".tpi-agent")

    @abstractmethod
    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        """The resources of a task in creation order, the last one starting its machines,
        each with its create and its delete. With ``task`` and ``launch`` (apply) the
        creates make them; from ``ref`` alone (destroy) only the deletes do anything."""

    def create_steps(self, task: Task, launch: Launch) -> Sequence[Step]:
        """:meth:`steps` of a task being applied."""
        return self.steps(TaskRef.of(task), task, launch)

    def delete_steps(self, ref: TaskRef) -> Sequence[Step]:
        """:meth:`steps` from the task's ref alone, for deletion in reverse."""
        return self.steps(ref)

    @abstractmethod
    async def observe(self, ref: TaskRef) -> Observation:
        """How many machines the task has now and the cloud's events about them."""

    async def set_capacity(self, ref: TaskRef, machines: int) -> None:
        """Scale the task's group (``tpi stop`` to 0, ``tpi start`` back); keeps storage."""
        raise BackendError(f"backend {self.NAME!r} cannot stop or start tasks")

    async def preempt(self, ref: TaskRef, replica: int, grace: float) -> str:
        """Rehearse a spot loss of one replica's machine (``tpi debug preempt``): what
        happened, in one line. By default, for a cloud whose machines claim replicas by
        lease (:mod:`tpi_core.agent.lease`): the lease's holder is lost through
        :meth:`lose_machine`."""
        machine = await holder(await self.storage(ref), replica)
        if machine is None:
            raise UsageError(f"replica {replica} of task {ref.task_id} holds no machine "
                             "(not started yet?)")
        lost = await self.lose_machine(ref, machine, grace)
        return f"preempted replica {replica} of task {ref.task_id}: {lost}"

    async def lose_machine(self, ref: TaskRef, machine: str, grace: float) -> str:
        """What a spot loss does to one machine of the task, as the cloud does it (its
        group replaces the machine); what was done, in a few words."""
        raise BackendError(f"backend {self.NAME!r} cannot rehearse a preemption")

    async def wait_stopped(self, ref: TaskRef, timeout: float) -> bool:
        """After ``set_capacity(ref, 0)``: wait until no machine of the task runs any more,
        so each agent's final flush is in storage; False when ``timeout`` passed first.
        Default: until :meth:`observe` counts no machine."""

        async def stopped() -> bool:
            return not (await self.observe(ref)).machines

        return await poll(stopped, timeout, 1.0)

    async def find(self, region: str | None = None) -> list[TaskRef]:
        """Every tpi task this backend finds by its names and tags, with no local index."""
        return []

    @staticmethod
    async def find_in(regions: Sequence[str],
                      find: Callable[[str], Awaitable[list[TaskRef]]]) -> list[TaskRef]:
        """What ``find`` answers for each region, asked of all at once, sorted by region
        and id (for :meth:`find` over every region): a region that fails (one the account
        may not use) is skipped, unless every region fails."""
        found: list[TaskRef] = []
        failed: list[TpiError] = []

        async def one(region: str) -> None:
            try:
                found.extend(await find(region))
            except TpiError as exc:
                failed.append(exc)

        async with task_group() as group:
            for region in regions:
                group.start_soon(one, region)
        if failed and len(failed) == len(regions):
            raise failed[0]
        return sorted(found, key=lambda r: (r.region, r.task_id))

    @classmethod
    def default_region(cls) -> str | None:
        """The region of a task whose file gives none, from this computer's configuration
        of the cloud (its CLI's environment variables and files), read with no request;
        None leaves :data:`~tpi_core.model.DEFAULT_REGION`."""
        return None

    @classmethod
    def machine_types(cls) -> list[MachineType]:
        """The size aliases of ``tpi machines``: by default :attr:`SIZE_ALIASES`, with the
        native names of each (the preferred first)."""
        sizes = cls.SIZE_ALIASES
        if sizes is None:
            return []
        return [MachineType(alias, native if isinstance(native, str) else ", ".join(native),
                            sizes.details.get(alias, "")) for alias, native in sizes.table.items()]

    async def aclose(self) -> None:
        """Close every storage handed out by :meth:`kept_storage`; a subclass closes its
        clients too, after ``await super().aclose()``. Safe to call twice."""
        storages, self._storages = list(self._storages.values()), {}
        for storage in storages:
            await storage.aclose()

"""The operations behind every command: plan, apply, status, logs, pull, stop, start, destroy.

The CLI and the Python API are the same operations. One :class:`Engine` keeps one backend
instance per cloud for its lifetime; every operation on many tasks runs them concurrently in
an anyio task group.
"""

from __future__ import annotations

import contextlib
import enum
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from tpi_core import config, layout, registry
from tpi_core.backend import Backend, Capability, Launch, Observation, TaskRef
from tpi_core.concurrent import gather, task_group
from tpi_core.errors import ObjectNotFound, ResourceNotFound, TaskNotFound, TpiError, UsageError
from tpi_core.index import Index
from tpi_core.model import State, Task, TaskStatus
from tpi_core.reports import BootLog, build_status, count_stop, read_events, read_reports, read_spec
from tpi_core.retry import retry
from tpi_core.steps import crash_point, delete_steps, run_steps
from tpi_core.storage import Storage
from tpi_core.storage.sync import Guard, SyncResult, download_tree, upload_tree

Report = Callable[[str], None]


class Action(enum.StrEnum):
    """What apply does to one task."""

    CREATE = "create"
    UNCHANGED = "unchanged"
    UPDATE = "update"
    REPLACE = "replace"
    RESTART = "restart"
    """Applied, but what ran it is gone (a dead local supervisor, a deleted group)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """One task and what apply would do with it, with the reason."""

    task: Task
    action: Action
    reason: str = ""


class Engine:
    """Runs tpi operations; use as an async context manager so clients are closed."""

    def __init__(self, report: Report | None = None, progress_factory=None,
                 backends: dict[str, Backend] | None = None):
        self._report = report or (lambda message: None)
        self._progress = progress_factory or (lambda label: contextlib.nullcontext(None))
        self._backends: dict[str, Backend] = dict(backends or {})

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            for backend in self._backends.values():
                await backend.aclose()

    def backend(self, cloud: str) -> Backend:
        """The backend instance for a cloud, created on first use."""
        name = registry.canonical(cloud)
        if name not in self._backends:
            self._backends[name] = registry.backend_class(name)()
        return self._backends[name]

    async def storage(self, ref: TaskRef) -> Storage:
        """The task's storage prefix."""
        return await self.backend(ref.cloud).storage(ref)

    def say(self, ref: TaskRef | Task, message: str) -> None:
        """Report progress about one task."""
        self._report(f"{ref.name or getattr(ref, 'task_id', '')}: {message}")

    # plan and apply ---------------------------------------------------------------------

    async def plan(self, tasks: Sequence[Task]) -> list[Planned]:
        """What apply would do to each task, read from the tasks' storage."""
        return await gather([lambda t=t: self._plan_one(t) for t in tasks])

    async def _plan_one(self, task: Task) -> Planned:
        config.check_backend(task, self.backend)
        spec = await read_spec(await self.storage(TaskRef.of(task)))
        if spec is None:
            return Planned(task, Action.CREATE, "new task")
        if not same_spec(spec, task):
            changed = ", ".join(changed_fields(spec, task))
            return Planned(task, Action.REPLACE, f"changed: {changed}")
        key = Index(task.base_dir).environment_key(task.id)
        if key is not None and spec.get("environment_digest") not in (
                None, task.environment_digest(key)):  # (without the key: not comparable)
            return Planned(task, Action.REPLACE, "changed: environment values")
        if spec.get("destroying"):
            return Planned(task, Action.CREATE, "an earlier destroy did not finish")
        if not applied(spec):
            return Planned(task, Action.CREATE, "an earlier apply did not finish")
        if (spec.get("output"), spec.get("exclude")) != (task.storage.output,
                                                           list(task.storage.exclude)):
            return Planned(task, Action.UPDATE, "storage.output or storage.exclude changed")
        seen = await self.backend(task.cloud).observe(TaskRef.of(task))
        if seen.lost or not seen.exists:  # reconcile with what the cloud really holds
            return Planned(task, Action.RESTART, "its machines are gone: starting them again")
        return Planned(task, Action.UNCHANGED, "")

    async def apply(self, planned: Sequence[Planned]) -> list[Planned]:
        """Carry out a plan, every task concurrently. REPLACE items must be approved already."""
        await gather([lambda p=p: self._apply_one(p) for p in planned])
        return list(planned)

    async def _apply_one(self, item: Planned) -> None:
        task = item.task
        if item.action == Action.UNCHANGED:
            self.say(task, "unchanged")
            return
        if item.action == Action.UPDATE:
            storage = await self.storage(TaskRef.of(task))
            spec = await read_spec(storage)
            await self._write_spec(storage, task, spec["deadline"], spec["created"],
                                   applied=True)
            self.say(task, "updated storage.output/exclude")
            return
        if item.action == Action.RESTART:
            await self.start(task)
            self.say(task, "started again: its machines were gone")
            return
        if item.action == Action.REPLACE:
            guard = Guard(Index(task.base_dir).baseline(task.id))  # local changes are kept
            await self.destroy(TaskRef.of(task), task.workdir, task.storage.output, guard)
        await self._create(task)

    async def _create(self, task: Task) -> None:
        """Upload, create every step, then mark the spec applied: a task whose spec is not
        marked was interrupted (its next apply finishes it, ``destroy`` removes it).

        Ctrl-C or an error rolls back the steps made and leaves the spec unmarked; a kill
        (SIGKILL, SIGTERM) leaves the steps too. Either way the next apply completes the
        task, with the deadline of the first.
        """
        ref = TaskRef.of(task)
        backend = self.backend(task.cloud)
        self.say(task, f"creating {task.id} on {backend.NAME}")
        storage = await backend.storage(ref, create=task)
        earlier = await read_spec(storage)
        if (earlier and same_spec(earlier, task) and not applied(earlier)
                and not earlier.get("destroying")):
            created, deadline = earlier["created"], earlier["deadline"]
            self.say(task, "finishing an apply that did not finish")
        else:
            created = time.time()
            deadline = created + task.timeout
        crash_point("apply:spec")
        await self._write_spec(storage, task, deadline, created, applied=False)
        if task.workdir is not None:
            crash_point("apply:upload")
            result = await self.upload(task, storage)
            self.say(task, f"uploaded {result.moved()}")
            for skipped in result.skipped:  # symlinks out of the workdir, fifos, bad names
                self.say(task, f"skipped {skipped}")
        crash_point("apply:bundle")
        launch = await self.launch(backend, ref, storage, deadline)
        await run_steps(backend.create_steps(task, launch), lambda m: self.say(task, m))
        crash_point("apply:applied")
        await self._write_spec(storage, task, deadline, created, applied=True)
        self.say(task, "launched")

    async def launch(self, backend: Backend, ref: TaskRef, storage: Storage,
                      deadline: float) -> Launch:
        """The launch of a task: with the agent bundle in place when its backend wants one."""
        if backend.AGENT is None:
            return Launch(storage.url, deadline)
        built = await anyio.to_thread.run_sync(backend.agent_bundle, ref)
        url, uploaded = await backend.publish_agent(ref, built)
        self.say(ref, f"agent bundle {built.digest} " + ("uploaded" if uploaded else
                                                          "already in place"))
        return Launch(storage.url, deadline, url, built.digest, built.wheels, built.python)

    async def upload(self, task: Task, storage: Storage) -> SyncResult:
        """Upload the workdir into ``data/`` (changed files only), and keep beside the
        task's index what was uploaded: the baseline ``pull`` guards local changes with."""
        with self._progress(f"{task.name} upload") as progress:
            return await upload_tree(
                task.workdir, storage.child(layout.DATA), exclude=task.storage.exclude,
                delete=True, manifest=(storage, layout.UPLOAD_MANIFEST), progress=progress,
                baseline=Index(task.base_dir).baseline(task.id))

    @staticmethod
    async def _write_spec(storage: Storage, task: Task, deadline: float, created: float, *,
                          applied: bool) -> None:
        key = Index(task.base_dir).environment_key(task.id, create=True)
        spec = {"applied": applied,
            "id": task.id, "name": task.name, "cloud": task.cloud, "region": task.region,
            "machine": task.machine, "parallelism": task.parallelism, "spot": task.spot,
            "timeout": task.timeout, "deadline": deadline, "created": created,
            "script": task.script, "environment_keys": sorted(task.environment),
            "spec_hash": task.spec_hash(), "environment_digest": task.environment_digest(key),
            "output": task.storage.output,
            "exclude": list(task.storage.exclude), "tags": dict(task.tags),
            **_kept_fields(task),
        }
        await retry(storage.write, layout.SPEC, json.dumps(spec, indent=2).encode())

    # read -------------------------------------------------------------------------------

    async def status(self, ref: TaskRef, *, applied_before: bool = True) -> TaskStatus:
        """The task's state from its reports and its backend."""
        return (await self.status_and_logs(ref, applied_before=applied_before))[0]

    async def status_and_logs(self, ref: TaskRef, *, applied_before: bool = True,
                              ) -> tuple[TaskStatus, list[BootLog]]:
        """The task's state and its boot logs, from one listing of its reports.

        A task with no storage is ``destroyed``, or ``not applied`` when the caller knows it
        was never applied (``applied_before`` false: a task of a file its index lacks)."""
        storage = await self.storage(ref)
        spec = await read_spec(storage)
        if spec is None:
            gone = State.DESTROYED if applied_before else State.NOT_APPLIED
            return TaskStatus(ref.task_id, ref.name, ref.cloud, gone), []
        reports, seen = await _both(lambda: retry(read_reports, storage),
                                    lambda: self.backend(ref.cloud).observe(ref))
        events = await read_events(storage, reports.event_keys)
        status = build_status(spec, reports, seen, events,
                              agent=self.backend(ref.cloud).AGENT is not None)
        if spec.get("destroying"):
            status = replace(status, state=State.STOPPED, reason=NOT_DESTROYED)
        elif not applied(spec):
            status = replace(status, state=State.QUEUED, reason=NOT_APPLIED)
        return status, reports.logs

    async def log_files(self, ref: TaskRef) -> list[BootLog]:
        """Every boot log of the task, in replica and boot order."""
        return (await retry(read_reports, await self.storage(ref))).logs

    async def read_log(self, ref: TaskRef, log: BootLog, offset: int = 0) -> bytes:
        """A boot log's bytes from ``offset`` on."""
        try:
            data = await retry((await self.storage(ref)).read, log.key)
        except ObjectNotFound:
            return b""
        return data[offset:]

    # pull, stop, start, destroy ---------------------------------------------------------

    async def pull(self, ref: TaskRef, workdir: Path, output: str,
                   guard: Guard | None = None) -> SyncResult:
        """Download ``output`` (relative to workdir) into ``workdir``; deletes nothing local.

        ``guard``: what tpi last wrote there; a file changed since is kept and the task's
        copy lands beside it (``result.kept``), unless ``guard.overwrite``."""
        storage = await self.storage(ref)
        spec = await read_spec(storage)
        if spec is None:
            raise TaskNotFound(f"task {ref.name or ref.task_id} has no storage (not applied?)")
        output = output or spec.get("output") or ""
        if not output:
            raise UsageError(f"task {ref.name or ref.task_id} has no storage.output to download")
        exclude = spec.get("exclude", [])
        prefix = output.strip("/") + "/"
        with self._progress(f"{ref.name or ref.task_id} pull") as progress:
            return await download_tree(storage.child(layout.DATA), workdir, prefix=prefix,
                                       exclude=exclude, delete=False, progress=progress,
                                       guard=guard)

    async def stop(self, ref: TaskRef) -> None:
        """Scale to zero machines, keeping storage, and count the stop: the boot ``start``
        brings then resumes each replica, and ``status`` counts no recovery for it."""
        await self.backend(ref.cloud).set_capacity(ref, 0)
        await count_stop(await self.storage(ref))

    async def start(self, task: Task) -> None:
        """Scale a stopped task back to its parallelism."""
        storage = await self.storage(TaskRef.of(task))
        spec = await read_spec(storage)
        if spec is None:
            raise TaskNotFound(f"task {task.name} was not applied")
        if not applied(spec):
            raise UsageError(f"task {task.name}: {NOT_APPLIED}")
        backend = self.backend(task.cloud)
        launch = await self.launch(backend, TaskRef.of(task), storage, spec["deadline"])
        await run_steps(backend.create_steps(task, launch))

    async def destroy(self, ref: TaskRef, workdir: Path | None, output: str,
                      guard: Guard | None = None) -> SyncResult | None:
        """Stop the machines (each agent flushes what its script wrote), pull the output
        (``guard`` as for :meth:`pull`), delete every resource in reverse order, then the
        task's storage."""
        pulled = None
        storage = await self.storage(ref)
        spec = await read_spec(storage)
        backend = self.backend(ref.cloud)
        if spec is not None and Capability.STOP_START in backend.CAPABILITIES:
            seen = await backend.observe(ref)
            if seen.exists and seen.machines:
                self.say(ref, f"stopping {seen.machines} machine(s); each agent saves its "
                              "output first")
                await backend.set_capacity(ref, 0)
                if not await backend.wait_stopped(ref, STOP_GRACE):
                    self.say(ref, f"machines still running after {STOP_GRACE:g} s: "
                                  "pulling what they saved")
        output = output or (spec or {}).get("output") or ""
        if spec is not None and workdir is not None and output:
            pulled = await self.pull(ref, workdir, output, guard)
            self.say(ref, f"downloaded {pulled.moved()} of {output}")
            for line in pulled_lines(pulled):
                self.say(ref, line)
        if spec is not None and not spec.get("destroying"):
            # from here on the task is visibly half gone until its storage is
            await retry(storage.write, layout.SPEC, json.dumps(
                {**spec, "applied": False, "destroying": True}, indent=2).encode())
        # with no storage left the steps ran before (storage goes last): run them again,
        # silently, for what a hand may have left behind, and do not replay "Deleting ..."
        await delete_steps(backend.delete_steps(ref), lambda m: self.say(ref, m),
                           quiet=spec is None)
        crash_point("destroy:storage")
        try:
            await retry(storage.delete_prefix, "")
        except ResourceNotFound:
            pass
        if guard is not None:
            guard.forget()
        self.say(ref, "destroyed" if spec is not None else
                 "nothing to destroy: it has no storage (destroyed before, or never applied)")
        return pulled

    async def find(self, clouds: Sequence[str], region: str | None = None) -> list[TaskRef]:
        """Every task the named backends find without a local index."""
        found = await gather([lambda c=c: self.backend(c).find(region) for c in clouds])
        return [ref for refs in found for ref in refs]

    async def search(self, clouds: Sequence[str], region: str | None = None,
                     ) -> tuple[list[TaskRef], list[str]]:
        """Every task the named backends find, skipping a backend that cannot search (no
        credentials, no configuration, no answer in :data:`SEARCH_TIMEOUT` seconds):
        ``(found, why each skipped backend was skipped)``."""
        found: list[TaskRef] = []
        skipped: list[str] = []

        async def one(cloud: str) -> None:
            try:
                with anyio.fail_after(SEARCH_TIMEOUT):
                    found.extend(await self.backend(cloud).find(region))
            except (TpiError, TimeoutError) as exc:
                skipped.append(f"{cloud}: {str(exc) or 'no answer'}")

        async with task_group() as tg:
            for cloud in clouds:
                tg.start_soon(one, cloud)
        return sorted(found, key=lambda r: (r.cloud, r.region, r.task_id)), sorted(skipped)

    async def locate(self, task_id: str, clouds: Sequence[str],
                     region: str | None = None) -> TaskRef:
        """The task with this id, found by the backends' names and tags (``tpi status ID``
        from any folder); :class:`TaskNotFound` when none has it."""
        found, skipped = await self.search(clouds, region)
        refs = {(r.cloud, r.region): r for r in found if r.task_id == task_id}
        if len(refs) == 1:
            return next(iter(refs.values()))
        where = ", ".join(clouds) + (f" in {region}" if region else "")
        if refs:
            raise TaskNotFound(f"task {task_id} is in more than one place ("
                               + ", ".join(f"{c} {r}" for c, r in refs) + "): give --cloud "
                               "and --region")
        raise TaskNotFound(f"no task {task_id} found ({where}"
                           + (f"; not searched: {'; '.join(skipped)}" if skipped else "") + ")")


STOP_GRACE = 150.0
"""How long destroy waits for a running task's machines to stop (a spot notice is 120 s)."""
SEARCH_TIMEOUT = 30.0
"""Seconds a backend may take to search for tasks before it is skipped."""
def pulled_lines(result: SyncResult) -> list[str]:
    """What a pull says beyond its counts: each file kept as the user's with the task's
    copy beside it, then each thing skipped, a line each."""
    lines = [f"kept {key} (changed here); the task's copy is {side}"
             for key, side in result.kept if side]
    return lines + [f"skipped {skipped}" for skipped in result.skipped]


def _kept_fields(task: Task) -> dict:
    """Fields the spec keeps so that plan can name what changed."""
    return {"image": task.image, "disk_size": task.disk_size,
            "permission_set": task.permission_set, "workdir": task.storage.workdir,
            "container": task.storage.container}


def same_spec(spec: dict, task: Task) -> bool:
    """Whether ``spec`` was applied from ``task`` as it is now (environment values aside,
    see :meth:`Task.environment_digest`); a spec written before that is read too."""
    if "environment_digest" not in spec:
        return spec.get("spec_hash") == task.legacy_spec_hash()
    return spec.get("spec_hash") == task.spec_hash()


def changed_fields(spec: dict, task: Task) -> list[str]:
    """The fields of ``task`` that differ from the applied ``spec``, by name; environment
    values are known only by their hash, so they are named as a whole."""
    now = {"cloud": task.cloud, "region": task.region, "machine": task.machine,
           "parallelism": task.parallelism, "spot": task.spot, "timeout": task.timeout,
           "script": task.script, "tags": dict(task.tags),
           "environment": sorted(task.environment), **_kept_fields(task)}
    was = {**spec, "environment": spec.get("environment_keys")}
    changed = [name for name, value in now.items() if name in was and was[name] != value]
    return changed or ["environment values"]


NOT_APPLIED = ("its apply did not finish (interrupted, or running now): "
               "`tpi apply` finishes it, `tpi destroy` removes it")
NOT_DESTROYED = ("its destroy did not finish (interrupted, or running now): "
                 "`tpi destroy` finishes it, `tpi apply` makes the task again")


def applied(spec: dict) -> bool:
    """Whether the apply that wrote ``spec`` finished (a spec from before the mark was
    kept counts as applied)."""
    return bool(spec.get("applied", True))


async def _both(first, second) -> tuple:
    return tuple(await gather([first, second]))


__all__ = ["Action", "Engine", "Observation", "Planned", "gather"]

"""The local backend: tasks run on this computer, as a faithful rehearsal of a cloud run.

Storage is a directory (:class:`~tpi_core.storage.local.LocalStorage`); compute is a
detached supervisor per task (:mod:`tpi_core.backends._supervisor`) that plays the scaling
group and runs the same agent a cloud machine runs, one per replica, each in its own
session: the "machine". Everything survives the CLI's exit.

Root: ``$TPI_LOCAL_ROOT``, else ``$XDG_DATA_HOME/tpi/local``, else
``~/.local/share/tpi/local``; ``storage/<task-id>`` holds a task's storage (or
``<storage.container>/<task-id>`` when the task names a directory), ``compute/<task-id>``
its processes (see :mod:`tpi_core.backends._compute`).

Stop and start: ``set_capacity(ref, 0)`` stops the supervisor and keeps storage. Environment
values are never written down, so only the task itself can bring them back:
:meth:`LocalBackend.start` restarts with the task's environment (the engine's ``tpi start``
calls it with the loaded task); ``set_capacity(ref, n)`` restarts only tasks with no
environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import anyio

from tpi_core.backend import Backend, Capability, Launch, MachineType, Observation, TaskRef
from tpi_core.backends._compute import (SUPERVISOR_MODULE, ComputeDir, is_alive, signal_pid,
                                        wait_until)
from tpi_core.errors import BackendError, TaskNotFound, UsageError
from tpi_core.model import Task
from tpi_core.steps import Step, nothing
from tpi_core.storage.local import LocalStorage

STOP_TIMEOUT = 30.0
"""How long the supervisor gets to stop its agents before it is killed."""
_LAUNCH = "launch.json"


def local_root() -> Path:
    """Where the local backend keeps storage and compute state."""
    if root := os.environ.get("TPI_LOCAL_ROOT"):
        return Path(root).expanduser().absolute()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data).absolute() / "tpi" / "local"


def _checked_id(task_id: str) -> str:
    if not task_id or task_id in (".", "..") or "/" in task_id or "\\" in task_id:
        raise UsageError(f"invalid task id {task_id!r}")
    return task_id


class LocalBackend(Backend):
    """Runs tasks on this computer (registered as ``local``)."""

    NAME = "local"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.SPOT, Capability.FIND})

    def __init__(self, root: Path | None = None):
        super().__init__()
        self.root = Path(root) if root else local_root()

    def compute(self, task_id: str) -> ComputeDir:
        """The compute state directory of a task."""
        return ComputeDir(self.root / "compute" / _checked_id(task_id))

    def storage_dir(self, ref: TaskRef) -> Path:
        """The directory holding a task's storage."""
        base = Path(ref.container).expanduser() if ref.container else self.root / "storage"
        return base.absolute() / _checked_id(ref.task_id)

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> LocalStorage:
        path = self.storage_dir(ref)
        if create:
            await anyio.Path(path).mkdir(parents=True, exist_ok=True)
        return LocalStorage(path)

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        return [Step("storage directory",
                     partial(self.storage, ref, create=task) if task else nothing),
                Step("supervisor", partial(self.start, task, launch) if task and launch
                     else nothing, partial(self._remove, ref.task_id))]

    async def start(self, task: Task, launch: Launch) -> None:
        """Start the task's supervisor with the task's environment; nothing when it runs
        already or the task finished. Also how a stopped task starts again."""
        compute = self.compute(task.id)
        compute.write_json(_LAUNCH, {
            "id": task.id, "name": task.name, "storage_url": launch.storage_url,
            "parallelism": task.parallelism, "container": task.storage.container,
            "environment_keys": sorted(task.environment)})
        await self._spawn(compute, {**os.environ, **task.environment})

    async def set_capacity(self, ref: TaskRef, machines: int) -> None:
        compute = self.compute(ref.task_id)
        launch = compute.read_json(_LAUNCH)
        if not launch:
            raise TaskNotFound(f"no local task {ref.task_id!r}")
        if machines == 0:
            compute.desired = 0
            await self._halt(compute)
        elif launch["environment_keys"]:
            raise BackendError(f"local task {ref.task_id!r} has environment values, which tpi "
                               "never stores: start it from its tasks file (tpi start)")
        else:
            await self._spawn(compute, dict(os.environ))

    async def observe(self, ref: TaskRef) -> Observation:
        return await anyio.to_thread.run_sync(self._observe, self.compute(ref.task_id))

    async def find(self, region: str | None = None) -> list[TaskRef]:
        return [TaskRef(d["id"], self.NAME, d.get("region", ""), d.get("name", ""),
                        d.get("container", ""))
                for d in (await anyio.to_thread.run_sync(self._known)).values()]

    @classmethod
    def machine_types(cls) -> list[MachineType]:
        detail = f"shares this computer's {os.cpu_count()} CPUs; sizes are not enforced"
        return [MachineType(alias, "this computer", detail) for alias in ("s", "m", "l", "xl")]

    def resolve(self, name_or_id: str) -> str:
        """The id of the local task with this id or name."""
        known = self._known()
        if name_or_id in known:
            return name_or_id
        ids = sorted(i for i, doc in known.items() if doc.get("name") == name_or_id)
        if len(ids) > 1:
            raise UsageError(f"several local tasks are named {name_or_id!r} "
                             f"({', '.join(ids)}): give the task id")
        if not ids:
            raise TaskNotFound(f"no local task named {name_or_id!r} under {self.root}")
        return ids[0]

    async def preempt(self, ref: TaskRef, replica: int, grace: float) -> str:
        """Rehearse a spot preemption: SIGTERM to the replica's agent, SIGKILL to its whole
        machine after ``grace`` seconds. What happened, in one line."""
        task_id = ref.task_id
        compute = self.compute(task_id)
        pid = compute.live_agents().get(replica)
        if pid is None:
            raise UsageError(f"replica {replica} of task {task_id!r} is not running")
        # to the agent alone (it is alone in its group, except while it starts its script)
        signal_pid(pid, signal.SIGTERM)
        stopped = await wait_until(lambda: not is_alive(pid), grace)
        compute.stop_machine(pid)
        outcome = "it stopped by itself" if stopped else f"killed after {grace:g} s"
        return f"preempted replica {replica} of task {task_id} (agent pid {pid}): {outcome}"

    async def _spawn(self, compute: ComputeDir, env: Mapping[str, str]) -> None:
        if compute.supervisor_pid() or (compute.path / "finished").exists():
            return
        compute.desired = int(compute.read_json(_LAUNCH).get("parallelism", 1))
        log = compute.path / "supervisor.log"
        command = [sys.executable, "-m", SUPERVISOR_MODULE, "--detach", str(compute.path)]
        with open(log, "ab") as out:
            done = await anyio.run_process(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=out, env=env, cwd=compute.path,
                                           check=False, start_new_session=True)
        if done.returncode != 0:
            raise BackendError(f"the local supervisor did not start; see {log}")

    async def _halt(self, compute: ComputeDir) -> None:
        """Stop the supervisor (its agents flush first), then whatever it left behind."""
        pid = compute.supervisor_pid()
        if pid:
            signal_pid(pid, signal.SIGTERM)
            if not await wait_until(lambda: not is_alive(pid), STOP_TIMEOUT):
                signal_pid(pid, signal.SIGKILL)
        for agent in compute.machine_pids().values():
            compute.stop_machine(agent)
        await wait_until(lambda: not compute.live_agents(), 5.0)

    async def _remove(self, task_id: str) -> None:
        compute = self.compute(task_id)
        await self._halt(compute)
        await anyio.to_thread.run_sync(partial(shutil.rmtree, compute.path, ignore_errors=True))

    def _observe(self, compute: ComputeDir) -> Observation:
        if not compute.path.is_dir():
            return Observation(exists=False)
        desired = compute.desired
        lost = (desired > 0 and not (compute.path / "finished").exists()
                and compute.supervisor_pid() is None)
        return Observation(True, len(compute.live_agents()), desired, compute.events(), lost)

    def _known(self) -> dict[str, dict]:
        """Task id -> what is known of it: storage specs, then launch files."""
        known: dict[str, dict] = {}
        for pattern in ("storage/*/spec.json", f"compute/*/{_LAUNCH}"):
            for path in sorted(self.root.glob(pattern)):
                doc = _load(path)
                if doc.get("id") and doc["id"] == path.parent.name:
                    known[doc["id"]] = {**doc, **known.get(doc["id"], {})}
        return known


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}

"""One boot of one replica, from restore to final status (DESIGN.md section 6).

The agent pushes the boot log every ``log_interval`` seconds and changed workdir files every
``sync_interval`` seconds, each only when something changed: a walk of sizes and mtimes
decides, so an idle workdir costs no request (TPI issue #321). A preemption notice flushes
both at once before the script is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from tpi_core import layout
from tpi_core.agent import companion
from tpi_core.agent.bootlog import BootLog
from tpi_core.agent.hooks import AgentHooks
from tpi_core.agent.machinelog import MachineLog
from tpi_core.agent.reports import Reports, retry
from tpi_core.agent.script import Script, run_script, script_environment
from tpi_core.agent.workdir import fingerprint
from tpi_core.concurrent import task_group
from tpi_core.errors import ObjectNotFound, TaskNotFound, TpiError
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.registry import open_storage
from tpi_core.reports import read_stops
from tpi_core.storage import Storage
from tpi_core.storage.sync import Excludes, download_tree, upload_tree

EXIT_DONE = 0
"""The replica has a final status (whatever the script's exit code): do not run it again."""
EXIT_PREEMPTED = 143
"""The replica was stopped by a preemption notice: a replacement resumes it."""
EXIT_ERROR = 1
"""The agent could not do its job (storage unreachable...): its replica is not final."""

_NOTICE_SETTLE = 1.0
_EVENT = {ReplicaState.SUCCEEDED: "exited", ReplicaState.FAILED: "exited",
          ReplicaState.PREEMPTED: "preempted", ReplicaState.TIMED_OUT: "timed_out"}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Where the task's storage is, which replica this is, and how often to push."""

    storage_url: str
    replica: int | None
    """None: the hooks claim one (:meth:`AgentHooks.replica_index`)."""
    workdir: Path
    log_interval: float = 5.0
    sync_interval: float = 10.0
    stop_grace: float = 5.0
    machine_log: Path | None = None
    """The machine's boot log (``--machine-log``), copied to the head of this boot's log."""
    companion: Path | None = None
    """The run directory shared with the container that runs the script (a pod's); None:
    the agent runs the script itself (:mod:`tpi_core.agent.companion`)."""
    start_patience: float = 1800.0
    """Seconds the companion container may take to start the script (an image pull)."""


class Agent:
    """Runs one boot of one replica; :meth:`run` returns the process exit code."""

    def __init__(self, config: AgentConfig, hooks: AgentHooks | None = None, *,
                 storage: Storage | None = None, environ: Mapping[str, str] | None = None):
        self.config = config
        self.hooks = hooks or AgentHooks()
        self.environ = os.environ if environ is None else environ
        self.notice = anyio.Event()
        self._storage = storage
        self._synced: str | None = None
        self.stops = self.resumes = 0
        self._resumed = False

    async def run(self) -> int:
        """Boot: claim a replica if none was given, restore, run, report.

        EXIT_DONE (also when there is nothing to run) or EXIT_PREEMPTED.
        """
        storage = self._storage or open_storage(self.config.storage_url)
        failure: Exception | None = None
        code = EXIT_ERROR
        try:
            async with storage, task_group() as tg:
                self.storage = storage
                await tg.start(self._watch_signals)
                try:
                    code = await self._boot(tg)
                except Exception as exc:  # raised below as is, not inside an ExceptionGroup
                    failure = exc
                tg.cancel_scope.cancel()
        finally:
            if self.config.companion is not None:
                companion.finish(self.config.companion, code)
            await self.hooks.aclose()
        if failure is not None:
            raise failure
        return code

    async def _boot(self, tg: TaskGroup) -> int:
        self.spec = await self._read_spec()
        self._excludes = Excludes.coerce(self.spec.get("exclude", ()))
        index = self.config.replica
        if index is None:
            index = await self.hooks.replica_index(self.storage, self.spec)
        if index is None:
            return EXIT_DONE
        self.reports = Reports(self.storage, index)
        tg.start_soon(self._watch_hooks)
        previous = await self.reports.previous()
        if previous.state.final:
            return EXIT_DONE
        self.reports.attempt = previous.attempt + 1
        self.started = previous.started or time.time()
        # a `tpi stop` since the last boot: this boot resumes the task, it recovers nothing
        self.stops = await retry(read_stops, self.storage)
        resumed = previous.attempt > 0 and self.stops > previous.stops
        self.resumes = previous.resumes + int(resumed)
        self._resumed = resumed
        self.environ = {**self.environ, **await self.hooks.environment(self.spec)}
        with tempfile.TemporaryDirectory(prefix="tpi-agent-") as tmp:
            self.log = BootLog(Path(tmp) / "boot.log")
            try:
                return await self._start()
            finally:
                self.log.close()

    async def _read_spec(self) -> dict:
        try:
            return json.loads(await retry(self.storage.read, layout.SPEC))
        except ObjectNotFound:
            raise TaskNotFound(f"no {layout.SPEC} in {self.storage.url}: the task was not "
                               "applied, or was destroyed") from None

    async def _start(self) -> int:
        self._machine = MachineLog.read(self.config.machine_log)
        for when, text in self._machine.lines:
            self.log.add("boot", text, when)
        await self.reports.write_status(self._status(ReplicaState.RUNNING))
        await self.reports.event("boot", f"attempt {self.reports.attempt}"
                                 + (", resumed after tpi stop" if self._resumed else ""))
        await self._restore()
        if self.config.companion is not None:
            await anyio.to_thread.run_sync(companion.prepare, self.config.companion,
                                           self.config.workdir)
        if time.time() >= self._deadline:
            return await self._finish(ReplicaState.TIMED_OUT, None, "deadline passed before start")
        if self.notice.is_set():
            return await self._finish(ReplicaState.PREEMPTED, None, "preemption notice")
        return await self._run_script()

    async def _restore(self) -> None:
        workdir = self.config.workdir
        await anyio.Path(workdir).mkdir(parents=True, exist_ok=True)
        # the manifest records the files as restored: pushes then send only what this
        # replica changed, never a stale copy over a sibling's newer file
        result = await retry(download_tree, self.storage.child(layout.DATA), workdir,
                             record=(self.storage, layout.manifest_key(self.reports.index)))
        self._synced = await anyio.to_thread.run_sync(fingerprint, workdir, self._excludes)
        await self.reports.event("restore", result.moved())

    async def _run_script(self) -> int:
        env = script_environment(
            self.environ, self.spec.get("environment_keys", ()), task_id=self.spec["id"],
            replica=self.reports.index, count=int(self.spec.get("parallelism", 1)),
            attempt=self.reports.attempt)
        if (summary := self._machine.summary(time.time())) is not None:
            self.log.add("boot", summary)
        run = self.config.companion
        if run is None:
            starting = run_script(self.spec["script"], self.config.workdir, env, self.log)
        else:
            starting = companion.run_in_companion(self.spec["script"], run, self.config.workdir,
                                                  env, self.log)
        async with starting as script, task_group() as watching:
            if isinstance(script, companion.CompanionScript):
                watching.start_soon(self._watch_companion, script)
            await self.reports.event("started", f"pid {script.pid}" if run is None
                                     else "handed to the task's container")
            outcome = await self._race(script)
            code = await self._stop(outcome, script)
            watching.cancel_scope.cancel()
        if run is not None and not script.started:
            return await self._unstarted(outcome)
        return await self._conclude(outcome, code)

    async def _unstarted(self, outcome: ReplicaState) -> int:
        """The task's container never started the script: gone with its pod (a notice: the
        pod's next one runs it), or not started within the patience (failed)."""
        if outcome == ReplicaState.PREEMPTED:
            return await self._finish(outcome, None, "stopped before the task's container "
                                                     "started the script")
        if outcome == ReplicaState.TIMED_OUT:
            return await self._finish(outcome, None, "deadline reached before the task's "
                                                     "container started the script")
        return await self._finish(ReplicaState.FAILED, None, "the task's container did not "
                                  f"start the script within {self.config.start_patience:g} s "
                                  "(its image, its shell: see tpi status)")

    async def _race(self, script: Script) -> ReplicaState:
        """Whichever comes first: the script's exit, a preemption notice, the deadline.

        SUCCEEDED stands for "the script ended by itself"; its exit code decides later.
        """
        outcome: list[ReplicaState] = []
        async with task_group() as tg:
            async def first(state: ReplicaState, wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                outcome.append(state)
                tg.cancel_scope.cancel()

            tg.start_soon(first, ReplicaState.SUCCEEDED, script.wait)
            tg.start_soon(first, ReplicaState.PREEMPTED, self.notice.wait)
            if isinstance(script, companion.CompanionScript):
                tg.start_soon(first, ReplicaState.FAILED, lambda: self._never_started(script))
            tg.start_soon(first, ReplicaState.TIMED_OUT, self._deadline_passed)
            tg.start_soon(self._every, self.config.log_interval, self._push_log)
            tg.start_soon(self._every, self.config.sync_interval, self._push_files)
        return outcome[0]

    async def _watch_companion(self, script: companion.CompanionScript) -> None:
        """The companion's SIGTERM is the pod's notice: the agent may hear of it later."""
        while not script.terminated:
            await anyio.sleep(companion.POLL)
        self.notice.set()

    async def _never_started(self, script: companion.CompanionScript) -> None:
        """Returns only when the companion has not started the script within the patience."""
        await anyio.sleep(self.config.start_patience)
        if script.started:
            await anyio.sleep_forever()

    async def _stop(self, outcome: ReplicaState, script: Script) -> int:
        if outcome == ReplicaState.PREEMPTED:
            # what the script wrote before the notice is saved before anything is stopped
            await self._flush()
            await self.reports.event("flush", "preemption notice")
        if isinstance(script, companion.CompanionScript) and not script.started:
            return 137  # nothing to stop: _unstarted says what happened
        if outcome != ReplicaState.SUCCEEDED:
            return await script.stop(self.config.stop_grace)
        return await script.wait()

    async def _conclude(self, outcome: ReplicaState, code: int) -> int:
        if outcome == ReplicaState.SUCCEEDED and code != 0 and await self._noticed(code):
            outcome = ReplicaState.PREEMPTED  # it died of the machine's shutdown, not its own
        if outcome == ReplicaState.PREEMPTED:
            return await self._finish(outcome, code, "preemption notice")
        if outcome == ReplicaState.TIMED_OUT:
            return await self._finish(outcome, code, "deadline reached")
        state = ReplicaState.SUCCEEDED if code == 0 else ReplicaState.FAILED
        return await self._finish(state, code, "")

    async def _noticed(self, code: int) -> bool:
        """Whether a preemption notice came with the script's end. A shutdown signals every
        process at once, so a script killed by a signal may end just before the notice."""
        run = self.config.companion
        if run is not None and companion.CompanionScript(run).terminated:
            self.notice.set()  # the companion's SIGTERM, seen after the script's end
        if code > 128:
            with anyio.move_on_after(_NOTICE_SETTLE):
                await self.notice.wait()
        return self.notice.is_set()

    async def _finish(self, state: ReplicaState, code: int | None, reason: str) -> int:
        """Final sync, then the event and the status (status last: readers trust it)."""
        await self._flush()
        status = self._status(state, code, reason, finished=time.time())
        message = "; ".join(filter(None, [reason, "" if code is None else f"exit code {code}"]))
        await self.reports.event(_EVENT[state], message)
        await self.reports.write_status(status)
        if not state.final:
            return EXIT_PREEMPTED
        await self.hooks.on_exit(status)
        return EXIT_DONE

    def _status(self, state: ReplicaState, code: int | None = None, reason: str = "",
                finished: float | None = None) -> ReplicaStatus:
        return ReplicaStatus(self.reports.index, state, self.reports.attempt, code,
                             self.started, finished, reason, self.stops, self.resumes)

    async def _flush(self) -> None:
        await retry(self._push_log)
        await retry(self._push_files)

    async def _push_log(self) -> None:
        await self.log.push(self.storage, self.reports.log_key)

    async def _push_files(self) -> None:
        workdir = self.config.workdir
        mark = await anyio.to_thread.run_sync(fingerprint, workdir, self._excludes)
        if mark == self._synced:
            return
        await upload_tree(workdir, self.storage.child(layout.DATA), exclude=self._excludes,
                          delete=False,
                          manifest=(self.storage, layout.manifest_key(self.reports.index)))
        self._synced = mark

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await action()
            except (TpiError, OSError) as exc:
                # the next round tries again; the final flush retries and fails loudly
                await self._quiet_event("sync_error", f"{type(exc).__name__}: {exc}")

    async def _quiet_event(self, code: str, message: str) -> None:
        try:
            await self.reports.event(code, message)
        except (TpiError, OSError):
            pass

    @property
    def _deadline(self) -> float:
        return float(self.spec.get("deadline") or "inf")

    async def _deadline_passed(self) -> None:
        await anyio.sleep(max(0.0, self._deadline - time.time()))

    async def _watch_signals(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                self.notice.set()

    async def _watch_hooks(self) -> None:
        try:
            await self.hooks.wait_for_preemption()
        except Exception as exc:  # a broken notice source must not stop the task
            await self._quiet_event("hooks_error", f"{type(exc).__name__}: {exc}")
            return
        self.notice.set()

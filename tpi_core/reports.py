"""Read what agents wrote under ``reports/`` and derive a task's state from it.

The task's storage prefix is the source of truth for progress (DESIGN.md section 1.2);
this module turns it into :class:`~tpi_core.model.TaskStatus` values and log text.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from tpi_core import layout
from tpi_core.backend import Observation
from tpi_core.boot.script import MACHINE_LOG, MAX_FAILURES
from tpi_core.concurrent import task_group
from tpi_core.errors import ObjectNotFound, ResourceNotFound
from tpi_core.model import Event, ReplicaState, ReplicaStatus, State, TaskStatus
from tpi_core.retry import retry
from tpi_core.storage import Storage


@dataclass(frozen=True, slots=True)
class BootLog:
    """One boot's log object (``machine``: a failed machine boot's name, replica -1)."""

    replica: int
    attempt: int
    key: str
    size: int
    machine: str = ""


@dataclass
class Reports:
    """Everything listed under ``reports/`` in one pass."""

    statuses: dict[int, ReplicaStatus]
    logs: list[BootLog]
    event_keys: list[str]
    boot_failures: list[BootLog] = field(default_factory=list)
    """Logs of machines whose boot failed, oldest first (also at the head of ``logs``)."""
    failure_reason: str = ""
    """The ``boot failed: ...`` line of the newest of them."""


async def read_spec(storage: Storage) -> dict | None:
    """The task's spec.json, or None when the task has no storage (never applied or gone)."""
    try:
        return json.loads(await retry(storage.read, layout.SPEC))
    except (ObjectNotFound, ResourceNotFound):
        return None


async def read_stops(storage: Storage) -> int:
    """How many times ``tpi stop`` stopped the task (``reports/stops.json``; 0 without it)."""
    try:
        return int(json.loads(await retry(storage.read, layout.STOPS)).get("stops", 0))
    except (ObjectNotFound, ValueError, AttributeError):
        return 0


async def count_stop(storage: Storage) -> None:
    """Record one more ``tpi stop``: the next boot of each replica then resumes the task
    rather than recovering it (only the CLI writes this object)."""
    stops = await read_stops(storage) + 1
    await retry(storage.write, layout.STOPS, json.dumps({"stops": stops}).encode())


async def read_reports(storage: Storage) -> Reports:
    """List ``reports/`` once and read every replica status."""
    status_keys: list[tuple[int, str]] = []
    logs: list[BootLog] = []
    events: list[str] = []
    failed: list[BootLog] = []
    async for info in storage.list(layout.REPORTS + "/"):
        if info.key.startswith(layout.BOOT_FAILED + "/") and info.key.endswith(".log"):
            name = info.key[len(layout.BOOT_FAILED) + 1:-4]
            failed.append(BootLog(-1, 0, info.key, info.size, name))
            continue
        parsed = layout.parse_report_key(info.key)
        if parsed is None:
            continue
        replica, name = parsed
        if name == "status.json":
            status_keys.append((replica, info.key))
        elif name.startswith("boot-") and name.endswith(".log"):
            logs.append(BootLog(replica, int(name[5:-4]), info.key, info.size))
        elif name.endswith(".events.jsonl"):
            events.append(info.key)
    statuses: dict[int, ReplicaStatus] = {}

    async def load(replica: int, key: str) -> None:
        try:
            statuses[replica] = ReplicaStatus.from_json(
                json.loads(await retry(storage.read, key)))
        except (ObjectNotFound, ValueError):
            pass

    async with task_group() as tg:
        for replica, key in status_keys:
            tg.start_soon(load, replica, key)
    logs.sort(key=lambda b: (b.replica, b.attempt))
    # NAME starts with the failure's epoch seconds: numeric order is time order
    failed.sort(key=lambda b: (int(b.machine.partition("-")[0] or 0)
                               if b.machine.partition("-")[0].isdigit() else 0, b.machine))
    failed = [BootLog(-1, n, b.key, b.size, b.machine) for n, b in enumerate(failed, 1)]
    reason = await _failure_reason(storage, failed[-1]) if failed else ""
    return Reports(statuses, failed + logs, sorted(events), failed, reason)


async def _failure_reason(storage: Storage, log: BootLog) -> str:
    """The ``boot failed: STEP: LAST LINE`` line of a failed boot's log."""
    try:
        text = (await retry(storage.read, log.key)).decode("utf-8", "replace")
    except ObjectNotFound:
        return ""
    for line in reversed(text.splitlines()):
        _, _, rest = line.partition(" ")
        if rest.startswith("boot failed: "):
            return rest
    return "boot failed"


async def read_events(storage: Storage, keys: list[str]) -> list[Event]:
    """Every agent event in the given ``.events.jsonl`` objects."""
    found: list[Event] = []
    for key in keys:
        try:
            text = (await retry(storage.read, key)).decode("utf-8", "replace")
        except ObjectNotFound:
            continue
        for line in text.splitlines():
            try:
                doc = json.loads(line)
                found.append(Event(**{k: doc[k] for k in Event.__dataclass_fields__ if k in doc}))
            except (ValueError, TypeError):
                continue
    return found


LOST = ("its machines were lost with what ran them (the local supervisor died): "
        "`tpi apply` or `tpi start` runs the task again from its last sync")


def derive_state(parallelism: int, replicas: tuple[ReplicaStatus, ...],
                 seen: Observation, boot_failures: int = 0) -> State:
    """The task state from replica reports plus what the cloud shows (DESIGN.md section 4).

    ``boot_failures``: machines whose boot failed; from :data:`MAX_FAILURES` on, their
    machines leave the group instead of being replaced, so the task has failed.
    """
    states = {r.state for r in replicas}
    if replicas and all(r.state.final for r in replicas) and len(replicas) >= parallelism:
        if ReplicaState.TIMED_OUT in states:
            return State.TIMED_OUT
        return State.FAILED if ReplicaState.FAILED in states else State.SUCCEEDED
    if boot_failures >= MAX_FAILURES:
        return State.FAILED
    if seen.lost:
        return State.STOPPED
    if not seen.exists:
        return State.STOPPED if replicas else State.QUEUED
    if seen.desired == 0:
        return State.STOPPED
    if ReplicaState.PREEMPTED in states:
        return State.RECOVERING
    if ReplicaState.RUNNING in states:
        return State.RUNNING
    return State.PROVISIONING


def build_status(spec: dict, reports: Reports, seen: Observation,
                 events: list[Event] = (), *, agent: bool = False,
                 now: float | None = None) -> TaskStatus:
    """Put spec, reports and observation together into a :class:`TaskStatus`.

    ``agent``: the backend's machines boot and start an agent (``Backend.AGENT``); its
    machines up with no agent report yet are then ``booting``, and from
    :data:`BOOT_WARNING_AFTER` seconds on (at ``now``) the reason warns of a failing boot.
    """
    count = int(spec.get("parallelism", 1))
    replicas = tuple(reports.statuses.get(i, ReplicaStatus(i)) for i in range(count))
    reason = reports.failure_reason
    if seen.lost and not all(r.state.final for r in replicas):
        # their machines are gone with what ran them: lost, as a preempted replica is
        replicas = tuple(replace(r, state=ReplicaState.PREEMPTED)
                         if r.state == ReplicaState.RUNNING else r for r in replicas)
        reason = LOST
    if seen.failed:
        replicas = tuple(replace(r, state=ReplicaState.FAILED, reason=seen.failed[r.index])
                         if r.index in seen.failed and not r.state.final else r
                         for r in replicas)
    failures = len(reports.boot_failures)
    state = derive_state(count, replicas, seen, failures)
    if not state.final and not reason:
        reason = "; ".join(f"replica {i}: {why}" for i, why in sorted(seen.waiting.items()))
    if seen.failed and not reason:
        reason = "; ".join(f"replica {r.index}: {r.reason}" for r in replicas
                           if r.index in seen.failed and r.reason == seen.failed[r.index])
    since = None
    if agent and state == State.PROVISIONING and seen.machines and not reports.statuses:
        state, since = State.BOOTING, seen.first_up or spec.get("created")
        reason = reason or slow_boot(since, now)
    everything = sorted([*events, *seen.events], key=lambda e: e.time)
    return TaskStatus(
        task_id=spec["id"], name=spec.get("name", ""), cloud=spec.get("cloud", ""),
        state=state, parallelism=count, replicas=replicas,
        recoveries=sum(r.recoveries for r in replicas),
        machines=seen.machines, created=spec.get("created"), deadline=spec.get("deadline"),
        events=tuple(everything), reason=reason, boot_failures=failures,
        booting_since=since)


BOOT_WARNING_AFTER = 600.0
"""Seconds of ``booting`` with no agent report after which status warns."""


def slow_boot(since: float | None, now: float | None = None) -> str:
    """The warning for a boot that has gone on for :data:`BOOT_WARNING_AFTER` seconds with
    no agent report, or "" before then."""
    waited = (now or time.time()) - since if since is not None else 0.0
    if waited < BOOT_WARNING_AFTER:
        return ""
    return (f"no agent has reported after {age(waited)} of booting: the boot may be failing; "
            f"its log is {MACHINE_LOG} on each machine, and a failed boot uploads it to "
            f"{layout.BOOT_FAILED}/ where `tpi logs` shows it")


def state_text(status: TaskStatus, now: float | None = None) -> str:
    """The state as ``tpi status`` shows it: ``booting (2 machines up, no agent yet, 3m)``
    while machines boot, else the state's name."""
    if status.state != State.BOOTING:
        return status.state.value
    return f"{status.state.value} ({booting_detail(status, now)})"


def booting_detail(status: TaskStatus, now: float | None = None) -> str:
    """``2 machines up, no agent yet, 3m``: how long since the first machine came up."""
    up = f"{status.machines} machine{'s' if status.machines != 1 else ''} up, no agent yet"
    if status.booting_since is None:
        return up
    return f"{up}, {age((now or time.time()) - status.booting_since)}"


def age(seconds: float) -> str:
    """A short duration: ``45s``, ``3m``, ``1h05m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def group_logs(logs: list[BootLog]) -> dict[int, list[BootLog]]:
    """Boot logs per replica, in boot order."""
    grouped: dict[int, list[BootLog]] = defaultdict(list)
    for log in logs:
        grouped[log.replica].append(log)
    return dict(grouped)


def elapsed(status: TaskStatus, now: float | None = None) -> float:
    """Seconds since the task was created; for a task that ended, until its last replica
    finished (the clock stops with the task)."""
    end = now or time.time()
    if status.state.final:
        finished = [r.finished for r in status.replicas if r.finished]
        if finished:
            end = min(end, max(finished))
    return max(0.0, end - (status.created or end))

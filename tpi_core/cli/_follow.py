"""Following tasks to their end: new log lines as they arrive, then the final states."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import anyio

from tpi_core.cli._tasks import Target
from tpi_core.engine import Engine
from tpi_core.model import State, TaskStatus
from tpi_core.reports import BootLog

Emit = Callable[[str], None]


def poll_interval() -> float:
    """Seconds between polls (TPI_POLL_INTERVAL; TPI's leo polls every 3 s)."""
    return float(os.environ.get("TPI_POLL_INTERVAL", "2"))


def prefix(target: Target, replica: int, attempt: int) -> str:
    """``name[replica.boot]`` in front of each log line."""
    return f"{target.label}[{replica}.{attempt}]"


async def print_new_logs(engine: Engine, target: Target, offsets: dict[str, int],
                         emit: Emit, logs: list[BootLog] | None = None, *,
                         as_json: bool = False) -> None:
    """Emit every complete log line not yet shown, in replica and boot order (``logs``: a
    listing the caller already has; ``as_json``: each line as a JSON object)."""
    for log in logs if logs is not None else await engine.log_files(target.ref):
        seen = offsets.get(log.key, 0)
        if log.size <= seen:
            continue
        data = await engine.read_log(target.ref, log, seen)
        complete = data[: data.rfind(b"\n") + 1]
        label = (f"{target.label}[boot failed {log.machine}]" if log.machine
                 else prefix(target, log.replica, log.attempt))
        for line in complete.decode("utf-8", "replace").splitlines():
            emit(_json_line(target, log, line) if as_json else f"{label} {line}")
        offsets[log.key] = seen + len(complete)


async def follow(engine: Engine, targets: Sequence[Target], emit: Emit,
                 say: Emit | None = None, as_json: bool = False) -> list[TaskStatus]:
    """Print logs of every target until each one reaches a final or stopped state (``say``:
    where to tell, once per state, why a target has no log yet; ``as_json``: JSON lines)."""
    offsets: dict[str, int] = {}
    final: dict[str, TaskStatus] = {}
    told: dict[str, tuple] = {}
    while len(final) < len(targets):
        for target in targets:
            if target.ref.task_id in final:
                continue
            status, logs = await engine.status_and_logs(
                target.ref, applied_before=target.indexed)
            done = status.state.final or status.state == State.STOPPED
            if say and not logs and not done:
                _tell_once(say, target, status, told)
            # a final status can be newer than the listing it came with: list once more
            await print_new_logs(engine, target, offsets, emit, None if done else logs,
                                 as_json=as_json)
            if done:
                final[target.ref.task_id] = status
        if len(final) < len(targets):
            await anyio.sleep(poll_interval())
    return [final[t.ref.task_id] for t in targets]


def _json_line(target: Target, log: BootLog, line: str) -> str:
    doc = {"task": target.label, "id": target.ref.task_id, "replica": log.replica,
           "boot": log.attempt, "line": line}
    if log.machine:  # a machine whose boot failed: no replica ran there
        doc["machine"] = log.machine
    return json.dumps(doc, sort_keys=True)


def _tell_once(say: Emit, target: Target, status: TaskStatus, told: dict) -> None:
    """Say why ``target`` has no log yet, once for each state (and reason) it waits in."""
    why = (status.state, status.reason)
    if told.get(target.ref.task_id) != why:
        told[target.ref.task_id] = why
        say(f"{target.label}: no log yet: {waiting(status)}")


def waiting(status: TaskStatus) -> str:
    """Why a task has no log yet, in a few words."""
    from tpi_core.reports import booting_detail

    if status.state == State.DESTROYED:
        return "the task was destroyed (it has no storage)"
    if status.state == State.NOT_APPLIED:
        return "the task was never applied: `tpi apply` launches it"
    if status.state == State.BOOTING:
        detail = f"waiting for the first boot ({booting_detail(status)})"
        return f"{detail}; {status.reason}" if status.reason else detail
    if status.reason:
        return status.reason
    if status.machines:
        return f"{status.machines} machine(s) up, waiting for the first agent to report"
    return f"{status.state.value}, waiting for the first boot"


def outcome(status: TaskStatus) -> str:
    """``failed (replica 0 exited 3; replica 1 timed out)``: the state and, when the task
    did not succeed, what each replica that did not succeed ended with."""
    from tpi_core.model import ReplicaState

    if status.state == State.STOPPED and not status.reason:  # by `tpi stop`
        return "stopped: `tpi start` resumes it, `tpi destroy` ends it"
    if status.state == State.SUCCEEDED:
        return status.state.value
    why = []
    for replica in status.replicas:
        if replica.state == ReplicaState.FAILED and replica.exit_code is not None:
            why.append(f"replica {replica.index} exited {replica.exit_code}")
        elif replica.state not in (ReplicaState.SUCCEEDED, ReplicaState.PENDING):
            why.append(f"replica {replica.index} {replica.state.value.replace('_', ' ')}")
    if status.reason:
        why.append(status.reason)
    return f"{status.state.value} ({'; '.join(why)})" if why else status.state.value


def exit_code(statuses: Sequence[TaskStatus]) -> int:
    """0 when all succeeded or were stopped by ``tpi stop``, 5 when any timed out, else 1
    (a task stopped for another reason, a lost supervisor, counts as failed)."""
    states = {s.state for s in statuses}
    if all(s.state == State.SUCCEEDED or (s.state == State.STOPPED and not s.reason)
           for s in statuses):
        return 0
    return 5 if State.TIMED_OUT in states else 1

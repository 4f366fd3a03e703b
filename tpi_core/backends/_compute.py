"""The local backend's compute state: one directory per task, and the processes it names.

    launch.json          storage URL, name, parallelism, environment KEYS (never values)
    supervisor.pid       the supervisor (the local scaling group)
    supervisor.log       its output
    desired              how many replicas the task should have (parallelism, or 0 stopped)
    finished             present once every replica reported a final status
    events.jsonl         the supervisor's events (replica_started, replica_replaced, ...)
    replica-N.pid        the agent of replica N: its pid is its process group and session
    replica-N.log        the agent's own output (its errors; the script's go to storage)
    replica-N/workdir    the replica's "machine disk", wiped before every boot

Every process of a replica lives in the agent's session, so killing that session is what
losing the machine means. Liveness checks look at /proc where it exists, so a zombie or a
reused pid is not mistaken for a live process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from tpi_core.model import Event

SUPERVISOR_MODULE = "tpi_core.backends._supervisor"
AGENT_MODULE = "tpi_core.agent"
_PROC = Path("/proc")


class ComputeDir:
    """The files of one task's local compute state."""

    def __init__(self, path: Path):
        self.path = path

    def replica_dir(self, index: int) -> Path:
        """The replica's machine directory (its workdir is ``workdir`` under it)."""
        return self.path / f"replica-{index}"

    def replica_pid_file(self, index: int) -> Path:
        """Where the supervisor records the pid of replica ``index``'s agent."""
        return self.path / f"replica-{index}.pid"

    def read_json(self, name: str) -> dict:
        """A JSON file of this directory; empty when missing or unreadable."""
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return {}

    def write_json(self, name: str, doc: dict) -> None:
        """Write a JSON file atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        temp = self.path / f".{name}.tmp"
        temp.write_text(json.dumps(doc, sort_keys=True))
        os.replace(temp, self.path / name)

    @property
    def desired(self) -> int:
        """The replica count the task should have."""
        try:
            return int((self.path / "desired").read_text())
        except (OSError, ValueError):
            return 0

    @desired.setter
    def desired(self, count: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "desired").write_text(str(count))

    def add_event(self, code: str, message: str = "", replica: int | None = None) -> None:
        """Append one supervisor event."""
        event = Event(time.time(), code, message, replica, source="local")
        with open(self.path / "events.jsonl", "a") as handle:
            handle.write(json.dumps(event.to_json(), sort_keys=True) + "\n")

    def events(self) -> tuple[Event, ...]:
        """Every supervisor event, oldest first."""
        try:
            lines = (self.path / "events.jsonl").read_text().splitlines()
        except OSError:
            return ()
        return tuple(Event(**json.loads(line)) for line in lines if line.strip())

    def supervisor_pid(self) -> int | None:
        """The pid of this task's live supervisor, or None."""
        pid = read_pid(self.path / "supervisor.pid")
        if pid and is_alive(pid) and _runs(pid, SUPERVISOR_MODULE, str(self.path)):
            return pid
        return None

    def machine_pids(self) -> dict[int, int]:
        """Replica index -> agent pid, as recorded (the agent may be gone)."""
        found = {}
        for pid_file in self.path.glob("replica-*.pid"):
            pid = read_pid(pid_file)
            if pid:
                found[int(pid_file.stem.removeprefix("replica-"))] = pid
        return found

    def live_agents(self) -> dict[int, int]:
        """Replica index -> pid of every agent still running."""
        return {i: pid for i, pid in self.machine_pids().items() if self._is_agent(pid)}

    def stop_machine(self, pid: int) -> None:
        """SIGKILL every process of the session of the agent ``pid``.

        A pid cannot be reused while it still names a session, so a live process under
        that pid that is not our agent means the old session is empty: nothing to kill.
        """
        if is_alive(pid) and not _runs(pid, AGENT_MODULE, str(self.path)):
            return
        kill_session(pid)

    def _is_agent(self, pid: int) -> bool:
        return is_alive(pid) and _runs(pid, AGENT_MODULE, str(self.path))


def read_pid(path: Path) -> int | None:
    """The pid written in ``path``, or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] != "Z"


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` (Linux; elsewhere just ``sid`` if alive)."""
    if not _PROC.is_dir():
        return [sid] if is_alive(sid) else []
    members = []
    for entry in _PROC.iterdir():
        stat = _stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z" and int(stat[3]) == sid:
            members.append(int(entry.name))
    return members


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every process of session ``sid``: the machine is gone."""
    for pid in session_members(sid):
        signal_pid(pid, sig)


def signal_pid(pid: int, sig: int) -> None:
    """Send ``sig`` to a process; one that is gone already is fine."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    with anyio.move_on_after(timeout):
        while not condition():
            await anyio.sleep(0.05)
        return True
    return condition()


def _stat(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # fields after the command name, which may itself hold spaces and parentheses
    return text.rsplit(")", 1)[1].split()


def _runs(pid: int, module: str, marker: str) -> bool:
    """Whether ``pid`` is still our program (and not a reused pid)."""
    try:
        cmdline = (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return not _PROC.is_dir()  # no /proc: trust the pid
    except OSError:
        return True
    return module in cmdline and marker in cmdline

"""What every harness that plays a cloud's machines shares (the tests' EC2 and MIG players).

A cloud emulator keeps instances as records. A :class:`Player` polls it in a thread
(:meth:`Player.step`, a cloud's own) and runs the real agent for each instance as a
:class:`PlayedMachine`: a local process group with a fake metadata service of its own. An
instance that leaves the cloud takes its agent with it (SIGTERM, as a shutdown does). Errors
of the loop are kept for the test to read; a wait that times out shows them with the agents'
logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


@dataclass
class PlayedMachine:
    """One instance played locally: its agent process and its metadata service."""

    name: str
    process: subprocess.Popen
    metadata: Any
    """The machine's fake metadata service (anything with ``close()``)."""
    log: Path
    exit_code: int | None = None

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the agent's session (a shutdown), then SIGKILL after ``grace``."""
        if self.process.poll() is None:
            signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                signal_group(self.process, signal.SIGKILL)
                self.process.wait(10)
        signal_group(self.process, signal.SIGKILL)  # whatever the script left behind
        self.exit_code = self.process.returncode
        self.metadata.close()


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal a process's whole group (it was started in a session of its own)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def start_agent(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """The agent's command line in a session of its own, its output into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass
class Player:
    """A polling loop over a cloud's instances; a subclass gives :meth:`step`."""

    machines: dict[str, PlayedMachine] = field(default_factory=dict, init=False)
    errors: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def step(self) -> None:
        """Start agents for new instances; stop those of instances gone."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for machine in list(self.machines.values()):
            machine.stop(grace=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            try:
                with self._lock:
                    self.step()
            except Exception as exc:  # keep playing; the test reads the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def wait_for(self, predicate, timeout: float, what: str):
        """Poll ``predicate`` until it returns something true."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; harness errors: {self.errors}; "
                             f"agent logs: {self.agent_logs()}")

    def agent_logs(self) -> dict[str, str]:
        """What each agent printed (for failure messages)."""
        return {n: m.log.read_text(errors="replace")[-2000:] for n, m in self.machines.items()}

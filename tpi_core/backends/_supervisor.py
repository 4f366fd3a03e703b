"""The local backend's supervisor: it plays the scaling group of one task.

    python -m tpi_core.backends._supervisor COMPUTE_DIR [--detach]

It keeps one agent per replica index running, each in its own session (a "machine"). An
agent that exits with its replica's status final is done; a finished replica never stops
its siblings. An agent that ends without a final status (killed, preempted) is replaced for
the same index when the task is spot (``spot >= 0``), as a cloud's group would; an on-demand
replica is recorded as failed ("machine lost"), as TPI does not recover those. SIGTERM
(``tpi stop``, ``tpi destroy``) is forwarded to every agent so it flushes, then the
supervisor waits for them and exits. Environment values come in through this process's
environment and go to the agents the same way; nothing here writes them down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
from anyio.abc import Process

from tpi_core import layout
from tpi_core.agent import EXIT_PREEMPTED
from tpi_core.backends._compute import AGENT_MODULE, ComputeDir, signal_pid, wait_until
from tpi_core.concurrent import task_group
from tpi_core.errors import ObjectNotFound
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.registry import open_storage
from tpi_core.storage import Storage

AGENT_STOP_TIMEOUT = 20.0
"""How long agents get to flush and stop their scripts after SIGTERM."""
QUICK_EXIT = 10.0
MAX_QUICK_CRASHES = 5


class Supervisor:
    """Runs and replaces the agents of one task."""

    def __init__(self, compute: ComputeDir, storage: Storage, spec: dict, storage_url: str):
        self.compute = compute
        self.storage = storage
        self.storage_url = storage_url
        self.count = int(spec.get("parallelism", 1))
        self.spot = float(spec.get("spot", -1))
        self.agents: dict[int, int] = {}
        self.stopping = False

    async def run(self) -> None:
        """Until every replica is final, or SIGTERM."""
        self.compute.add_event("supervisor_started", f"{self.count} replicas")
        async with task_group() as outer:
            await outer.start(self._on_sigterm)
            async with task_group() as replicas:
                for index in range(self.count):
                    replicas.start_soon(self._replica, index)
            outer.cancel_scope.cancel()
        if self.stopping:
            self.compute.add_event("supervisor_stopped")
            return
        (self.compute.path / "finished").touch()
        self.compute.desired = 0
        self.compute.add_event("finished", "every replica reported its result")

    async def _replica(self, index: int) -> None:
        crashes = 0
        while not self.stopping:
            began = time.monotonic()
            code = await self._boot(index)
            if self.stopping:
                return
            status = await self._status(index)
            if status.state.final:
                self.compute.add_event("replica_finished", status.state.value, index)
                return
            quick = code != EXIT_PREEMPTED and time.monotonic() - began < QUICK_EXIT
            crashes = crashes + 1 if quick else 0
            if self.spot < 0 or crashes >= MAX_QUICK_CRASHES:
                await self._lose(index, status, crashes)
                return
            self.compute.add_event("replica_replaced",
                                   f"attempt {status.attempt} ended without a result", index)
            await anyio.sleep(min(2.0 ** crashes - 1, 30.0))

    async def _boot(self, index: int) -> int | None:
        """Start the agent of ``index`` on a fresh "machine" and wait for it."""
        machine = self.compute.replica_dir(index)
        await anyio.to_thread.run_sync(_fresh, machine)
        if self.stopping:
            return None
        command = [sys.executable, "-m", AGENT_MODULE, "--storage", self.storage_url,
                   "--replica", str(index), "--workdir", str(machine / "workdir")]
        with open(self.compute.path / f"replica-{index}.log", "ab") as log:
            process = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=log, start_new_session=True)
        async with process:
            return await self._watch(index, process)

    async def _watch(self, index: int, process: Process) -> int:
        pid_file = self.compute.replica_pid_file(index)
        pid_file.write_text(str(process.pid))
        self.agents[index] = process.pid
        self.compute.add_event("replica_started", f"pid {process.pid}", index)
        try:
            return await process.wait()
        finally:
            del self.agents[index]
            self.compute.stop_machine(process.pid)  # leftovers go with the machine
            pid_file.unlink(missing_ok=True)

    async def _status(self, index: int) -> ReplicaStatus:
        try:
            return ReplicaStatus.from_json(
                json.loads(await self.storage.read(layout.status_key(index))))
        except ObjectNotFound:
            return ReplicaStatus(index)

    async def _lose(self, index: int, status: ReplicaStatus, crashes: int) -> None:
        reason = "machine lost" if self.spot < 0 else (
            f"agent failed {crashes} times in a row; see {self.compute.path}/replica-{index}.log")
        lost = dataclasses.replace(status, state=ReplicaState.FAILED, exit_code=None,
                                   finished=time.time(), reason=reason)
        await self.storage.write(layout.status_key(index), json.dumps(lost.to_json()).encode())
        self.compute.add_event("replica_lost", reason, index)

    async def _on_sigterm(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                await self._stop()
                return

    async def _stop(self) -> None:
        self.stopping = True
        for pid in list(self.agents.values()):
            signal_pid(pid, signal.SIGTERM)
        await wait_until(lambda: not self.agents, AGENT_STOP_TIMEOUT)
        for pid in list(self.agents.values()):
            self.compute.stop_machine(pid)


def _fresh(machine: Path) -> None:
    # a replacement machine starts with an empty disk: only storage carries state over
    shutil.rmtree(machine, ignore_errors=True)
    (machine / "workdir").mkdir(parents=True)


async def _supervise(compute: ComputeDir) -> None:
    url = compute.read_json("launch.json")["storage_url"]
    async with open_storage(url) as storage:
        spec = json.loads(await storage.read(layout.SPEC))
        await Supervisor(compute, storage, spec, url).run()


def _detach(pid_file: Path) -> None:
    """Fork: the parent records the child's pid and exits, so whoever started us can reap
    it at once and the supervisor outlives it (re-parented to init)."""
    child = os.fork()
    if child:
        pid_file.write_text(str(child))
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Supervise the task whose compute directory is given."""
    parser = argparse.ArgumentParser(prog="python -m tpi_core.backends._supervisor")
    parser.add_argument("compute", type=Path)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    compute = ComputeDir(args.compute.absolute())
    pid_file = compute.path / "supervisor.pid"
    if args.detach:
        _detach(pid_file)
    else:
        pid_file.write_text(str(os.getpid()))
    try:
        anyio.run(_supervise, compute)
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Conformance test of a backend's whole lifecycle, through the ``tpi`` command as a user runs it.

Subclass :class:`BackendContract` in a test module, name the cloud, and provide a ``cloud``
fixture that plays the cloud for the test (starts the real agent on every machine the
backend asks for) while it runs::

    class TestAWSLifecycle(BackendContract):
        CLOUD = "aws"
        SETTINGS = 'region = "us-west"\\nmachine = "m"'

        @pytest.fixture
        def cloud(self, aws_env, tmp_path):
            with Ec2Player(REGION, tmp_path / "machines", dict(os.environ)) as ec2:
                yield ec2

Every test applies a task that counts epochs into ``results/epoch.txt`` and resumes from
it, with a secret in its environment and a tag. Preemption runs where the backend declares
:attr:`Capability.SPOT`, stop and start where it declares :attr:`Capability.STOP_START`.
The value of ``cloud`` may have an ``errors`` list, shown when a wait times out, and empty
at the end. A subclass checks what its cloud shows (resources and their tags, the cloud's
events, what a preemption did) in :meth:`~BackendContract.check_applied`,
:meth:`~BackendContract.check_finished`, :meth:`~BackendContract.check_destroyed` and
:meth:`~BackendContract.check_preempted`.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from tpi_core.backend import Backend, Capability, TaskRef
from tpi_core.registry import backend_class

SECRET = "contract-secret-value-0451"
"""The task's one environment value: never in a log, a resource, or a local file."""
TAG = ("project", "contract")
"""The task's one tag of its own."""
SCRIPT = """
#!/bin/sh
mkdir -p results
epoch=$(cat results/epoch.txt 2>/dev/null || echo 0)
echo "resuming at $epoch, attempt $TPI_ATTEMPT, token ${TOKEN:+present}"
while [ "$epoch" -lt EPOCHS ]; do
  if [ "$TPI_ATTEMPT" = 1 ] && [ "$epoch" -ge HOLD ]; then sleep 0.4; continue; fi
  echo "epoch $epoch"
  epoch=$((epoch + 1))
  echo "$epoch" > results/epoch.tmp && mv results/epoch.tmp results/epoch.txt
  sleep 0.4
done
echo scratch > scratch.txt
echo done
"""
"""The task's script: POSIX shell and coreutils only, so it runs in any image."""


class BackendContract:
    """Apply twice, preempt and resume, stop and start, destroy twice, nothing left."""

    CLOUD: ClassVar[str]
    SETTINGS: ClassVar[str] = ""
    """More lines of the task's table (region, machine...)."""
    WAIT: ClassVar[float] = 150.0
    """Seconds one wait may take (a loaded machine slows emulators and agents alike)."""
    seen: Any = None
    """The last status a wait saw, shown when it times out."""

    @pytest.fixture
    def cloud(self) -> Any:
        raise NotImplementedError("a BackendContract subclass provides a `cloud` fixture")

    @pytest.fixture
    def project(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setenv("TPI_POLL_INTERVAL", "0.3")
        work = tmp_path / "project"
        work.mkdir()
        (work / "input.txt").write_text("input\n")
        self.write_tasks(work, epochs=4)
        return work

    def write_tasks(self, work: Path, epochs: int, spot: bool = False,
                    hold: int | None = None) -> None:
        """``hold``: the first attempt stops counting there and waits to be interrupted
        (a stop or a preemption never races the script's own end)."""
        script = SCRIPT.replace("EPOCHS", str(epochs)).replace("HOLD", str(hold or epochs))
        lines = [f'cloud = "{self.CLOUD}"', 'timeout = "10m"', self.SETTINGS,
                 "spot = 0" if spot else "", f'tags = {{ {TAG[0]} = "{TAG[1]}" }}',
                 f"script = '''{script}'''"]
        table = "[task.contract]\n" + "\n".join(lines)
        (work / "tasks.toml").write_text(table + textwrap.dedent(f"""
            [task.contract.environment]
            TOKEN = "{SECRET}"

            [task.contract.storage]
            workdir = "."
            output = "results"
            exclude = [".tpi"]
            """))

    async def found(self, backend: Backend, task_id: str) -> TaskRef:
        """The task as the backend's ``find()`` lists it (a backend without
        :attr:`Capability.FIND` lists nothing: then a ref with no region)."""
        if Capability.FIND not in backend_class(self.CLOUD).CAPABILITIES:
            return TaskRef(task_id, self.CLOUD, "")
        refs = [r for r in await backend.find() if r.task_id == task_id]
        assert len(refs) == 1, f"find() lists {task_id} {len(refs)} times"
        return refs[0]

    async def check_applied(self, cloud: Any, task_id: str) -> None:
        """What the cloud shows once the task is applied (its resources, their tags, no
        secret in them); nothing by default."""

    async def check_finished(self, cloud: Any, done: dict) -> None:
        """What the cloud shows once the task succeeded (``done``: its ``tpi status
        --json``); nothing by default."""

    async def check_destroyed(self, cloud: Any, task_id: str) -> None:
        """That the cloud holds nothing of the task any more (beyond :meth:`storage_left`);
        nothing by default."""

    async def check_preempted(self, cloud: Any, said: str, done: dict) -> None:
        """What ``tpi debug preempt`` said it did (``said``), and the status once the task
        succeeded after it; nothing by default."""

    async def storage_left(self, cloud: Any, backend: Backend, ref: TaskRef) -> list[str]:
        """What is left of the task's storage after destroy; a backend whose storage cannot
        be listed once gone (a claim behind a server) overrides this."""
        storage = await backend.storage(ref)
        return [info.key async for info in storage.list()]

    # the contract

    @pytest.mark.anyio
    async def test_apply_twice_then_destroy_twice_leaves_nothing(self, cloud, project):
        created = json.loads((await tpi(project, "apply", "--json")).stdout)[0]
        assert created["action"] == "create"
        await self.check_applied(cloud, created["id"])
        again = json.loads((await tpi(project, "apply", "--json")).stdout)[0]
        assert again["action"] == "unchanged"
        done = await self.wait_state(cloud, project, "succeeded")
        text = (await tpi(project, "logs")).stdout
        assert "resuming at 0, attempt 1, token present" in text and "epoch 3" in text
        assert SECRET not in text
        await self.check_finished(cloud, done)
        backend = backend_class(self.CLOUD)()
        try:
            ref = await self.found(backend, done["task_id"])
            await tpi(project, "destroy", "--yes")
            await tpi(project, "destroy", "--yes")
            assert (project / "results" / "epoch.txt").read_text() == "4\n"
            assert not (project / "scratch.txt").exists()  # only `output` comes back
            assert (await status(project))["state"] == "destroyed"
            assert ref.task_id not in [r.task_id for r in await backend.find()]
            assert await self.storage_left(cloud, backend, ref) == []
            await self.check_destroyed(cloud, ref.task_id)
        finally:
            await backend.aclose()
        for path in project.rglob("*"):
            if path.is_file() and path.name != "tasks.toml":
                assert SECRET.encode() not in path.read_bytes(), path
        assert not getattr(cloud, "errors", None)

    @pytest.mark.anyio
    async def test_a_preempted_replica_resumes(self, cloud, project):
        if Capability.SPOT not in backend_class(self.CLOUD).CAPABILITIES:
            pytest.skip(f"{self.CLOUD} declares no spot machines")
        self.write_tasks(project, epochs=12, spot=True, hold=4)
        await tpi(project, "apply")
        await self.wait_for(cloud, lambda t: "epoch 3" in t, "epoch 3", project)
        said = (await tpi(project, "debug", "preempt", "contract")).stderr
        done = await self.wait_state(cloud, project, "succeeded")
        assert done["recoveries"] == 1, done
        await self.check_preempted(cloud, said, done)
        await self.resumed(project)

    @pytest.mark.anyio
    async def test_stop_then_start_resumes(self, cloud, project):
        if Capability.STOP_START not in backend_class(self.CLOUD).CAPABILITIES:
            pytest.skip(f"{self.CLOUD} cannot stop and start a task")
        self.write_tasks(project, epochs=12, hold=4)
        await tpi(project, "apply")
        await self.wait_for(cloud, lambda t: "epoch 3" in t, "epoch 3", project)
        await tpi(project, "stop", "contract")
        await self.wait_state(cloud, project, "stopped")
        await tpi(project, "start", "contract")
        done = await self.wait_state(cloud, project, "succeeded")
        assert done["recoveries"] == 0, done
        await self.resumed(project)

    # helpers

    async def resumed(self, project: Path) -> None:
        """The second boot went on from the checkpoint; then destroy brings back the output."""
        text = (await tpi(project, "logs")).stdout
        starts = [line for line in text.splitlines() if "resuming at" in line]
        assert len(starts) == 2 and "attempt 2" in starts[1], text
        assert "resuming at 0," not in starts[1] and text.count("epoch 0\n") == 1, text
        await tpi(project, "destroy", "--yes")
        assert (project / "results" / "epoch.txt").read_text() == "12\n"

    async def wait_state(self, cloud: Any, project: Path, state: str) -> dict:
        async def check() -> dict | None:
            found = self.seen = await status(project)
            return found if found["state"] == state else None
        return await self._poll(cloud, check, f"state {state}")

    async def wait_for(self, cloud: Any, seen: Callable[[str], bool], what: str,
                       project: Path) -> None:
        async def check() -> bool:
            return seen((await tpi(project, "logs")).stdout)
        await self._poll(cloud, check, what)

    async def _poll(self, cloud: Any, check: Callable, what: str) -> Any:
        limit = time.monotonic() + self.WAIT
        while time.monotonic() < limit:
            if found := await check():
                return found
            await anyio.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last seen {self.seen!r}; "
                             f"cloud errors: {getattr(cloud, 'errors', None)}")


class _Run:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout.decode(), stderr.decode()


async def tpi(work: Path, *args: str) -> _Run:
    """``tpi ARGS`` in its own process in ``work``; a non-zero exit fails the test."""
    run = await anyio.run_process([sys.executable, "-m", "tpi_core", *args], cwd=work,
                                  env=dict(os.environ), check=False)
    result = _Run(run.returncode, run.stdout, run.stderr)
    if run.returncode != 0:
        raise AssertionError(f"tpi {' '.join(args)} exited {run.returncode}:\n{result.stderr}")
    return result


async def status(work: Path) -> dict:
    """``tpi status --json`` of the project's only task."""
    return json.loads((await tpi(work, "status", "--json")).stdout)[0]

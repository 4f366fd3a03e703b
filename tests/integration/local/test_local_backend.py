"""The local backend with real detached processes: supervisor, agents, scripts.

Each test plays the engine's part of ``apply`` itself: spec.json, workdir upload, then the
backend's create steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tpi_core import layout
from tpi_core.backend import Launch, TaskRef
from tpi_core.backends._compute import is_alive, read_pid
from tpi_core.backends.local import LocalBackend
from tpi_core.errors import BackendError
from tpi_core.model import ReplicaState, ReplicaStatus, Secrets, StorageSpec, Task
from tpi_core.steps import delete_steps, run_steps
from tpi_core.storage.sync import upload_tree
from tpi_core.testing.contract import BackendContract

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "s3cr3t-value-never-stored"


@pytest.fixture
async def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TPI_LOCAL_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("TPI_AGENT_LOG_INTERVAL", "0.2")
    monkeypatch.setenv("TPI_AGENT_SYNC_INTERVAL", "0.3")
    monkeypatch.setenv("TPI_AGENT_STOP_GRACE", "2")
    local = LocalBackend()
    yield local
    for compute in (local.root / "compute").glob("*"):  # never leave a process behind
        await local._remove(compute.name)


def make_task(tmp_path: Path, script: str, name: str = "demo", **fields) -> Task:
    workdir = tmp_path / "project"
    workdir.mkdir(exist_ok=True)
    (workdir / "input.txt").write_text("uploaded\n")
    return Task(name=name, cloud="local", script=script, id=f"{name}-0123abcd",
                storage=StorageSpec(workdir="project", output="results"), base_dir=tmp_path,
                **fields)


async def prepare(backend: LocalBackend, task: Task, timeout: float = 60) -> Launch:
    """The engine's part of apply before the create steps."""
    storage = await backend.storage(TaskRef.of(task), create=task)
    spec = {"id": task.id, "name": task.name, "cloud": "local", "region": task.region,
            "parallelism": task.parallelism, "deadline": time.time() + timeout,
            "created": time.time(), "script": task.script,
            "environment_keys": sorted(task.environment), "spec_hash": task.spec_hash(),
            "output": task.storage.output, "exclude": [], "spot": task.spot}
    await storage.write(layout.SPEC, json.dumps(spec).encode())
    await upload_tree(task.workdir, storage.child(layout.DATA))
    return Launch(storage.url, spec["deadline"])


async def apply(backend: LocalBackend, task: Task) -> Launch:
    launch = await prepare(backend, task)
    await run_steps(backend.create_steps(task, launch))
    return launch


def statuses(backend: LocalBackend, task: Task) -> list[ReplicaStatus]:
    root = backend.storage_dir(TaskRef.of(task))
    found = []
    for index in range(task.parallelism):
        path = root / layout.status_key(index)
        found.append(ReplicaStatus.from_json(json.loads(path.read_text()))
                     if path.is_file() else ReplicaStatus(index))
    return found


async def wait_for(condition, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


async def wait_final(backend: LocalBackend, task: Task) -> list[ReplicaStatus]:
    await wait_for(lambda: all(s.state.final for s in statuses(backend, task)))
    return statuses(backend, task)


def stored(backend: LocalBackend, task: Task, key: str) -> str:
    return (backend.storage_dir(TaskRef.of(task)) / key).read_text()


def epoch_in_workdir(backend: LocalBackend, task: Task) -> int:
    path = backend.compute(task.id).replica_dir(0) / "workdir/results/epoch.txt"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


async def test_parallel_replicas_have_their_own_index_and_never_stop_each_other(
        backend: LocalBackend, tmp_path: Path) -> None:
    script = """echo "replica $TPI_REPLICA_INDEX of $TPI_REPLICA_COUNT attempt $TPI_ATTEMPT"
[ "$(echo "$FOO" | tr a-z A-Z)" = "%s" ] && echo env-ok
[ "$TPI_REPLICA_INDEX" = 0 ] && exit 0
sleep 1.5
mkdir -p results && echo done > results/r$TPI_REPLICA_INDEX.txt
""" % SECRET.upper()
    task = make_task(tmp_path, script, parallelism=3, environment=Secrets({"FOO": SECRET}))
    launch = await apply(backend, task)
    pid = backend.compute(task.id).supervisor_pid()
    await run_steps(backend.create_steps(task, launch))  # a second create changes nothing
    assert backend.compute(task.id).supervisor_pid() == pid
    done = await wait_final(backend, task)
    assert [(s.index, s.state) for s in done] == [(i, ReplicaState.SUCCEEDED) for i in range(3)]
    assert done[0].finished < min(done[1].finished, done[2].finished) - 1
    for i in range(3):
        log = stored(backend, task, layout.log_key(i, 1))
        assert f"stdout replica {i} of 3 attempt 1" in log and "stdout env-ok" in log
    assert stored(backend, task, "data/results/r2.txt") == "done\n"
    await wait_for(lambda: backend.compute(task.id).supervisor_pid() is None)
    seen = await backend.observe(TaskRef.of(task))
    assert (seen.exists, seen.machines, seen.desired) == (True, 0, 0)
    codes = [e.code for e in seen.events]
    assert codes.count("replica_started") == 3 and codes[-1] == "finished"
    assert [r.task_id for r in await backend.find()] == [task.id]
    for path in backend.root.rglob("*"):  # environment values are never written down
        assert not path.is_file() or SECRET not in path.read_text(errors="replace")


README_LOOP = """mkdir -p results
if test -f results/epoch.txt; then EPOCH="$(cat results/epoch.txt)"; fi
EPOCH=${EPOCH:-1}
echo "(re)starting training loop from $EPOCH up to 40 epochs (attempt $TPI_ATTEMPT)"
for epoch in $(seq $EPOCH 40); do
  sleep 0.1
  echo "$epoch" > results/epoch.tmp && mv results/epoch.tmp results/epoch.txt
  echo "$epoch"
done
"""
# The README's loop writes its checkpoint with `tee`, which truncates the file first: a kill
# at that moment leaves it empty and the loop restarts from 1. This one writes atomically.


async def test_a_preempted_spot_replica_resumes_from_its_checkpoint(
        backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # long intervals: only the flush on the preemption notice can save the checkpoint
    monkeypatch.setenv("TPI_AGENT_LOG_INTERVAL", "60")
    monkeypatch.setenv("TPI_AGENT_SYNC_INTERVAL", "60")
    task = make_task(tmp_path, README_LOOP, name="train", spot=0.0)
    await apply(backend, task)
    await wait_for(lambda: epoch_in_workdir(backend, task) >= 5)
    noticed = epoch_in_workdir(backend, task)
    preempt = subprocess.run(
        [sys.executable, "-c", "from tpi_core.cli import main; main()", "debug", "preempt",
         "train", "--grace", "5"], capture_output=True, text=True, timeout=20)
    assert preempt.returncode == 0, preempt.stderr
    assert "preempted replica 0 of task train-0123abcd" in preempt.stderr
    [done] = await wait_final(backend, task)
    assert (done.state, done.attempt) == (ReplicaState.SUCCEEDED, 2)
    first = stored(backend, task, layout.log_key(0, 1)).splitlines()
    second = stored(backend, task, layout.log_key(0, 2)).splitlines()
    assert f"stdout {noticed}" in {line.split(" ", 1)[1] for line in first}
    resumed = int(second[0].split("from ")[1].split()[0])
    assert resumed >= noticed and "(attempt 2)" in second[0]
    epochs = {int(line.split()[-1]) for line in first + second if line.split()[-1].isdigit()}
    assert epochs == set(range(1, 41))  # nothing lost, both boots kept
    assert stored(backend, task, "data/results/epoch.txt") == "40\n"
    events = (await backend.observe(TaskRef.of(task))).events
    assert [e.replica for e in events if e.code == "replica_replaced"] == [0]


async def test_an_on_demand_replica_that_is_lost_fails(backend: LocalBackend,
                                                       tmp_path: Path) -> None:
    task = make_task(tmp_path, "echo working\nsleep 30")
    await apply(backend, task)
    await wait_for(lambda: backend.compute(task.id).live_agents())
    await wait_for(lambda: statuses(backend, task)[0].state == ReplicaState.RUNNING)
    await backend.preempt(TaskRef.of(task), 0, grace=5)
    [done] = await wait_final(backend, task)
    assert (done.state, done.reason) == (ReplicaState.FAILED, "machine lost")
    await wait_for(lambda: backend.compute(task.id).supervisor_pid() is None)


SPAWNER = """
import sys, anyio
from pathlib import Path
from tpi_core.backend import Launch
from tpi_core.backends.local import LocalBackend
from tpi_core.model import Task
from tpi_core.steps import run_steps
task = Task(name="demo", cloud="local", script="", id="demo-0123abcd")
launch = Launch(sys.argv[1], 0.0)
anyio.run(run_steps, LocalBackend().create_steps(task, launch))
"""


async def test_the_supervisor_survives_the_process_that_started_it(
        backend: LocalBackend, tmp_path: Path) -> None:
    task = make_task(tmp_path, "sleep 1.5\nmkdir -p results\necho late > results/late.txt")
    launch = await prepare(backend, task)
    spawner = subprocess.run([sys.executable, "-c", SPAWNER, launch.storage_url], timeout=20)
    assert spawner.returncode == 0
    pid = backend.compute(task.id).supervisor_pid()
    assert pid is not None and is_alive(pid)
    [done] = await wait_final(backend, task)
    assert done.state == ReplicaState.SUCCEEDED
    assert stored(backend, task, "data/results/late.txt") == "late\n"


async def test_delete_leaves_no_process_behind(backend: LocalBackend, tmp_path: Path) -> None:
    script = "sleep 300 &\necho $! > child.pid\necho $$ > main.pid\nsleep 300\n"
    task = make_task(tmp_path, script, parallelism=2, spot=0.0)
    await apply(backend, task)
    compute = backend.compute(task.id)
    workdirs = [compute.replica_dir(i) / "workdir" for i in range(2)]
    await wait_for(lambda: all((w / "main.pid").is_file() and (w / "child.pid").is_file()
                               and (w / "child.pid").read_text() for w in workdirs))
    pids = [compute.supervisor_pid(), *compute.live_agents().values()]
    pids += [read_pid(w / name) for w in workdirs for name in ("main.pid", "child.pid")]
    assert len(pids) == 7 and all(pids) and all(is_alive(p) for p in pids)
    await delete_steps(backend.delete_steps(TaskRef.of(task)))
    await wait_for(lambda: not any(is_alive(p) for p in pids), timeout=5)
    assert not compute.path.exists()
    assert (await backend.observe(TaskRef.of(task))).exists is False
    await delete_steps(backend.delete_steps(TaskRef.of(task)))  # twice is fine


async def test_stop_keeps_storage_and_start_resumes(backend: LocalBackend,
                                                    tmp_path: Path) -> None:
    task = make_task(tmp_path, README_LOOP, environment=Secrets({"FOO": SECRET}))
    ref = TaskRef.of(task)
    launch = await apply(backend, task)
    await wait_for(lambda: epoch_in_workdir(backend, task) >= 3)
    await backend.set_capacity(ref, 0)
    [stopped] = statuses(backend, task)
    assert stopped.state == ReplicaState.PREEMPTED  # not "machine lost": it was asked to stop
    seen = await backend.observe(ref)
    assert (seen.exists, seen.machines, seen.desired) == (True, 0, 0)
    assert backend.compute(task.id).supervisor_pid() is None
    with pytest.raises(BackendError, match="environment values"):
        await backend.set_capacity(ref, 1)
    await backend.start(task, launch)
    assert (await backend.observe(ref)).desired == 1
    [done] = await wait_final(backend, task)
    assert (done.state, done.attempt) == (ReplicaState.SUCCEEDED, 2)
    second = stored(backend, task, layout.log_key(0, 2)).splitlines()[0]
    assert int(second.split("from ")[1].split()[0]) >= 3


async def test_preempting_an_unknown_task_is_one_line_and_exit_3(backend: LocalBackend) -> None:
    done = subprocess.run([sys.executable, "-c", "from tpi_core.cli import main; main()",
                           "debug", "preempt", "nothing-here"], capture_output=True, text=True,
                          timeout=20, env=os.environ)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "no local task named 'nothing-here'" in done.stderr


class TestLocalLifecycle(BackendContract):
    """The contract on the local backend: its supervisor runs the real agents."""

    CLOUD = "local"

    @pytest.fixture
    def cloud(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TPI_AGENT_LOG_INTERVAL", "0.3")
        monkeypatch.setenv("TPI_AGENT_SYNC_INTERVAL", "0.3")

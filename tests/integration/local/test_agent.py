"""The agent alone, against a directory storage with a hand-written spec.json.

Most tests run the real program (``python -m tpi_core.agent``) as a subprocess; the ones
that count storage requests or use hooks run it in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tpi_core import layout
from tpi_core.agent import EXIT_DONE, EXIT_PREEMPTED, Agent, AgentConfig, AgentHooks, load_hooks
from tpi_core.errors import UsageError
from tpi_core.model import ReplicaState, ReplicaStatus
from tpi_core.storage.local import LocalStorage

pytestmark = pytest.mark.integration

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (stdout|stderr) (.*)$")
FAST = {"TPI_AGENT_LOG_INTERVAL": "0.1", "TPI_AGENT_SYNC_INTERVAL": "0.2",
        "TPI_AGENT_STOP_GRACE": "2"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "data").mkdir(parents=True)
    (root / "data" / "input.txt").write_text("uploaded\n")
    return root


def write_spec(root: Path, script: str, **fields: object) -> None:
    spec = {"id": "task-abc123", "name": "demo", "cloud": "local", "region": "here",
            "parallelism": 1, "deadline": time.time() + 60, "created": time.time(),
            "script": script, "environment_keys": [], "spec_hash": "0", "output": "results",
            "exclude": [], "spot": 0, **fields}
    (root / "spec.json").write_text(json.dumps(spec))


def start_agent(root: Path, workdir: Path, replica: int = 0, env: dict | None = None,
                **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "tpi_core.agent", "--storage", str(root),
               "--replica", str(replica), "--workdir", str(workdir)]
    return subprocess.Popen(command, env={**os.environ, **FAST, **(env or {})}, **popen)


def run_agent(root: Path, workdir: Path, replica: int = 0, env: dict | None = None) -> int:
    with start_agent(root, workdir, replica, env) as agent:
        return agent.wait(timeout=15)


def status(root: Path, replica: int = 0) -> ReplicaStatus:
    path = root / layout.status_key(replica)
    return ReplicaStatus.from_json(json.loads(path.read_text()))


def log_lines(root: Path, replica: int = 0, attempt: int = 1) -> list[tuple[str, str]]:
    text = (root / layout.log_key(replica, attempt)).read_text()
    return [LINE.match(line).groups() for line in text.splitlines()]


def event_codes(root: Path, replica: int = 0, attempt: int = 1) -> list[str]:
    text = (root / layout.events_key(replica, attempt)).read_text()
    return [json.loads(line)["code"] for line in text.splitlines()]


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_success_restores_runs_and_reports(store: Path, tmp_path: Path) -> None:
    write_spec(store, "cat input.txt\necho to-stderr >&2\nmkdir -p results\n"
                      "echo 42 > results/answer.txt\n")
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    done = status(store)
    assert (done.state, done.exit_code, done.attempt) == (ReplicaState.SUCCEEDED, 0, 1)
    assert done.started <= done.finished
    assert ("stdout", "uploaded") in log_lines(store)
    assert ("stderr", "to-stderr") in log_lines(store)
    assert event_codes(store) == ["boot", "restore", "started", "exited"]
    assert (store / "data" / "results" / "answer.txt").read_text() == "42\n"


def test_failure_keeps_the_exit_code(store: Path, tmp_path: Path) -> None:
    write_spec(store, "echo about to fail\nexit 3")
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    assert (status(store).state, status(store).exit_code) == (ReplicaState.FAILED, 3)


def test_script_gets_task_keys_basics_and_tpi_variables(store: Path, tmp_path: Path) -> None:
    write_spec(store, "env | sort", parallelism=3, environment_keys=["FOO", "ABSENT"])
    (store / layout.status_key(2)).parent.mkdir(parents=True)
    (store / layout.status_key(2)).write_text(json.dumps(
        ReplicaStatus(2, ReplicaState.PREEMPTED, attempt=2, started=1.0).to_json()))
    assert run_agent(store, tmp_path / "wd", 2, {"FOO": "foo value", "OTHER": "x"}) == 0
    env = dict(text.split("=", 1) for _, text in log_lines(store, 2, attempt=3) if "=" in text)
    assert env["FOO"] == "foo value"
    assert "OTHER" not in env and "ABSENT" not in env
    assert env["HOME"] == os.environ["HOME"] and "PATH" in env
    assert {k: env[k] for k in env if k.startswith("TPI_")} == {
        "TPI_TASK_ID": "task-abc123", "TPI_REPLICA_INDEX": "2", "TPI_REPLICA_COUNT": "3",
        "TPI_ATTEMPT": "3"}
    assert status(store, 2).attempt == 3
    assert status(store, 2).started == 1.0  # the replica's first start is kept


def test_a_boot_after_tpi_stop_is_a_resume_and_a_later_one_a_recovery(store: Path,
                                                                        tmp_path: Path) -> None:
    write_spec(store, "exit 9")
    (store / "reports/replica-0").mkdir(parents=True)
    stopped = ReplicaStatus(0, ReplicaState.PREEMPTED, attempt=2, started=1.0, resumes=0)
    (store / layout.status_key(0)).write_text(json.dumps(stopped.to_json()))
    (store / layout.STOPS).write_text(json.dumps({"stops": 1}))  # what `tpi stop` left
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    resumed = status(store)
    assert (resumed.attempt, resumed.stops, resumed.resumes, resumed.recoveries) == (3, 1, 1, 1)
    boot = json.loads((store / layout.events_key(0, 3)).read_text().splitlines()[0])
    assert boot["message"] == "attempt 3, resumed after tpi stop"

    # the machine is lost later, with no stop since: that boot is a recovery
    lost = ReplicaStatus(0, ReplicaState.PREEMPTED, attempt=3, started=1.0, stops=1, resumes=1)
    (store / layout.status_key(0)).write_text(json.dumps(lost.to_json()))
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    recovered = status(store)
    assert (recovered.attempt, recovered.resumes, recovered.recoveries) == (4, 1, 2)
    boot = json.loads((store / layout.events_key(0, 4)).read_text().splitlines()[0])
    assert boot["message"] == "attempt 4"


def test_a_finished_replica_is_never_run_again(store: Path, tmp_path: Path) -> None:
    write_spec(store, "touch ran")
    (store / "reports/replica-0").mkdir(parents=True)
    final = ReplicaStatus(0, ReplicaState.FAILED, attempt=1, exit_code=1)
    (store / layout.status_key(0)).write_text(json.dumps(final.to_json()))
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    assert status(store) == final
    assert not (tmp_path / "wd" / "ran").exists()
    assert not (store / layout.log_key(0, 2)).exists()


def test_deadline_stops_the_script_as_timed_out(store: Path, tmp_path: Path) -> None:
    write_spec(store, "echo started\nsleep 30", deadline=time.time() + 1.5)
    began = time.monotonic()
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    assert time.monotonic() - began < 8
    done = status(store)
    assert (done.state, done.exit_code) == (ReplicaState.TIMED_OUT, 128 + signal.SIGTERM)
    assert ("stdout", "started") in log_lines(store)
    assert event_codes(store)[-1] == "timed_out"


def test_a_boot_after_the_deadline_times_out_at_once(store: Path, tmp_path: Path) -> None:
    write_spec(store, "touch ran", deadline=time.time() - 1)
    assert run_agent(store, tmp_path / "wd") == EXIT_DONE
    assert status(store).state == ReplicaState.TIMED_OUT
    assert not (tmp_path / "wd" / "ran").exists()


CHECKPOINT_LOOP = """mkdir -p results
for epoch in $(seq 1 100000); do
  echo "$epoch" > results/epoch.tmp && mv results/epoch.tmp results/epoch.txt
  echo "epoch $epoch"
  sleep 0.02
done
"""


def test_sigterm_flushes_everything_written_before_the_notice(store: Path,
                                                              tmp_path: Path) -> None:
    write_spec(store, CHECKPOINT_LOOP)
    slow = {"TPI_AGENT_LOG_INTERVAL": "60", "TPI_AGENT_SYNC_INTERVAL": "60"}
    epoch_file = tmp_path / "wd" / "results" / "epoch.txt"
    with start_agent(store, tmp_path / "wd", env=slow) as agent:
        wait_for(lambda: epoch_file.is_file() and int(epoch_file.read_text() or 0) >= 5)
        noticed = int(epoch_file.read_text() or 0)  # the script keeps going meanwhile
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == EXIT_PREEMPTED
    # with 60 s intervals, only the flush on notice can have saved these
    assert int((store / "data/results/epoch.txt").read_text()) >= noticed
    assert ("stdout", f"epoch {noticed}") in log_lines(store)
    assert status(store).state == ReplicaState.PREEMPTED
    assert event_codes(store)[-2:] == ["flush", "preempted"]


class CountingStorage(LocalStorage):
    """LocalStorage that counts what the agent sends (shared by its children)."""

    def __init__(self, root, sent=None):
        super().__init__(root)
        self.sent: list[str] = [] if sent is None else sent

    def child(self, prefix):
        return CountingStorage(self.root / prefix, self.sent)

    async def write(self, key, data):
        self.sent.append(key)
        await super().write(key, data)

    async def upload(self, key, path, progress=None):
        self.sent.append(key)
        await super().upload(key, path, progress)


@pytest.mark.anyio
async def test_logs_are_pushed_while_running_and_idle_costs_no_request(
        store: Path, tmp_path: Path) -> None:
    # the loop keeps touching an excluded cache: that must not cost a request either
    write_spec(store, "echo first\nmkdir -p cache\n"
                      "while [ ! -f go ]; do date +%s%N > cache/tick; sleep 0.05; done\n"
                      "echo second", exclude=["cache"])
    storage = CountingStorage(store)
    workdir = tmp_path / "wd"
    agent = Agent(AgentConfig(str(store), 0, workdir, 0.1, 0.2), storage=storage)
    log = store / layout.log_key(0, 1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run)
        with anyio.fail_after(10):
            while not (log.is_file() and "stdout first" in log.read_text()):
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        before = list(storage.sent)
        await anyio.sleep(1.0)  # ten log rounds and five sync rounds with nothing new
        assert storage.sent == before
        (workdir / "go").touch()
    assert status(store).state == ReplicaState.SUCCEEDED
    assert "stdout second" in log.read_text()
    assert (store / "data" / "go").exists()
    assert not (store / "data" / "cache").exists()


class Recorder(AgentHooks):
    def __init__(self, notice_after: float | None = None):
        self.notice_after = notice_after
        self.exits: list[ReplicaStatus] = []

    async def wait_for_preemption(self) -> None:
        if self.notice_after is None:
            await anyio.sleep_forever()
        await anyio.sleep(self.notice_after)

    async def on_exit(self, status: ReplicaStatus) -> None:
        self.exits.append(status)


@pytest.mark.anyio
async def test_hooks_give_the_notice_and_hear_only_final_exits(store: Path,
                                                             tmp_path: Path) -> None:
    write_spec(store, "echo working\nsleep 30")
    hooks = Recorder(notice_after=0.5)
    code = await Agent(AgentConfig(str(store), 0, tmp_path / "a", 0.1, 0.2), hooks).run()
    assert (code, hooks.exits) == (EXIT_PREEMPTED, [])
    assert status(store).state == ReplicaState.PREEMPTED
    write_spec(store, "echo resumed")
    hooks = Recorder()
    assert await Agent(AgentConfig(str(store), 0, tmp_path / "b", 0.1, 0.2), hooks).run() == 0
    assert [(s.state, s.attempt) for s in hooks.exits] == [(ReplicaState.SUCCEEDED, 2)]


def test_hooks_are_loaded_by_name() -> None:
    assert type(load_hooks("")) is AgentHooks
    assert type(load_hooks("tpi_core.agent:AgentHooks")) is AgentHooks
    for bad in ("no_such_module:X", "tpi_core.agent:Nothing", "tpi_core.agent:Agent", "x"):
        with pytest.raises(UsageError):
            load_hooks(bad)


class NoticeAfterFile(AgentHooks):
    """A cloud notice that arrives a moment after the shutdown already hit the script."""

    def __init__(self, path: Path):
        self.path = path

    async def wait_for_preemption(self) -> None:
        while not self.path.exists():
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_a_script_killed_by_the_shutdown_is_preempted_not_failed(
        store: Path, tmp_path: Path) -> None:
    write_spec(store, "touch dying\nkill -TERM $$")
    hooks = NoticeAfterFile(tmp_path / "wd" / "dying")
    code = await Agent(AgentConfig(str(store), 0, tmp_path / "wd", 0.1, 0.2), hooks).run()
    assert (code, status(store).state) == (EXIT_PREEMPTED, ReplicaState.PREEMPTED)
    write_spec(store, "kill -KILL $$")  # no notice: a signal death is the script's failure
    assert await Agent(AgentConfig(str(store), 0, tmp_path / "b", 0.1, 0.2)).run() == 0
    assert (status(store).state, status(store).exit_code) == (ReplicaState.FAILED, 137)


class Claiming(AgentHooks):
    """A cloud whose machines claim their replica and read their secrets themselves."""

    def __init__(self, index: int | None):
        self.index = index
        self.closed = False

    async def replica_index(self, storage, spec) -> int | None:
        assert spec["id"] == "task-abc123"
        return self.index

    async def environment(self, spec) -> dict[str, str]:
        return {"FOO": "from the secret store"}

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_hooks_can_claim_the_replica_and_supply_the_environment(
        store: Path, tmp_path: Path) -> None:
    write_spec(store, 'echo "$TPI_REPLICA_INDEX $FOO"', parallelism=2, environment_keys=["FOO"])
    hooks = Claiming(1)
    assert await Agent(AgentConfig(str(store), None, tmp_path / "a"), hooks).run() == EXIT_DONE
    assert ("stdout", "1 from the secret store") in log_lines(store, 1)
    assert hooks.closed
    nothing_left = Claiming(None)
    assert await Agent(AgentConfig(str(store), None, tmp_path / "b"), nothing_left).run() == 0
    assert not (store / layout.status_key(0)).exists() and nothing_left.closed
    with pytest.raises(UsageError, match="--replica"):
        await Agent(AgentConfig(str(store), None, tmp_path / "c")).run()

"""What status and logs say while a task's machines boot and no agent has reported yet."""

from __future__ import annotations

import json
import time

import anyio
import pytest

from tpi_core import config, layout, registry
from tpi_core.backend import Observation, TaskRef
from tpi_core.cli import main
from tpi_core.cli._follow import waiting
from tpi_core.model import ReplicaState, ReplicaStatus, State
from tpi_core.reports import Reports, build_status, state_text
from tpi_core.testing.fake import FakeBackend
from tpi_core.testing.memory import MemoryStorage

NOW = 1_800_000_000.0
SPEC = {"id": "t-1", "name": "train", "cloud": "aws", "parallelism": 2, "created": NOW - 400}


def reports(**statuses: ReplicaState) -> Reports:
    found = {int(i[1:]): ReplicaStatus(int(i[1:]), s, 1) for i, s in statuses.items()}
    return Reports(found, [], [])


def status(seen: Observation, found: Reports | None = None, *, agent: bool = True,
           now: float = NOW):
    return build_status(SPEC, found or reports(), seen, agent=agent, now=now)


UP = Observation(True, machines=2, desired=2, first_up=NOW - 180)


def test_machines_up_with_no_agent_report_are_booting_since_the_first_launch():
    booting = status(UP)
    assert booting.state == State.BOOTING and booting.booting_since == NOW - 180
    assert state_text(booting, NOW) == "booting (2 machines up, no agent yet, 3m)"
    assert booting.reason == ""
    doc = booting.to_json()
    assert doc["state"] == "booting" and doc["booting_since"] == NOW - 180
    assert doc["machines"] == 2


def test_without_a_launch_time_the_boot_is_timed_from_the_spec_created():
    booting = status(Observation(True, machines=1, desired=2))
    assert booting.booting_since == SPEC["created"]
    assert state_text(booting, NOW) == "booting (1 machine up, no agent yet, 6m)"


@pytest.mark.parametrize(("seen", "agent"), [
    (Observation(True, machines=0, desired=2), True),  # nothing up yet
    (UP, False),  # a backend without an agent (local, k8s): its machines are its agents
])
def test_provisioning_stays_before_machines_are_up_or_without_an_agent(seen, agent):
    provisioning = status(seen, agent=agent)
    assert provisioning.state == State.PROVISIONING and provisioning.booting_since is None
    assert state_text(provisioning, NOW) == "provisioning"


def test_an_agent_report_ends_the_boot():
    assert status(UP, reports(r0=ReplicaState.RUNNING)).state == State.RUNNING
    assert status(UP, reports(r0=ReplicaState.PENDING)).state == State.PROVISIONING


def test_after_ten_minutes_of_booting_status_points_at_the_boot_log():
    assert status(UP, now=NOW - 180 + 599).reason == ""
    slow = status(UP, now=NOW - 180 + 600)
    assert slow.state == State.BOOTING
    assert "the boot may be failing" in slow.reason and "10m" in slow.reason
    assert "/var/log/tpi/boot.log" in slow.reason
    assert "reports/boot-failed/" in slow.reason and "`tpi logs`" in slow.reason


def test_an_earlier_failed_boot_keeps_its_reason():
    found = Reports({}, [], [], failure_reason="boot failed: fetch bundle: 403")
    assert status(UP, found, now=NOW + 3600).reason == "boot failed: fetch bundle: 403"


def test_logs_say_they_wait_for_the_first_boot():
    said = waiting(status(UP, now=time.time()))
    assert said.startswith("waiting for the first boot (2 machines up, no agent yet, ")


class BootingBackend(FakeBackend):
    """The fake backend with an agent: its machines come up and no agent reports; after
    ``polls`` observations it is stopped (so a follow ends)."""

    AGENT = ("tpi-fake", "tpi_fake")
    polls = 0

    async def observe(self, ref: TaskRef) -> Observation:
        BootingBackend.polls += 1
        if BootingBackend.polls > 3:
            return Observation(True, 0, 0)
        return Observation(True, 2, 2, first_up=time.time() - 185)


@pytest.fixture
def booting(tmp_path, monkeypatch):
    """A task applied on :class:`BootingBackend` (in place of the local backend)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TPI_POLL_INTERVAL", "0")
    (tmp_path / "tasks.toml").write_text('[task.a]\nscript = "true"\nparallelism = 2\n')
    task = config.load(tmp_path / "tasks.toml")[0]
    FakeBackend.reset()
    BootingBackend.polls = 0
    registry.register_backend("local", BootingBackend)
    spec = {"id": task.id, "name": "a", "cloud": "local", "parallelism": 2,
            "created": time.time() - 400, "applied": True}
    FakeBackend.storages[task.id] = storage = MemoryStorage()
    anyio.run(storage.write, layout.SPEC, json.dumps(spec).encode())
    yield task
    registry.register_backend("local", None)
    FakeBackend.reset()


def run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_status_and_logs_of_a_booting_task_through_the_cli(booting, capsys):
    code, out, _ = run_main(["status"], capsys)
    assert code == 0 and "booting (2 machines up, no agent yet, 3m)" in out
    code, out, _ = run_main(["status", "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["state"] == "booting"
    code, out, err = run_main(["logs", "a"], capsys)
    assert code == 0 and out == ""
    assert "a: no log yet: waiting for the first boot (2 machines up, no agent yet, 3m)" in err
    BootingBackend.polls = 0  # three polls booting, then stopped: said once, exit 0
    code, out, err = run_main(["logs", "--follow", "a"], capsys)
    assert code == 0 and err.count("waiting for the first boot") == 1, err

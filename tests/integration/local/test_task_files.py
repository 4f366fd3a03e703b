"""Tasks belong to the file that declared them, and one task is launched once.

Two tasks files in one folder share the folder's ``.tpi/`` index but never each other's
tasks: a task name used in both gives two tasks with two ids, and ``destroy -f a.toml`` leaves
``b.toml``'s alone. Two applies of one task at once launch it once: the second waits for the
first, then finds it applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tpi_core.index import Index

pytestmark = pytest.mark.integration

TASK = textwrap.dedent("""
    [task.train]
    script = "sleep 30"
    [task.{extra}]
    script = "sleep 30"
""")


def tpi(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=work,
                          capture_output=True, text=True, timeout=90, env=os.environ.copy())


def popen(work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tpi_core", *args], cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())


def states(work: Path, file: str) -> dict[str, tuple[str, str]]:
    done = tpi(work, "status", "--json", "-f", file)
    assert done.returncode == 0, done.stderr
    return {s["name"]: (s["task_id"], s["state"]) for s in json.loads(done.stdout)}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "a.toml").write_text(TASK.format(extra="only-a"))
    (tmp_path / "b.toml").write_text(TASK.format(extra="only-b"))
    return tmp_path


def test_two_tasks_files_in_one_folder_keep_their_own_tasks(work: Path) -> None:
    for file in ("a.toml", "b.toml"):
        assert tpi(work, "apply", file).returncode == 0
    a, b = states(work, "a.toml"), states(work, "b.toml")
    assert set(a) == {"train", "only-a"} and set(b) == {"train", "only-b"}
    assert a["train"][0] != b["train"][0]  # one name, two tasks
    index = Index(work)
    assert {e.task_id for e in index.entries("a.toml").values()} == {i for i, _ in a.values()}
    assert {e.task_id for e in index.entries("b.toml").values()} == {i for i, _ in b.values()}

    destroyed = tpi(work, "destroy", "--yes", "-f", "a.toml")
    assert destroyed.returncode == 0, destroyed.stderr
    assert b["train"][0] not in destroyed.stderr and "only-b" not in destroyed.stderr
    assert {s for _, s in states(work, "b.toml").values()} == {"running"}
    assert set(Index(work).entries()) == {"train", "only-b"}
    # a task removed from b.toml is still b's (found through the index), never a's
    (work / "b.toml").write_text('[task.other]\nscript = "true"\n')
    assert set(states(work, "b.toml")) == {"other", "train", "only-b"}
    assert tpi(work, "destroy", "--yes", "-f", "b.toml").returncode == 0
    assert Index(work).entries() == {}


def test_an_apply_waits_for_another_command_on_the_same_task(work: Path) -> None:
    (work / "tasks.toml").write_text('[task.one]\nscript = "sleep 30"\n')
    [task_id] = [i for i, _ in states(work, "tasks.toml").values()]
    index = Index(work)
    with index.task_lock([task_id]):
        second = popen(work, "apply", "--json")
        deadline = time.monotonic() + 60
        while "waiting for another tpi command" not in (line := second.stderr.readline()):
            assert line and time.monotonic() < deadline, "apply did not say it waits"
        time.sleep(0.5)
        assert second.poll() is None  # nothing planned or launched while the lock is held
        assert states(work, "tasks.toml")["one"][1] == "not applied"
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out)[0]["action"] == "create"
    assert tpi(work, "destroy", "--yes").returncode == 0


@pytest.mark.parametrize("attempt", range(3))
def test_two_applies_at_once_launch_a_task_once(work: Path, attempt: int) -> None:
    (work / "tasks.toml").write_text('[task.one]\nscript = "sleep 30"\n')
    runs = [popen(work, "apply", "--json") for _ in range(2)]
    done = [(run, *run.communicate(timeout=90)) for run in runs]
    assert [run.returncode for run, _, _ in done] == [0, 0], [e for _, _, e in done]
    actions = sorted(json.loads(out)[0]["action"] for _, out, _ in done)
    assert actions == ["create", "unchanged"]
    assert tpi(work, "destroy", "--yes").returncode == 0


def test_never_applied_destroyed_and_a_second_destroy(work: Path) -> None:
    (work / "tasks.toml").write_text('[task.one]\nscript = "sleep 30"\n')
    assert states(work, "tasks.toml")["one"][1] == "not applied"
    assert tpi(work, "apply").returncode == 0
    first = tpi(work, "destroy", "--yes")
    assert first.returncode == 0 and "Deleting" in first.stderr
    assert "one: destroyed" in first.stderr
    second = tpi(work, "destroy", "--yes")
    assert second.returncode == 0, second.stderr
    assert "Deleting" not in second.stderr and "nothing to destroy" in second.stderr
    assert states(work, "tasks.toml")["one"][1] == "destroyed"  # as the index remembers
    # a task the index lists whose storage is gone (destroyed from elsewhere) is destroyed
    assert tpi(work, "apply").returncode == 0
    task_id = states(work, "tasks.toml")["one"][0]
    (work / "tasks.toml").write_text('[task.other]\nscript = "true"\n')
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    assert tpi(elsewhere, "destroy", "--yes", task_id).returncode == 0
    assert states(work, "tasks.toml")["one"] == (task_id, "destroyed")

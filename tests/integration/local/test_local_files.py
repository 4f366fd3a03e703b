"""``pull`` and ``destroy`` never overwrite a local file the user changed.

tpi keeps beside its index what it last wrote into a workdir (the upload at apply, each
download). A local file changed since is kept: when the task's copy is new it lands beside
it as ``NAME.tpi-<time>`` and the command names it (one line each, and in ``--json``);
``--overwrite`` takes the task's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def tpi(work: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=work,
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, f"tpi {' '.join(args)}: {done.stderr}"
    return done


def project(tmp_path: Path, script: str) -> Path:
    (tmp_path / "src" / "out").mkdir(parents=True)
    (tmp_path / "tasks.toml").write_text(textwrap.dedent(f"""
        [task.t]
        script = '''{script}'''
        [task.t.storage]
        workdir = "src"
        output = "out"
    """))
    return tmp_path


def beside(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.tpi-*"))


def test_a_file_edited_here_is_kept_when_the_task_did_not_change_it(tmp_path: Path) -> None:
    work = project(tmp_path, "echo done > out/result.txt")
    notes = work / "src" / "out" / "notes.txt"
    notes.write_text("v1\n")
    tpi(work, "apply", "--wait")
    notes.write_text("v2\n")
    pulled = json.loads(tpi(work, "pull", "--json").stdout)[0]
    assert notes.read_text() == "v2\n"  # the old code put v1 back
    assert (work / "src" / "out" / "result.txt").read_text() == "done\n"
    assert beside(notes.parent, "notes.txt") == []  # nothing new came for it
    assert {"path": "out/notes.txt", "incoming": None} in pulled["kept"]
    tpi(work, "destroy", "--yes")
    assert notes.read_text() == "v2\n"
    assert not (work / ".tpi" / "files").exists() or not any((work / ".tpi" / "files").iterdir())


def test_a_file_both_changed_gets_the_tasks_copy_beside_it_once(tmp_path: Path) -> None:
    work = project(tmp_path, "echo from the task > out/notes.txt")
    notes = work / "src" / "out" / "notes.txt"
    notes.write_text("v1\n")
    tpi(work, "apply", "--wait")
    notes.write_text("mine\n")
    done = tpi(work, "pull", "--json")
    assert notes.read_text() == "mine\n"
    [side] = beside(notes.parent, "notes.txt")
    assert side.read_text() == "from the task\n"
    assert f"kept out/notes.txt (changed here); the task's copy is out/{side.name}" in done.stderr
    kept = json.loads(done.stdout)[0]["kept"]
    assert kept == [{"path": "out/notes.txt", "incoming": f"out/{side.name}"}]
    # a second pull says it again but puts no second copy beside it
    again = json.loads(tpi(work, "pull", "--json").stdout)[0]
    assert beside(notes.parent, "notes.txt") == [side] and again["downloaded"] == 0
    assert again["kept"] == [{"path": "out/notes.txt", "incoming": None}]
    # --overwrite takes the task's copy
    tpi(work, "pull", "--overwrite")
    assert notes.read_text() == "from the task\n"


def test_a_file_tpi_wrote_and_nobody_changed_is_updated(tmp_path: Path) -> None:
    work = project(tmp_path, "mkdir -p out; n=$(cat out/n 2>/dev/null || echo 0); "
                             "echo $((n+1)) > out/n")
    tpi(work, "apply", "--wait")
    tpi(work, "pull")
    counter = work / "src" / "out" / "n"
    assert counter.read_text() == "1\n"
    # the task runs again (replaced) and writes 2; the untouched local file takes it
    (work / "tasks.toml").write_text((work / "tasks.toml").read_text().replace(
        "[task.t]\n", "[task.t]\ntimeout = 600\n"))
    tpi(work, "apply", "--replace", "--wait")
    tpi(work, "pull")
    assert counter.read_text() == "2\n" and beside(counter.parent, "n") == []


def test_destroy_keeps_a_changed_file_and_puts_the_tasks_copy_beside(tmp_path: Path) -> None:
    work = project(tmp_path, "echo from the task > out/notes.txt")
    notes = work / "src" / "out" / "notes.txt"
    notes.write_text("v1\n")
    tpi(work, "apply", "--wait")
    notes.write_text("mine\n")
    done = tpi(work, "destroy", "--yes", "--json")
    assert notes.read_text() == "mine\n"
    [side] = beside(notes.parent, "notes.txt")
    assert side.read_text() == "from the task\n"
    [row] = json.loads(done.stdout)
    assert row["destroyed"] and row["kept"] == [{"path": "out/notes.txt",
                                                 "incoming": f"out/{side.name}"}]


def test_a_pull_with_no_baseline_yet_fetches_new_files_and_keeps_existing_ones(
        tmp_path: Path) -> None:
    work = project(tmp_path, "mkdir -p out; echo from the task > out/notes.txt; "
                             "echo new > out/new.txt")
    tpi(work, "apply", "--wait")
    for baseline in (work / ".tpi" / "files").iterdir():
        baseline.unlink()  # as for a task pulled by id into another folder
    notes = work / "src" / "out" / "notes.txt"
    notes.write_text("mine\n")
    tpi(work, "pull")
    assert (work / "src" / "out" / "new.txt").read_text() == "new\n"
    assert notes.read_text() == "mine\n"  # tpi never wrote it here: the user's
    [side] = beside(notes.parent, "notes.txt")
    assert side.read_text() == "from the task\n"

"""``tpi --json`` and ``--quiet`` on real local tasks: logs as JSON lines, stop and start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TASKS = """
[task.hello]
script = "echo one; echo two"
[task.long]
script = "sleep 60"
"""


def tpi(work: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=work,
                          capture_output=True, text=True, timeout=90, env=os.environ.copy())
    assert proc.returncode == 0, f"tpi {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
    return proc


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("TPI_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("TPI_AGENT_LOG_INTERVAL", "0.3")
    (tmp_path / "tasks.toml").write_text(TASKS)
    yield tmp_path
    subprocess.run([sys.executable, "-m", "tpi_core", "destroy", "--yes"], cwd=tmp_path,
                   capture_output=True, timeout=90, env=os.environ.copy(), check=False)


def test_logs_stop_and_start_print_json(work):
    tpi(work, "apply", "hello")
    followed = tpi(work, "--json", "logs", "--follow", "hello")
    rows = [json.loads(line) for line in followed.stdout.splitlines()]
    # each line as the plain logs show it after the prefix: a time, the stream, the text
    assert [r["line"].split(" ", 1)[1] for r in rows if " stdout " in r["line"]] == [
        "stdout one", "stdout two"]
    assert {(r["task"], r["replica"], r["boot"]) for r in rows} == {("hello", 0, 1)}
    assert tpi(work, "logs", "hello", "--json").stdout == tpi(work, "--json", "logs",
                                                               "hello").stdout
    tpi(work, "apply", "long")
    stopped = tpi(work, "--json", "-q", "stop", "long")
    assert [(r["task"], r["state"]) for r in json.loads(stopped.stdout)] == [("long", "stopped")]
    assert stopped.stderr == ""
    started = tpi(work, "start", "long", "--json")
    assert [(r["task"], r["state"]) for r in json.loads(started.stdout)] == [("long", "started")]
    assert "long: started" in started.stderr

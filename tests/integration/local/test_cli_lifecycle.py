"""The whole lifecycle through the `tpi` command on the local backend, as a user runs it.

Each command is its own process, so nothing survives between them but what tpi keeps on
disk (the task's storage, the supervisor) — the same as closing the terminal after apply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tpi_core.index import Index

pytestmark = pytest.mark.integration

SCRIPT = """
#!/bin/bash
mkdir -p results
epoch=$(cat results/epoch.txt 2>/dev/null || echo 0)
for ((; epoch < ${EPOCHS}; epoch++)); do
  echo "epoch $epoch attempt $TPI_ATTEMPT replica $TPI_REPLICA_INDEX of $TPI_REPLICA_COUNT"
  sleep 0.3
  echo $((epoch + 1)) > results/epoch.tmp && mv results/epoch.tmp results/epoch.txt
done
echo "secret is ${SECRET:+set}"
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    work = tmp_path / "project"
    (work / "cache").mkdir(parents=True)
    (work / "cache" / "big.bin").write_text("downloaded? never")
    (work / "input.txt").write_text("input")
    write_tasks(work, epochs=4)
    monkeypatch.setenv("TPI_AGENT_LOG_INTERVAL", "0.3")
    monkeypatch.setenv("TPI_AGENT_SYNC_INTERVAL", "0.3")
    monkeypatch.setenv("TPI_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("SECRET", "hunter2-never-stored")
    return work


def write_tasks(work: Path, epochs: int, parallelism: int = 1, timeout: str = "5m") -> None:
    (work / "tasks.toml").write_text(textwrap.dedent(f"""
        [task.train]
        spot = 0
        parallelism = {parallelism}
        timeout = "{timeout}"
        script = '''{SCRIPT}'''
        environment = {{ EPOCHS = "{epochs}", SECRET = "" }}
        [task.train.storage]
        workdir = "."
        output = "results"
    """))


def tpi(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=work,
                          capture_output=True, text=True, timeout=90, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"tpi {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def status(work: Path) -> dict:
    return json.loads(tpi(work, "status", "--json").stdout)[0]


def test_apply_follow_pull_destroy(project, _isolated_tpi):
    applied = tpi(project, "apply", "--json")
    assert json.loads(applied.stdout)[0]["action"] == "create"
    again = tpi(project, "apply", "--json")
    assert json.loads(again.stdout)[0]["action"] == "unchanged"
    followed = tpi(project, "logs", "--follow")
    lines = followed.stdout.splitlines()
    assert [l.split(" stdout ")[1] for l in lines if "epoch" in l] == [
        f"epoch {i} attempt 1 replica 0 of 1" for i in range(4)]
    assert all(l.startswith("train[0.1] ") for l in lines)
    assert "secret is set" in followed.stdout
    done = status(project)
    assert done["state"] == "succeeded" and done["counts"]["succeeded"] == 1
    assert not (project / "results").exists()
    tpi(project, "pull")
    assert (project / "results" / "epoch.txt").read_text().strip() == "4"
    (project / "results" / "mine.txt").write_text("the user's own file")
    tpi(project, "destroy")
    assert (project / "results" / "mine.txt").read_text() == "the user's own file"
    assert (project / "cache" / "big.bin").read_text() == "downloaded? never"
    assert status(project)["state"] == "destroyed"
    everything = b"".join(p.read_bytes() for p in _isolated_tpi.rglob("*") if p.is_file())
    assert b"hunter2-never-stored" not in everything
    index = Index(project)
    assert index.entries() == {} and len(index.destroyed()) == 1


def test_preempted_replica_resumes_and_every_boot_is_logged(project):
    write_tasks(project, epochs=12)
    tpi(project, "apply")
    _wait_for(project, lambda s: s["state"] == "running" and _epoch_logged(project, 3))
    tpi(project, "debug", "preempt", "train", "--grace", "5")
    assert tpi(project, "logs", "--follow").returncode == 0
    final = status(project)
    assert final["state"] == "succeeded" and final["recoveries"] == 1
    lines = tpi(project, "logs").stdout.splitlines()
    boots = [l.split(" ", 1)[0] for l in lines if " stdout epoch" in l]
    assert boots == sorted(boots) and set(boots) == {"train[0.1]", "train[0.2]"}
    epochs = [int(l.split(" stdout epoch ")[1].split()[0]) for l in lines if " stdout epoch" in l]
    second = [e for l, e in zip(lines, epochs) if l.startswith("train[0.2]")]
    first = [e for l, e in zip(lines, epochs) if l.startswith("train[0.1]")]
    assert second[0] >= 3 and second[0] <= first[-1] + 1
    assert sorted(set(epochs)) == list(range(12))
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text().strip() == "12"


def test_stop_then_start_resumes_without_counting_a_recovery(project):
    write_tasks(project, epochs=10)
    tpi(project, "apply")
    _wait_for(project, lambda s: s["state"] == "running" and _epoch_logged(project, 2))
    tpi(project, "stop", "train")
    _wait_for(project, lambda s: s["state"] == "stopped")
    stopped = tpi(project, "logs", "-f")  # ends at once: exit 0, and how to go on
    assert "train: stopped: `tpi start` resumes it" in stopped.stderr
    tpi(project, "start", "train")
    assert tpi(project, "logs", "--follow").returncode == 0
    final = status(project)
    assert final["state"] == "succeeded" and final["recoveries"] == 0
    lines = tpi(project, "logs").stdout.splitlines()
    assert {l.split(" ", 1)[0] for l in lines if " stdout epoch" in l} == {
        "train[0.1]", "train[0.2]"}  # two boots: the second resumed the first
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text().strip() == "10"


def test_parallel_replicas_and_timeout(project):
    write_tasks(project, epochs=1000, parallelism=3, timeout="3s")
    tpi(project, "apply")
    followed = tpi(project, "logs", "--follow", check=False)
    assert followed.returncode == 5 and "train: timed_out" in followed.stderr
    final = status(project)
    assert final["state"] == "timed_out"
    assert [r["index"] for r in final["replicas"]] == [0, 1, 2]
    assert {r["state"] for r in final["replicas"]} == {"timed_out"}
    lines = tpi(project, "logs").stdout.splitlines()
    assert {l.split(" ", 1)[0] for l in lines} == {"train[0.1]", "train[1.1]", "train[2.1]"}
    tpi(project, "destroy", "--yes")
    gone = tpi(project, "logs", "--follow", check=False)  # nothing to follow: says so
    assert gone.returncode == 1 and gone.stderr.strip() == "train: destroyed"


def test_changed_task_is_replaced_only_when_asked(project):
    tpi(project, "apply")
    write_tasks(project, epochs=2)
    refused = tpi(project, "apply", check=False)
    assert refused.returncode == 4 and "--replace" in refused.stderr
    assert json.loads(tpi(project, "plan", "--json").stdout)[0]["action"] == "replace"
    replaced = tpi(project, "apply", "--replace", "--wait")
    # a new task's first boot ran to the end (it may resume from the epochs the replaced
    # task left in results/: replacing destroys it, and destroy brings its output back)
    assert "train[0.1]" in replaced.stdout and "secret is set" in replaced.stdout
    assert "train: succeeded" in replaced.stderr
    tpi(project, "destroy")


def _epoch_logged(project: Path, epoch: int) -> bool:
    return f"epoch {epoch} " in tpi(project, "logs").stdout


def _wait_for(project: Path, ok, seconds: float = 30) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ok(status(project)):
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting; last status {status(project)}")


def test_interrupting_a_follow_says_the_task_goes_on(project):
    import signal

    write_tasks(project, epochs=200)
    tpi(project, "apply")
    follower = subprocess.Popen([sys.executable, "-m", "tpi_core", "logs", "--follow"],
                                cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=os.environ.copy())
    try:
        assert "epoch" in follower.stdout.readline()  # following, then Ctrl-C
        follower.send_signal(signal.SIGINT)
        _out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
        follower.communicate()  # reaped, its pipes closed, whatever happened
    assert follower.returncode == 130
    # (a line may say why there was no log yet, in the moment before the agent's first)
    said = [line for line in err.strip().splitlines() if line and "no log yet" not in line]
    assert said[0].startswith("tpi: interrupted; the tasks go on without tpi")
    assert "Traceback" not in err and len(said) == 1
    assert status(project)["state"] == "running"  # daemonless: nothing stopped it
    tpi(project, "destroy", "--yes")


def test_a_killed_supervisor_is_reported_lost_and_apply_runs_the_task_again(
        project, _isolated_tpi):
    import signal

    from tpi_core.backends._compute import ComputeDir

    write_tasks(project, epochs=12, parallelism=2)
    tpi(project, "apply")
    _wait_for(project, lambda s: s["state"] == "running" and _epoch_logged(project, 3))
    task_id = status(project)["task_id"]
    compute = ComputeDir(_isolated_tpi / "compute" / task_id)
    victims = [compute.supervisor_pid(), *compute.live_agents().values()]
    assert len(victims) == 3 and all(victims)
    for pid in victims:  # the supervisor and its agents, as kill -9 would
        os.kill(pid, signal.SIGKILL)
    _wait_for(project, lambda s: not compute.live_agents() and s["state"] == "stopped")
    lost = status(project)  # one poll: lost, nothing said to be running
    assert lost["counts"]["running"] == 0 and "supervisor died" in lost["reason"], lost
    assert tpi(project, "logs", "--follow", check=False).returncode == 1  # it ends
    again = json.loads(tpi(project, "apply", "--json").stdout)[0]
    assert again["action"] == "restart"
    assert tpi(project, "logs", "--follow").returncode == 0
    done = status(project)
    assert done["state"] == "succeeded" and done["counts"]["succeeded"] == 2, done
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text().strip() == "12"


def test_destroying_a_running_task_keeps_what_it_wrote_last(project, tmp_path, monkeypatch):
    mirror = tmp_path / "written.txt"  # outside the task: what the script last wrote
    monkeypatch.setenv("MIRROR", str(mirror))
    monkeypatch.setenv("TPI_AGENT_SYNC_INTERVAL", "30")  # no periodic sync saves it for us
    (project / "tasks.toml").write_text(textwrap.dedent('''
        [task.count]
        timeout = "5m"
        script = """
        #!/bin/bash
        mkdir -p results
        for ((n = 1; ; n++)); do
          echo $n > results/counter.txt
          echo $n > "$MIRROR"
          sleep 0.1
        done
        """
        environment = { MIRROR = "" }
        [task.count.storage]
        workdir = "."
        output = "results"
        exclude = ["tasks.toml"]
    '''))
    tpi(project, "apply")
    _wait_for(project, lambda s: s["state"] == "running")
    import time

    time.sleep(2)
    tpi(project, "destroy", "--yes")
    written = mirror.read_text().strip()
    assert int(written) > 5
    came_back = int((project / "results" / "counter.txt").read_text())
    # the last value, or one more when the stop fell between the script's two writes
    assert came_back in (int(written), int(written) + 1), (came_back, written)


def test_apply_wait_of_a_failed_task_prints_the_exit_code(project):
    (project / "tasks.toml").write_text(textwrap.dedent('''
        [task.broken]
        timeout = "5m"
        script = "echo trying; exit 3"
    '''))
    waited = tpi(project, "apply", "--wait", check=False)
    assert waited.returncode == 1
    assert "broken: failed (replica 0 exited 3)" in waited.stderr, waited.stderr
    tpi(project, "destroy", "--yes")


def test_apply_says_what_it_did_not_upload(project, tmp_path):
    (tmp_path / "outside.txt").write_text("not the task's")
    (project / "escape").symlink_to(tmp_path / "outside.txt")
    applied = tpi(project, "apply")
    assert "train: skipped escape: " in applied.stderr, applied.stderr
    tpi(project, "destroy", "--yes")

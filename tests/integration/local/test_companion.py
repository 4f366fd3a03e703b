"""The agent with its script in a companion container, as in a Kubernetes pod.

The real agent (``python -m tpi_core.agent --companion RUN``) and the real wrapper
(``/bin/sh -c WRAPPER``) run as two processes that share only the run directory and the
workdir, as two containers of a pod share two volumes. The wrapper's PATH holds a shell and
coreutils alone: no Python, no bash, as in a bare image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tpi_core import layout
from tpi_core.agent.companion import WRAPPER
from tpi_core.model import ReplicaState, ReplicaStatus

from .test_agent import FAST, log_lines, status, wait_for, write_spec

pytestmark = pytest.mark.integration

SECRET = "companion-secret-0451"
COREUTILS = ("cat", "cp", "date", "echo", "env", "head", "ls", "mkdir", "mv", "rm", "sleep",
             "tail", "touch")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "data").mkdir(parents=True)
    (root / "data" / "input.txt").write_text("uploaded\n")
    return root


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A PATH with a POSIX shell and coreutils only."""
    bin_dir = tmp_path / "bare-bin"
    bin_dir.mkdir()
    for tool in ("sh", *COREUTILS):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


class Pod:
    """The two containers: the agent and the wrapper, started on demand."""

    def __init__(self, store: Path, tmp: Path, bare: Path):
        self.store, self.run, self.work, self.bare = store, tmp / "run", tmp / "work", bare
        self.run.mkdir()
        self.work.mkdir()
        self.agent: subprocess.Popen | None = None
        self.wrapper: subprocess.Popen | None = None

    def start_agent(self, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "tpi_core.agent", "--storage", str(self.store),
                   "--replica", "0", "--workdir", str(self.work), "--companion", str(self.run),
                   *extra]
        self.agent = subprocess.Popen(command, env={**os.environ, **FAST},
                                      start_new_session=True)
        return self.agent

    def start_wrapper(self) -> subprocess.Popen:
        env = {"PATH": str(self.bare), "TPI_RUN": str(self.run), "TOKEN": SECRET,
               "HOME": str(self.work)}
        self.stderr = self.work.parent / "wrapper.err"
        with self.stderr.open("w") as err:
            self.wrapper = subprocess.Popen(["/bin/sh", "-c", WRAPPER], env=env, stderr=err,
                                            start_new_session=True)
        return self.wrapper

    def both(self) -> tuple[int, int]:
        self.start_agent()
        self.start_wrapper()
        return self.wait()

    def wait(self) -> tuple[int, int]:
        return self.agent.wait(timeout=30), self.wrapper.wait(timeout=30)

    def close(self) -> None:
        """Kill what is left, the wrapper's children too: a container's end takes them."""
        for process in (self.agent, self.wrapper):
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def pod(store: Path, tmp_path: Path, bare: Path):
    pod = Pod(store, tmp_path, bare)
    yield pod
    pod.close()


def test_the_script_runs_in_the_companion_with_the_restored_workdir(pod, store):
    write_spec(store, "cat input.txt\necho to-stderr >&2\nmkdir -p results\n"
                      'echo "$TPI_REPLICA_INDEX/$TPI_REPLICA_COUNT ${TOKEN:+token}" '
                      "> results/answer.txt\n", environment_keys=["TOKEN"])
    assert pod.both() == (0, 0)
    done = status(store)
    assert (done.state, done.exit_code) == (ReplicaState.SUCCEEDED, 0)
    lines = log_lines(store)
    assert ("stdout", "uploaded") in lines and ("stderr", "to-stderr") in lines
    assert (store / "data" / "results" / "answer.txt").read_text() == "0/1 token\n"
    for path in [*pod.run.iterdir(), *store.rglob("*")]:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_a_failing_script_fails_the_replica_and_both_containers_end_cleanly(pod, store):
    write_spec(store, "echo before\nexit 3\n")
    assert pod.both() == (0, 0)  # final: the pod completes, the index is not run again
    done = status(store)
    assert (done.state, done.exit_code) == (ReplicaState.FAILED, 3)


def test_a_shebang_the_image_cannot_run_fails_visibly(pod, store):
    write_spec(store, "#!/opt/not-in-this-image/bash\necho never\n")
    assert pod.both() == (0, 0)
    done = status(store)
    assert done.state == ReplicaState.FAILED and done.exit_code in (126, 127)
    assert any(stream == "stderr" and "not-in-this-image" in text
               for stream, text in log_lines(store)), log_lines(store)


def test_sigterm_to_the_pod_flushes_and_ends_preempted(pod, store):
    write_spec(store, "mkdir -p results\nfor i in 1 2 3 4 5 6 7 8 9 10; do\n"
                      "  echo $i > results/n.txt; echo tick $i; sleep 0.3\ndone\n")
    pod.start_agent()
    pod.start_wrapper()
    wait_for(lambda: (pod.run / "started").exists()
             and "tick 2" in (pod.run / "stdout").read_text(), 15)
    # the kubelet stops the main container first, the agent (a sidecar) after it
    pod.wrapper.send_signal(signal.SIGTERM)
    wait_for(lambda: (pod.run / "exit").exists(), 10)
    pod.agent.send_signal(signal.SIGTERM)
    assert pod.wait() == (143, 143)
    done = status(store)
    assert done.state == ReplicaState.PREEMPTED
    assert (store / "data" / "results" / "n.txt").exists()  # flushed


def test_the_deadline_stops_the_script_in_the_companion(pod, store):
    write_spec(store, "echo start\nsleep 30\n", deadline=time.time() + 3)
    started = time.monotonic()
    assert pod.both() == (0, 0)
    assert time.monotonic() - started < 20
    assert status(store).state == ReplicaState.TIMED_OUT


def test_a_companion_that_never_starts_fails_the_replica(pod, store):
    write_spec(store, "echo never\n")
    assert pod.start_agent("--start-patience", "1").wait(timeout=20) == 0
    done = status(store)
    assert done.state == ReplicaState.FAILED and "did not start" in done.reason
    assert (pod.run / "done").read_text() == "0\n"  # a late wrapper exits at once


def test_a_notice_before_the_companion_started_is_a_preemption(pod, store):
    write_spec(store, "echo never\n")
    agent = pod.start_agent()
    wait_for(lambda: (pod.run / "go").exists(), 15)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 143
    done = status(store)
    assert done.state == ReplicaState.PREEMPTED and "before" in done.reason
    events = [json.loads(line) for line in
              (store / layout.events_key(0, 1)).read_text().splitlines()]
    assert events[-1]["code"] == "preempted"


def test_the_wrapper_without_sleep_says_so(pod, store, tmp_path):
    (pod.bare / "sleep").unlink()
    wrapper = pod.start_wrapper()
    assert wrapper.wait(timeout=10) == 127
    assert "sleep" in pod.stderr.read_text()


def test_a_status_final_from_an_earlier_pod_ends_the_wrapper_at_once(pod, store):
    write_spec(store, "echo once\n")
    (store / layout.status_key(0)).parent.mkdir(parents=True, exist_ok=True)
    (store / layout.status_key(0)).write_text(json.dumps(
        ReplicaStatus(0, ReplicaState.SUCCEEDED, 1, 0).to_json()))
    assert pod.both() == (0, 0)
    assert not (pod.run / "started").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_an_image_that_runs_as_another_user_writes_the_workdir(tmp_path):
    # pytest's own temporary folders are private to root: the pod lives in an open one
    base = Path(tempfile.mkdtemp(prefix="tpi-pod-"))
    try:
        os.chmod(base, 0o755)
        store = base / "storage"
        (store / "data").mkdir(parents=True)
        (store / "data" / "input.txt").write_text("uploaded\n")
        bare = base / "bare-bin"
        bare.mkdir()
        for tool in ("sh", "id", *COREUTILS):
            (bare / tool).symlink_to(shutil.which(tool))
        pod = Pod(store, base, bare)
        write_spec(store, "echo more >> input.txt\nmkdir -p results\nid -u > results/uid\n")
        pod.start_agent()
        env = {"PATH": str(bare), "TPI_RUN": str(pod.run), "HOME": "/"}
        pod.wrapper = subprocess.Popen(["/bin/sh", "-c", WRAPPER], env=env, user=65534,
                                       group=65534, start_new_session=True)
        try:
            assert pod.wait() == (0, 0)
        finally:
            pod.close()
        assert status(store).state == ReplicaState.SUCCEEDED
        assert (store / "data" / "results" / "uid").read_text() == "65534\n"
        assert (store / "data" / "input.txt").read_text() == "uploaded\nmore\n"
    finally:
        shutil.rmtree(base)

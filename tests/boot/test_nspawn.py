"""The boot infrastructure itself: a real Debian with systemd as PID 1 under systemd-nspawn.

Each machine proves one thing a cloud machine's tests rely on: the user-data runs as root with
the environment and the host's 127.0.0.1; a shutdown inside ends the machine; a stop is an
orderly poweroff and a kill is not; machines share one root at once and leave it unchanged.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.boot import rootfs
from tests.boot.nspawn import NspawnMachine, machine_name

# The first session on a machine builds the root (about a minute) inside its first test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

Boot = Callable[..., NspawnMachine]  # the boot fixture (conftest.py)

MARKER_SERVICE = """\
cat > /etc/systemd/system/marker.service <<'UNIT'
[Service]
ExecStart=/bin/bash -c 'trap "echo sigterm >> /shared/marker; exit 0" TERM; \\
    while :; do sleep 0.1; done'
ExecStop=/bin/sh -c 'echo stop >> /shared/marker'
ExecStopPost=/bin/sh -c 'echo stoppost >> /shared/marker'
UNIT
systemctl enable --now marker.service
"""


@pytest.fixture
def host_http() -> Iterator[tuple[str, str]]:
    """An HTTP server on the host's 127.0.0.1: (url of /token, the token it serves)."""
    token = uuid.uuid4().hex

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = token.encode() if self.path == "/token" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token", token
    server.shutdown()
    server.server_close()


def shared(tmp_path: Path, name: str) -> Path:
    """A host directory for a machine to write into (bound at /shared)."""
    path = tmp_path / f"{name}-shared"
    path.mkdir()
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (symlinks not followed): mode, size, mtime."""
    entries = {".": (root.lstat().st_mode, 0, root.lstat().st_mtime_ns)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            entries[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries


def say(message: str) -> None:
    print(f"tests.boot: {message}", file=sys.stderr, flush=True)


def test_machine_names_are_host_names():
    assert machine_name("i-0abc123def") == "i-0abc123def"
    assert machine_name("tpi_job/0: a..b") == "tpi-job-0-a.b"
    assert machine_name("-" * 3) == "machine"
    assert len(machine_name("x" * 100)) == 64


def test_the_root_has_python_without_pip_and_trusts_the_hosts_authorities(debian_root):
    assert (debian_root / "usr/bin/python3").exists()
    assert (debian_root / "usr/bin/curl").exists()
    assert not list(debian_root.glob("usr/lib/python3*/dist-packages/pip"))
    assert not list(debian_root.glob("usr/lib/python3*/ensurepip/_bundled"))  # python3-venv
    bundle = (debian_root / "etc/ssl/certs/ca-certificates.crt").read_text()
    certificate = rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----"
    for _, pem in rootfs.host_cas():
        body = re.search(certificate, pem, re.DOTALL)
        assert body and body.group().decode() in bundle


def test_user_data_runs_as_root_with_the_environment_and_the_hosts_network(
        boot: Boot, tmp_path, host_http):
    url, token = host_http
    environment = {"TPI_PLAIN": "1",
                   "TPI_TRICKY": 'two  words "quoted" \\ $HOME %h 100%\ttab\nline'}
    out = shared(tmp_path, "facts")
    machine = boot("i-0facts", f"""#!/bin/bash
set -e
echo "user-data says hello"
curl -fsS {url} -o /shared/curl.txt
python3 - <<'EOF'
import json, os, socket, urllib.request
json.dump({{"uid": os.getuid(), "pid1": open("/proc/1/comm").read().strip(),
           "hostname": socket.gethostname(), "home": os.environ.get("HOME"),
           "env": {{k: v for k, v in os.environ.items() if k.startswith("TPI_")}},
           "http": urllib.request.urlopen("{url}").read().decode()}},
          open("/shared/facts.json", "w"))
EOF
""", environment, {str(out): "/shared"})

    assert machine.wait_user_data(60) == 0
    console = machine.console()
    started = float(re.search(rf"{rootfs.USER_DATA_STARTED} at ([\d.]+)", console).group(1))
    say(f"user-data started {started - machine.started_at:.2f} s after nspawn")
    facts = json.loads((out / "facts.json").read_text())
    assert facts == {"uid": 0, "pid1": "systemd", "hostname": "i-0facts", "home": None,
                     "env": environment, "http": token}
    assert (out / "curl.txt").read_text() == token
    assert "user-data says hello" in console
    assert "user-data says hello" in machine.read_file(rootfs.OUTPUT_LOG)
    assert machine.stop() == 0


def test_a_shutdown_inside_ends_the_machine(boot: Boot):
    machine = boot("i-0shutdown", "#!/bin/bash\necho going down\nshutdown -h now\n")
    assert machine.wait(60) == 0
    assert not machine.running
    console = machine.console()
    assert "going down" in console and "Powering off." in console


def test_stop_is_an_orderly_poweroff(boot: Boot, tmp_path):
    out = shared(tmp_path, "stop")
    machine = boot("i-0stop", "#!/bin/bash\n" + MARKER_SERVICE, binds={str(out): "/shared"})
    assert machine.wait_user_data(60) == 0
    assert machine.run("systemctl", "is-active", "marker.service").stdout == "active\n"
    started = time.monotonic()
    assert machine.stop(grace=20) == 0
    say(f"orderly stop in {time.monotonic() - started:.2f} s")
    assert (out / "marker").read_text() == "stop\nsigterm\nstoppost\n"
    assert "Powering off." in machine.console()


def test_stop_kills_a_machine_that_does_not_power_off_in_time(boot: Boot, tmp_path):
    out = shared(tmp_path, "stuck")
    machine = boot("i-0stuck", """#!/bin/bash
cat > /etc/systemd/system/stuck.service <<'UNIT'
[Service]
ExecStart=/bin/bash -c 'trap "" TERM; while :; do sleep 0.1; done'
ExecStopPost=/bin/sh -c 'echo stoppost >> /shared/marker'
TimeoutStopSec=infinity
UNIT
systemctl start stuck.service
""", binds={str(out): "/shared"})
    assert machine.wait_user_data(60) == 0
    started = time.monotonic()
    code = machine.stop(grace=2)
    elapsed = time.monotonic() - started
    say(f"stuck machine killed after {elapsed:.2f} s, nspawn exit {code}")
    assert 2 <= elapsed < 10 and code != 0
    assert not (out / "marker").exists()


def test_kill_is_a_hard_stop_that_leaves_no_process(boot: Boot, tmp_path):
    out = shared(tmp_path, "kill")
    machine = boot("i-0kill", "#!/bin/bash\n" + MARKER_SERVICE, binds={str(out): "/shared"})
    assert machine.wait_user_data(60) == 0
    leader = machine.leader
    assert leader is not None
    machine.kill()
    assert not machine.running
    assert not (out / "marker").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(leader, 0)


def test_machines_boot_together_from_one_root_and_leave_it_unchanged(boot: Boot, debian_root,
                                                                      tmp_path):
    before = snapshot(debian_root)
    user_data = """#!/bin/bash
echo "$(hostname)" > /etc/created-by-user-data
cat /etc/machine-id > /shared/machine-id
cat /etc/created-by-user-data > /shared/created
"""
    names = ["i-0aaaa", "i-0bbbb"]
    machines: list[NspawnMachine] = [
        boot(name, user_data, binds={str(shared(tmp_path, name)): "/shared"}) for name in names]
    assert [machine.wait_user_data(60) for machine in machines] == [0, 0]
    assert all(machine.running for machine in machines)
    created = [(tmp_path / f"{name}-shared" / "created").read_text() for name in names]
    assert created == [f"{name}\n" for name in names]
    ids = {(tmp_path / f"{name}-shared" / "machine-id").read_text() for name in names}
    assert len(ids) == 2
    assert [machine.stop() for machine in machines] == [0, 0]
    assert not (debian_root / "etc/created-by-user-data").exists()
    assert snapshot(debian_root) == before

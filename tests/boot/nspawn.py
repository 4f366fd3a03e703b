"""One cloud machine booted under systemd-nspawn, systemd as PID 1, from a shared Debian root.

:class:`NspawnMachine` boots a root of :mod:`tests.boot.rootfs` as a cloud boots an instance:
its user-data runs as cloud-init's final stage runs it (as root, with no HOME, after
network-online.target, output to /var/log/cloud-init-output.log and the console), every unit
gets ``environment`` (a ``DefaultEnvironment=`` drop-in), and :meth:`NspawnMachine.stop` is a
terminate: an orderly poweroff (services get SIGTERM, their ExecStop= and ExecStopPost= run),
then a kill after a grace period. A ``shutdown -h now`` or ``poweroff`` inside ends the machine.

How nspawn runs it (verified with systemd 252 on a host whose PID 1 is not systemd):

- ``--register=no --keep-unit``: no systemd-machined, no scope of its own (plain ``-b`` needs
  the host's PID 1 to be systemd).
- ``--volatile=overlay``: the root is the read-only lower layer of an overlay on a tmpfs, so
  any number of machines boot from one directory at once (nspawn takes a shared lock on it)
  and leave it unchanged. Per-machine files are bound read-only over the overlay.
- no private network: 127.0.0.1 inside is the host's.
- ``--console=read-only``: without a tty, systemd's console (boot messages, and the
  user-data's output) goes to nspawn's stdout, which is ``workdir/console.log``.
- ``--kill-signal=SIGRTMIN+4``: on SIGTERM nspawn sends this to the container's systemd,
  which powers off (the default, SIGRTMIN+3, halts); a second SIGTERM kills the container.
- SIGKILL to nspawn alone leaves the container running, reparented to the host's init:
  :meth:`NspawnMachine.kill` kills the container's PID 1 instead, which ends its whole PID
  namespace, and nspawn exits by itself.

Machines still running when the interpreter exits are killed (atexit).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from tests.boot.rootfs import ENVIRONMENT_DROP_IN, USER_DATA, USER_DATA_EXITED

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_live: set[NspawnMachine] = set()
_atexit_registered = False


class NspawnMachine:
    """A cloud machine: ``root`` booted as ``name`` with ``user_data`` (see module doc).

    ``workdir`` on the host holds the machine's user-data, environment drop-in and
    ``console.log``. ``binds`` maps host directories (or files) to paths inside, read-write.
    """

    def __init__(self, root: Path, name: str, user_data: str, environment: Mapping[str, str],
                 workdir: Path, binds: Mapping[str, str] | None = None):
        if not user_data.startswith("#!"):
            raise ValueError("user-data must be a script (starting with #!)")
        self.root = Path(root)
        self.name = machine_name(name)
        self.user_data = user_data
        self.environment = dict(environment)
        self.workdir = Path(workdir)
        self.binds = {str(host): inside for host, inside in (binds or {}).items()}
        for host, inside in self.binds.items():
            if ":" in host + inside or not inside.startswith("/"):
                raise ValueError(f"cannot bind {host} to {inside}: absolute paths without ':'")
        self.console_path = self.workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None  # time.time() at start(): the guest's clock too

    def command(self) -> list[str]:
        """The systemd-nspawn command line (files it binds are written by :meth:`start`)."""
        command = ["systemd-nspawn", "--quiet", f"--directory={self.root}",
                   f"--machine={self.name}", "--boot", "--register=no", "--keep-unit",
                   "--volatile=overlay", "--console=read-only", "--kill-signal=SIGRTMIN+4",
                   "--link-journal=no",
                   f"--bind-ro={self.workdir / 'user-data.txt'}:{USER_DATA}",
                   f"--bind-ro={self.workdir / 'environment.conf'}:{ENVIRONMENT_DROP_IN}"]
        return command + [f"--bind={host}:{inside}" for host, inside in self.binds.items()]

    def start(self) -> NspawnMachine:
        """Boot: nspawn in a session of its own, its output in ``console.log``."""
        global _atexit_registered
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        if any(machine.name == self.name and machine.running for machine in _live):
            # nspawn keeps per-name state in /run/systemd/nspawn/propagate/NAME
            raise ValueError(f"a machine named {self.name} is running already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "user-data.txt").write_text(self.user_data)
        (self.workdir / "environment.conf").write_text(manager_drop_in(self.environment))
        if not _atexit_registered:
            # Registered after tests.boot.rootfs's removal of the root (debian_root() comes
            # first), so it runs before it: machines die before their root goes away
            atexit.register(kill_all)
            _atexit_registered = True
        with self.console_path.open("wb") as console:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=console, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.started_at = time.time()
        _live.add(self)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def leader(self) -> int | None:
        """The container's PID 1 as the host sees it (None unless running)."""
        children = _children(self.process.pid) if self.running else []
        return children[0] if children else None

    @property
    def returncode(self) -> int | None:
        """nspawn's exit status: 0 after a poweroff or halt inside, None while running."""
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the machine to end; ``subprocess.TimeoutExpired`` if it does not."""
        code = self._process().wait(timeout)
        _live.discard(self)
        return code

    def stop(self, grace: float = 20) -> int:
        """Terminate: an orderly poweroff inside, :meth:`kill` if not done in ``grace`` s.

        A stop in the first moments of the boot, before systemd handles signals, is lost
        (PID 1 ignores what it does not handle): the kill after ``grace`` ends the machine.
        """
        process = self._process()
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)  # nspawn turns it into --kill-signal
                return self.wait(grace)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self.wait()

    def kill(self) -> int:
        """Hard stop: SIGKILL to the container's PID 1 (see module doc), then to nspawn."""
        process = self._process()
        limit = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < limit:
            # nspawn's children are the container's PID 1 (and, while it starts, the helper
            # that creates it): kill them until nspawn notices and exits
            for pid in _children(process.pid):
                _kill(pid)
            time.sleep(0.05)
        if process.poll() is None:
            _kill(process.pid)
        return self.wait(10)

    def console(self) -> str:
        """What the machine printed on its console so far (boot messages, user-data output)."""
        if not self.console_path.exists():
            return ""
        return self.console_path.read_text(errors="replace").replace("\r", "")

    def wait_console(self, text: str, timeout: float = 60) -> str:
        """Wait for ``text`` on the console; return the console. Fails if the machine ends."""
        limit = time.monotonic() + timeout
        while True:
            console = self.console()
            if text in console:
                return console
            if not self.running:
                raise AssertionError(f"{self.name} ended (exit {self.returncode}) without "
                                     f"printing {text!r}; console:\n{console[-3000:]}")
            if time.monotonic() > limit:
                raise AssertionError(f"{self.name} did not print {text!r} in {timeout:.0f} s; "
                                     f"console:\n{console[-3000:]}")
            time.sleep(0.1)

    def wait_user_data(self, timeout: float = 60) -> int:
        """Wait for the user-data to exit; its exit status."""
        console = self.wait_console(USER_DATA_EXITED, timeout)
        return int(re.search(rf"{re.escape(USER_DATA_EXITED)} (\d+)", console).group(1))

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (all the container's namespaces, a clean environment)."""
        leader = self.leader
        if leader is None:
            raise RuntimeError(f"{self.name} is not running")
        command = ["nsenter", f"--target={leader}", "--all", "--",
                   "env", "-i", f"PATH={PATH}", *argv]
        return subprocess.run(command, check=False, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def read_file(self, path: str) -> str:
        """A file inside the running machine (its symlinks resolved inside)."""
        done = self.run("cat", path)
        if done.returncode:
            raise FileNotFoundError(f"{self.name}:{path}: {done.stderr.strip()}")
        return done.stdout

    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process

    def __enter__(self) -> NspawnMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.stop()


def machine_name(name: str) -> str:
    """``name`` as nspawn accepts it for --machine (a host name: letters, digits, - and .)."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "-", name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:64].strip("-.")
    return cleaned or "machine"


def manager_drop_in(environment: Mapping[str, str]) -> str:
    """A system.conf drop-in that gives every unit ``environment``.

    Each assignment is double-quoted, with backslashes, quotes and control characters
    escaped: systemd unquotes and C-unescapes ``DefaultEnvironment=``, and expands specifiers
    (``%h``; an assignment with one it cannot expand is dropped), so ``%`` is doubled.
    systemd drops values with control characters other than tab and newline: refused here.
    """
    assignments = []
    for key, value in environment.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"not an environment variable name: {key!r}")
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
            raise ValueError(f"{key}: systemd refuses control characters but tab and newline")
        escaped = re.sub(r'[\\"\x00-\x1f\x7f]', lambda m: f"\\x{ord(m.group()):02x}",
                         value.replace("%", "%%"))
        assignments.append(f'"{key}={escaped}"')
    return "[Manager]\nDefaultEnvironment=" + " ".join(assignments) + "\n"


def kill_all() -> None:
    """Kill every machine of this process still running."""
    for machine in list(_live):
        machine.kill()


def kill_orphan(nspawn: int) -> None:
    """Kill a systemd-nspawn a killed process left running, and its container."""
    for pid in _children(nspawn):
        _kill(pid)
    _kill(nspawn)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

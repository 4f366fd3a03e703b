"""A Debian root that boots with systemd as PID 1 under systemd-nspawn, built once and cached.

:func:`debian_root` debootstraps a minimal Debian (``minbase`` plus :data:`PACKAGES`: Python
but neither pip nor venv, as the code under test must do without them), makes it trust the
host's extra certificate authorities, bakes in a unit that plays cloud-init's final stage
(:data:`FINAL_UNIT`: it runs ``/var/lib/cloud/instance/user-data.txt`` when a machine binds
one there), and packs it as ``$TPI_TEST_CACHE/debian-<release>-<hash>.tar.zst`` (default
``~/.cache/tpi-tests``). The hash covers everything that goes into the root (release, packages,
unit, script, the host's certificates, :data:`SETUP_VERSION`), so a change to any of them builds
a new archive; a build goes to a temporary file renamed at the end, so a killed build leaves no
broken cache. Each process unpacks the archive once into a fresh directory, removed at exit.
Machines (:mod:`tests.boot.nspawn`) boot it with ``--volatile=overlay`` and never change it.

The host's extra certificate authorities are those its ``update-ca-certificates`` installed
from /usr/local/share/ca-certificates: where the network goes through an intercepting proxy,
pip, apt, uv and curl inside the root must trust the same authorities as the host.

Building needs root, debootstrap, systemd-nspawn, zstd and a Debian mirror
(``TPI_TEST_DEBIAN_MIRROR``, default deb.debian.org); without them, or when the build fails,
:func:`tpi_core.testing.emulators.missing` skips (and fails under ``CI``). Roots are unpacked on
/dev/shm when it can hold them and allows devices, setuid and exec (``TPI_TEST_SCRATCH``
chooses another directory): unpacking 10,000 files takes 0.5 s on tmpfs, 5-10 s on some
virtual disks.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tpi_core.testing.emulators import missing

PACKAGES = ("systemd", "systemd-sysv", "python3", "ca-certificates", "curl")
SETUP_VERSION = 1  # bump when _configure changes what it does to the root
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path.home() / ".cache" / "tpi-tests"  # at import: tests get a HOME of their own
HOST_CAS = Path("/usr/local/share/ca-certificates")
TOOLS = ("debootstrap", "systemd-nspawn", "systemctl", "zstd", "tar", "chroot")

# Where a machine puts its files in the root (bound read-only by tests.boot.nspawn)
USER_DATA = "/var/lib/cloud/instance/user-data.txt"
ENVIRONMENT_DROP_IN = "/etc/systemd/system.conf.d/tpi-test.conf"
OUTPUT_LOG = "/var/log/cloud-init-output.log"

# What the final stage prints around the user-data (on the console and in OUTPUT_LOG)
USER_DATA_STARTED = "tpi-test-cloud-final: running user-data"
USER_DATA_EXITED = "tpi-test-cloud-final: user-data exited with"

FINAL_UNIT = "tpi-test-cloud-final.service"
FINAL_SCRIPT = "/usr/local/libexec/tpi-test-cloud-final"

# cloud-final.service's semantics: the oneshot is part of the boot transaction (so
# `systemctl is-system-running --wait` in user-data waits for itself, as it does under
# cloud-init); no timeout; KillMode=process, so what the user-data leaves running in the
# background (and the tee below) outlives it; a shutdown from the user-data stops it at once.
FINAL_UNIT_TEXT = f"""\
[Unit]
Description=Run the user-data as cloud-init's final stage does (tpi tests)
After=network-online.target
Wants=network-online.target
ConditionPathExists={USER_DATA}

[Service]
Type=oneshot
ExecStart={FINAL_SCRIPT}
RemainAfterExit=yes
TimeoutSec=0
KillMode=process
TasksMax=infinity
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# cloud-init copies the user-data to scripts/part-001, runs it as root with no HOME, and tees
# its output to /var/log/cloud-init-output.log and the console. The exec'd tee (not a pipe
# the script ends in) lets the script's exit end the unit even when a background child still
# holds the output open, as cloud-init's redirection does.
FINAL_SCRIPT_TEXT = f"""\
#!/bin/bash
instance=/var/lib/cloud/instance
mkdir -p "$instance/scripts"
install -m 0700 "$instance/user-data.txt" "$instance/scripts/part-001"
exec > >(exec tee -a {OUTPUT_LOG}) 2>&1
echo "{USER_DATA_STARTED} at $(date +%s.%N)"
"$instance/scripts/part-001"
status=$?
echo "{USER_DATA_EXITED} $status at $(date +%s.%N)"
touch "$instance/boot-finished"
"""

# Units that slow a container's boot or do work a test does not want: timers running apt and
# fstrim, e2scrub, and the gettys (nspawn's console is read-only, and a getty on it would mix
# a login prompt into the console log). Nothing waits for a network manager: with the host's
# network, network-online.target is reached at once.
DISABLED = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
            "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service", "getty@.service")
MASKED = ("getty.target", "console-getty.service", "systemd-networkd-wait-online.service")

_roots: dict[str, Path] = {}


def debian_root(release: str = "bookworm") -> Path:
    """The root of ``release``, unpacked once per process (built first if not cached)."""
    if release in _roots:
        return _roots[release]
    _require_tools()
    archive = cache_dir() / f"debian-{release}-{fingerprint(release)[:16]}.tar.zst"
    remove_stale()
    try:
        ensure_archive(release, archive)
        started = time.monotonic()
        # A directory of our own around the root: mkdtemp's is private, "/" must be 0755
        parent = Path(tempfile.mkdtemp(prefix=f"tpi-debian-{release}-{os.getpid()}-",
                                       dir=scratch_dir()))
        atexit.register(remove_tree, parent)
        root = parent / "root"
        root.mkdir(mode=0o755)
        _unpack(archive, root)
    except OSError as exc:
        missing(f"Debian {release} root: {exc}")
    _say(f"unpacked {archive.name} into {root} in {time.monotonic() - started:.1f} s")
    _roots[release] = root
    return root


def remove_root(release: str = "bookworm") -> None:
    """Delete this process's unpacked root of ``release`` (no machine may still use it)."""
    root = _roots.pop(release, None)
    if root is not None:
        remove_tree(root.parent)


def remove_stale() -> None:
    """Remove the roots and builds of processes that died without cleaning up (killed).

    Their machines outlived them (nspawn runs in a session of its own): those booted from a
    stale root are killed first.
    """
    from tests.boot.nspawn import kill_orphan  # here: tests.boot.nspawn imports this module

    for path in Path(scratch_dir()).glob("tpi-debian-*"):
        match = re.fullmatch(r"tpi-debian-.+-(\d+)-\w{8}", path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        directory = f"--directory={path / 'root'}".encode()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"systemd-nspawn") and directory in argv:
                _say(f"killing systemd-nspawn {proc.name}, left running on {path}")
                kill_orphan(int(proc.name))
        _say(f"removing {path}: process {match.group(1)} left it")
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """``rm -rf`` that never reaches into another file system.

    A debootstrap killed in the middle leaves /proc and /sys mounted in its root, and under
    lxc the host's /dev, bound: they are unmounted first, and rm stays on the tree's own file
    system in any case.
    """
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, stderr=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False,
                   stderr=subprocess.DEVNULL)


def cache_dir() -> Path:
    """``$TPI_TEST_CACHE`` or ``~/.cache/tpi-tests``, created."""
    path = Path(os.environ.get("TPI_TEST_CACHE") or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir() -> str:
    """Where to build and unpack roots: see the module docstring."""
    if os.environ.get("TPI_TEST_SCRATCH"):
        return os.environ["TPI_TEST_SCRATCH"]
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:
        return tempfile.gettempdir()
    usable = not shm.f_flag & (os.ST_NODEV | os.ST_NOSUID | os.ST_NOEXEC | os.ST_RDONLY)
    if usable and shm.f_bavail * shm.f_frsize >= 2 << 30:
        return "/dev/shm"
    return tempfile.gettempdir()


def fingerprint(release: str) -> str:
    """A hash of everything that goes into the root of ``release``."""
    recipe = json.dumps({"release": release, "packages": PACKAGES, "setup": SETUP_VERSION,
                         "unit": FINAL_UNIT_TEXT, "script": FINAL_SCRIPT_TEXT,
                         "disabled": DISABLED, "masked": MASKED})
    digest = hashlib.sha256(recipe.encode())
    for path, data in host_cas():
        digest.update(f"\0{path}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def ensure_archive(release: str, archive: Path) -> None:
    """Build ``archive`` unless it exists; one build at a time across processes."""
    with open(f"{archive}.lock", "w") as lock:
        if not archive.exists():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _say(f"waiting for another process building {archive.name}")
                fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            build_archive(release, archive)


def build_archive(release: str, archive: Path) -> None:
    """debootstrap ``release``, configure it and pack it as ``archive`` (atomically)."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"tpi-debian-{release}-build-{os.getpid()}-",
                                    dir=scratch_dir()))
    log = Path(f"{archive}.log")
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    try:
        root = workdir / "root"
        mirror = os.environ.get("TPI_TEST_DEBIAN_MIRROR") or DEFAULT_MIRROR
        _say(f"building {archive.name} (debootstrap {release} from {mirror}; log in {log})")
        with log.open("wb") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 release, str(root), mirror], check=False, stdout=out,
                stderr=subprocess.STDOUT)
        if done.returncode:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise OSError(f"debootstrap exited with {done.returncode}: {' | '.join(tail)}")
        _configure(root)
        _pack(root, partial)
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
        remove_tree(workdir)
    size = archive.stat().st_size >> 20
    _say(f"built {archive.name} ({size} MB) in {time.monotonic() - started:.1f} s")


def _configure(root: Path) -> None:
    """Everything after debootstrap: certificates, identity, units, apt's caches."""
    cas = root / HOST_CAS.relative_to("/")
    for path, data in host_cas():
        (cas / path).parent.mkdir(parents=True, exist_ok=True)
        (cas / path).write_bytes(data)
    _run(["chroot", str(root), "update-ca-certificates"])

    # Every machine gets its own identity: the machine id from nspawn's random UUID (an
    # empty /etc/machine-id is "uninitialized"), the hostname from --machine
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/hostname").unlink(missing_ok=True)  # debootstrap copies the host's

    script = root / FINAL_SCRIPT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(FINAL_SCRIPT_TEXT)
    script.chmod(0o755)
    (root / "etc/systemd/system" / FINAL_UNIT).write_text(FINAL_UNIT_TEXT)
    systemctl = ["systemctl", f"--root={root}", "--quiet"]
    units = {p.name for d in ("lib", "usr/lib") for p in (root / d / "systemd/system").glob("*")}
    _run([*systemctl, "disable", *(u for u in DISABLED if u in units)])
    _run([*systemctl, "mask", *MASKED])
    _run([*systemctl, "enable", FINAL_UNIT])
    # Mount points of the files machines bind, so nspawn creates none in the overlay
    for path in (USER_DATA, ENVIRONMENT_DROP_IN):
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)

    # Like a cloud image: no downloaded packages, no package lists (apt-get update first)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in root.glob(pattern):
            path.unlink()


def host_cas() -> list[tuple[str, bytes]]:
    """The host's extra certificate authorities: (path under HOST_CAS, contents)."""
    if not HOST_CAS.is_dir():
        return []
    return [(str(p.relative_to(HOST_CAS)), p.read_bytes())
            for p in sorted(HOST_CAS.rglob("*.crt")) if p.is_file()]


def _pack(root: Path, archive: Path) -> None:
    # --numeric-owner: the root's users are not the host's; --xattrs keeps file capabilities
    _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
          "-I", "zstd -T0", "-cf", str(archive), "."])


def _unpack(archive: Path, root: Path) -> None:
    _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
          "-I", "zstd", "-xf", str(archive)])


def _run(command: list[str]) -> None:
    """Run ``command``; an OSError that tells its stderr if it fails."""
    done = subprocess.run(command, check=False, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise OSError(f"{' '.join(command[:3])}... exited with {done.returncode}: "
                      f"{done.stderr.strip()[-500:]}")


def _require_tools() -> None:
    if os.geteuid() != 0:
        missing("booting a Debian root under systemd-nspawn needs root")
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (apt-get install debootstrap "
                f"systemd-container zstd)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _say(message: str) -> None:
    """Progress on stderr (shown with ``pytest -s``)."""
    print(f"tests.boot: {message}", file=sys.stderr, flush=True)

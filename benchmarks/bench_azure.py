"""Time ``tpi sync`` against rclone on a local Azurite (the Azure Blob emulator), in one run.

    python benchmarks/bench_azure.py [--quick] [--runs N] [--sets small1k,big200m]

Starts Azurite's blob service (the npm package under tests/node: ``npm ci --prefix
tests/node``) on 127.0.0.1 in memory, builds the data sets under benchmarks/.data (shared
with bench_sync.py), then for each set, run and tool, on fresh servers: upload into a fresh
prefix, re-sync with no change (the same command again), and download a copy this process
uploaded itself (one Put Blob a file) into an empty directory (checked file by file).
Azurite's in-memory store slows as it fills, as fake-gcs-server's does (1,000 small uploads
by tpi into one server one after the other: 1.57, 1.68, 2.20, 2.23, 2.35, 2.81 s; into fresh
servers 1.62-1.73 s), so every upload and its re-sync go to a server holding only the
container, and every download comes from another holding only the copy. Every command is a
separate process (start-up included), every figure the median of N runs, tool order rotated
between runs. The requests of the no-change re-sync of 1,000 files are counted by
tpi_core/testing/faultproxy.py (no faults). Prints markdown tables and writes
benchmarks/azure.md. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import (BUCKET, HERE, ROOT, SETS, TUNED, CopyTool, DataSet, Timings,  # noqa: E402
                    bench_rotated, call, clean_env, closing_targets, compile_tpi, connect,
                    count_resync, count_table, emulated_options, machine, report_head, run,
                    small_target, time_copies, versions)
from bench_sync import FLOOR_RUNS, START_FLOOR  # noqa: E402

sys.path.insert(0, str(ROOT))
from tpi_azure.account import (API_VERSION, Account, now, parse_connection_string,  # noqa: E402
                               shared_key)

from tpi_core.testing.emulators import (AZURITE_ACCOUNT, azurite_command,  # noqa: E402
                                        azurite_connection_string, start_azurite)

NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
"""Where the tests install Azurite (tests/node/package.json pins it)."""
RESULTS = Timings()
HIDDEN = ("AWS_", "RCLONE_", "AZURE_", "TPI_AZURE_", "MSI_", "IDENTITY_")
"""Inherited settings no command gets: each is told about this server and nothing else."""
BASELINE = "rclone default"
CONTAINER = f"/{AZURITE_ACCOUNT}/{BUCKET}"
"""The container's path on Azurite (path-style: the account first)."""
WHOLE = ("", "blocklist")
"""``comp`` of the PUTs to a blob that write it whole: Put Blob, Put Block List."""


@dataclass(frozen=True)
class Tool(CopyTool):
    """tpi (``az://bench/P``) or rclone (remote ``z:bench/P``) copying a tree both ways."""

    def url(self, prefix: str) -> str:
        return f"az://{BUCKET}/{prefix}" if self.is_tpi else f"z:{BUCKET}/{prefix}"

    def env(self, server: str) -> dict[str, str]:
        """tpi: ``AZURE_STORAGE_CONNECTION_STRING`` naming Azurite's well-known account at
        ``server``; rclone: its emulator mode (the same account and key) at ``server``."""
        if self.is_tpi:
            return clean_env(HIDDEN) | {
                "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(server)
            } | dict(self.extra)
        return clean_env(HIDDEN) | {
            "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_Z_TYPE": "azureblob",
            "RCLONE_CONFIG_Z_USE_EMULATOR": "true",
            "RCLONE_CONFIG_Z_ENDPOINT": server} | dict(self.extra)


TOOLS = [Tool("tpi"), Tool(BASELINE), Tool("rclone tuned", TUNED)]


def signed(connection: http.client.HTTPConnection, account: Account, method: str, key: str = "",
           query: dict[str, str] | None = None, body: object = None,
           headers: dict[str, str] | None = None) -> bytes:
    """One request to the container (or its blob ``key``) with Shared Key (tpi_azure's
    signature, which its tests hold against the Azure SDK's)."""
    path = CONTAINER + (f"/{urllib.parse.quote(key)}" if key else "")
    text = urllib.parse.urlencode(query or {}, quote_via=urllib.parse.quote)
    headers = {**(headers or {}), "x-ms-date": now(), "x-ms-version": API_VERSION}
    headers["Authorization"] = shared_key(account, method, path, text, headers)
    return call(connection, method, path + (f"?{text}" if text else ""), body, headers)


@contextlib.contextmanager
def azure_server(source: DataSet | None = None) -> Iterator[str]:
    """A fresh Azurite with the container, holding ``source`` under SET/source: sent from
    here (one Put Blob a file, on one connection), so every tool downloads the same blobs,
    written by none of them. Its URL is the account's blob endpoint."""
    with start_azurite(NODE_MODULES) as server:
        account = parse_connection_string(azurite_connection_string(server.url))
        with contextlib.closing(connect(server.url)) as connection:
            signed(connection, account, "PUT", query={"restype": "container"},
                   headers={"Content-Length": "0"})
            for path in source.files() if source else ():
                name = f"{source.name}/source/{path.relative_to(source.path).as_posix()}"
                with path.open("rb") as body:
                    signed(connection, account, "PUT", name, body=body,
                           headers={"x-ms-blob-type": "BlockBlob",
                                    "Content-Type": "application/octet-stream",
                                    "Content-Length": str(path.stat().st_size)})
        yield server.url


def list_seconds(url: str, prefix: str) -> float:
    """Seconds Azurite takes to list ``prefix`` (every page of 5,000, the service's most, as
    tpi asks) asked from this process on one open connection: less than any client's
    listing costs."""
    account = parse_connection_string(azurite_connection_string(url))
    query = {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": "5000"}
    start = time.perf_counter()
    with contextlib.closing(connect(url)) as connection:
        while True:
            page = signed(connection, account, "GET", query=query)
            marker = re.search(rb"<NextMarker>([^<]+)</NextMarker>", page)
            if marker is None:
                return time.perf_counter() - start
            query["marker"] = html.unescape(marker.group(1).decode())


def time_tool(tool: Tool, data: DataSet, run_no: int) -> None:
    """One run of one tool (``time_copies``): upload and re-sync on a server holding only
    the container (Azurite's memory store slows as it fills), then the download from
    another holding only the set's copy, the same for every tool."""
    time_copies(RESULTS, tool, data, run_no, azure_server, list_seconds, "azure-download")


def bench_set(data: DataSet, runs: int) -> None:
    bench_rotated(data, runs, TOOLS, time_tool)


def count_requests(data: DataSet) -> dict[str, dict[str, int]]:
    """Requests of each tool's no-change re-sync, counted by a pass-through proxy."""
    return count_resync(TOOLS, data, azure_server, tally)


def tally(log: list[tuple[str, str, str]]) -> dict[str, int]:
    """Requests in all and by kind: listings (List Blobs), blobs written (Put Blob, Put Block
    List), other writes (Put Block, properties and metadata, containers, deletes)."""
    counts = {"requests": len(log), "list": 0, "written": 0, "updated": 0}
    for method, target, _outcome in log:
        path, _, query = target.partition("?")
        comp = urllib.parse.parse_qs(query).get("comp", [""])[0]
        if method == "GET" and path.rstrip("/") == CONTAINER and comp == "list":
            counts["list"] += 1
        elif method == "PUT" and path.startswith(f"{CONTAINER}/") and comp in WHOLE:
            counts["written"] += 1
        elif method in ("PUT", "POST", "PATCH", "DELETE"):
            counts["updated"] += 1
    return counts


def targets(sets: list[DataSet], counts: dict[str, dict[str, int]]) -> list[str]:
    """The figures asked of tpi on Azure Blob, checked."""
    med, names = RESULTS.med, {s.name for s in sets}
    lines = small_target(RESULTS, sets, BASELINE)
    if "big200m" in names:
        for scenario in ("upload", "download"):
            ratio = med("big200m", scenario) / med("big200m", scenario, BASELINE)
            lines.append(f"- 1 x 200 MB {scenario}, tpi / {BASELINE} = {ratio:.2f} (target "
                         f"<= 1.00): {'met' if ratio <= 1 else 'MISSED'}")
    if counts:
        tpi = counts["tpi"]
        nothing = tpi["written"] == tpi["updated"] == 0
        lines.append(f"- no-change re-sync of 1,000 x 4 KB: {tpi['written']} blobs written, "
                     f"{tpi['updated']} other writes (target: none): "
                     f"{'met' if nothing else 'MISSED'}; {tpi['list']} list requests, "
                     f"{tpi['requests']} requests in all ({BASELINE}: "
                     f"{counts[BASELINE]['requests']})")
    return lines + closing_targets(RESULTS, sets, TOOLS, BASELINE, "Azurite")


def azure_versions() -> dict[str, str]:
    """Versions of tpi's Azure plugin and of Azurite."""
    try:
        plugin = version("tpi-azure")
    except PackageNotFoundError:
        plugin = "not installed (source tree)"
    azurite = json.loads((NODE_MODULES / "azurite" / "package.json").read_text())["version"]
    return {"tpi-azure": plugin, "azurite": azurite}


SERVER_NOTE = (
    "Server: Azurite's blob service on 127.0.0.1 with `--inMemoryPersistence` (no disk "
    "write in the measurement), `--skipApiVersionCheck` and `--disableTelemetry`. Its store "
    "slows as blobs accumulate, so every tool's upload and re-sync go to a fresh server "
    "holding only the container, and its download comes from another holding only the copy "
    "every tool downloads (one Put Blob a file, sent by the benchmark itself). tpi reaches it "
    "through `AZURE_STORAGE_CONNECTION_STRING` (`UseDevelopmentStorage=true;BlobEndpoint=`), "
    "rclone through its emulator mode configured by environment (`RCLONE_CONFIG_Z_*`); both "
    "sign with the well-known devstoreaccount1 key.")


def report(sets: list[DataSet], counts: dict, runs: int, argv: list[str]) -> str:
    info = machine() | versions() | azure_versions()
    lines = report_head("Azure Blob sync benchmark results", "bench_azure.py", argv, runs,
                        info, SERVER_NOTE)
    for data in sets:
        lines += [f"## {data.label}", "", *RESULTS.table(data, TOOLS, BASELINE), ""]
    if counts:
        lines += count_table(counts, "other writes")
    return "\n".join(lines + ["## Targets", "", *targets(sets, counts), ""])


def main(argv: list[str] | None = None) -> None:
    parser, sets, runs, argv = emulated_options(__doc__, argv)
    if shutil.which("rclone") is None or azurite_command(NODE_MODULES) is None:
        parser.error("needs rclone (apt-get install -y rclone) and Azurite "
                     "(npm ci --prefix tests/node)")
    compile_tpi("tpi_azure")  # core and AWS, and the Azure plugin
    RESULTS.times[("", "floor", "start")] = [run(START_FLOOR, clean_env(HIDDEN))[0]
                                             for _ in range(FLOOR_RUNS)]
    for data in sets:
        bench_set(data, runs)
    counts = count_requests(SETS[0]) if SETS[0] in sets else {}
    text = report(sets, counts, runs, argv)
    print("\n" + text)
    (HERE / "azure.md").write_text(text)


if __name__ == "__main__":
    main()

"""Time ``tpi sync`` against rclone and the AWS CLI on local S3 servers, in one run.

    python benchmarks/bench_sync.py [--quick] [--runs N] [--sets small1k,big200m]

Starts s3rver (npm, installed into benchmarks/node_modules on first use) and moto on
127.0.0.1, builds the data sets under benchmarks/.data, then for each set and each tool:
upload into a fresh prefix, re-sync with no change, re-sync after one file changed, and
download. Every command is a separate process (start-up included), every time the median
of N runs. The request counts of the re-syncs come from tpi_core/testing/faultproxy.py (no faults)
put between the tool and the server. Prints a markdown table and writes benchmarks/results.md.
No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import (BASELINE, BUCKET, DATA, HERE, NODE_MODULES, ROOT, SETS, TOOLS,  # noqa: E402
                    DataSet, Server, Tool, compile_tpi, machine, run, same_tree,
                    versions)

sys.path.insert(0, str(ROOT))
from tpi_core.testing.emulators import reset_moto, start_moto, start_s3rver  # noqa: E402
from tpi_core.testing.faultproxy import FaultProxy  # noqa: E402

SCENARIOS = [("upload", "upload"), ("resync", "re-sync, no change"),
             ("changed", "re-sync, 1 file changed"), ("download", "download")]
Times = dict[tuple[str, str, str, str], list[float]]  # (server, set, scenario, tool) -> s
Peaks = Times  # the same keys -> peak resident memory of each command, MiB
PEAKS: Peaks = defaultdict(list)
FLOOR_RUNS = 5
START_FLOOR = [sys.executable, "-c", "import asyncio, anyio, anyio._backends._asyncio, click"]
"""A Python that has loaded tpi's chosen stack (asyncio, anyio, click) and done nothing."""


def measure(key: tuple[str, str, str, str], command: list[str], env: dict[str, str],
            times: Times) -> float:
    """Run one timed command; its seconds go to ``times``, its peak memory to PEAKS."""
    elapsed, peak = run(command, env)
    times[key].append(elapsed)
    if peak is not None:
        PEAKS[key].append(peak)
    return elapsed


def ensure_s3rver() -> None:
    """``npm install`` s3rver (pinned in package.json) when it is missing."""
    if not (NODE_MODULES / "s3rver").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HERE, check=True)


@contextlib.contextmanager
def servers(with_moto: bool) -> Iterator[list[Server]]:
    """s3rver (and moto) on free ports of 127.0.0.1, with the benchmark bucket."""
    store = DATA / "s3rver"
    shutil.rmtree(store, ignore_errors=True)
    with contextlib.ExitStack() as stack:
        s3rver = stack.enter_context(start_s3rver(NODE_MODULES, store, [BUCKET]))
        found = [Server("s3rver", s3rver.url, "S3RVER", "S3RVER", store)]
        if with_moto:
            moto = stack.enter_context(start_moto())
            found.append(Server("moto", moto.url, "testing", "testing"))
        yield found


def fresh_bucket(server: Server) -> None:
    """Empty the server: s3rver's directory is cleared, moto is reset."""
    if server.store is not None:
        for child in (server.store / BUCKET).iterdir():
            if child.is_dir():  # every prefix of the benchmark; files are s3rver's own
                shutil.rmtree(child)
        return
    reset_moto(server.url)
    request = urllib.request.Request(f"{server.url}/{BUCKET}", method="PUT")
    urllib.request.urlopen(request, timeout=10).close()


def slug(tool: Tool) -> str:
    return tool.name.replace(" ", "-")


def time_sync(server: Server, tool: Tool, data: DataSet, run_no: int, times: Times,
              changed: bool = True) -> None:
    """Upload, re-sync unchanged, re-sync with one file changed: one tool, one run."""
    target = tool.url(f"{data.name}/{slug(tool)}/{run_no}")
    env = tool.env(server)
    measure((server.name, data.name, "upload", tool.name),
            tool.command("upload", str(data.path), target), env, times)
    resync = tool.command("resync", str(data.path), target)
    if resync is None:
        return
    measure((server.name, data.name, "resync", tool.name), resync, env, times)
    if not changed:
        return
    data.change_one()
    measure((server.name, data.name, "changed", tool.name), resync, env, times)


def time_download(server: Server, tool: Tool, data: DataSet, times: Times) -> None:
    """Download the set (uploaded once by the AWS CLI, a neutral party) into a fresh dir."""
    local = DATA / "download" / slug(tool)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    measure((server.name, data.name, "download", tool.name),
            tool.command("download", tool.url(f"{data.name}/source"), str(local)),
            tool.env(server), times)
    if not same_tree(data, local):
        raise RuntimeError(f"{tool.name} downloaded an incomplete {data.label}")
    shutil.rmtree(local)


def put_source(server: Server, tools: list[Tool], data: DataSet) -> None:
    uploader = next(t for t in tools if t.kind == "aws") if any(
        t.kind == "aws" for t in tools) else tools[0]
    run(uploader.command("upload", str(data.path), uploader.url(f"{data.name}/source")),
        uploader.env(server))


def bench_set(server: Server, tools: list[Tool], data: DataSet, runs: int,
              times: Times) -> None:
    print(f"[{server.name}] {data.label}: building", flush=True)
    data.build()
    fresh_bucket(server)
    put_source(server, tools, data)
    os.sync()  # the source's writes reach the disk now, not under the first timed command
    for run_no in range(runs):
        order = tools[run_no % len(tools):] + tools[:run_no % len(tools)]  # rotate
        for tool in order:
            print(f"[{server.name}] {data.label}: run {run_no + 1}/{runs}: {tool.name}",
                  flush=True)
            time_sync(server, tool, data, run_no, times)
            time_download(server, tool, data, times)
    if server.name == "s3rver":
        times[(server.name, data.name, "floor", "listing")] = [
            list_seconds(server, f"{data.name}/tpi/0/") for _ in range(FLOOR_RUNS)]
        times[(server.name, data.name, "floor", "start")] = [
            run(START_FLOOR, server.env())[0] for _ in range(FLOOR_RUNS)]
    fresh_bucket(server)


def list_seconds(server: Server, prefix: str) -> float:
    """Seconds the server takes to list ``prefix`` (every page of 1,000 keys) asked from
    this process on one open connection, unsigned: less than any client's listing costs."""
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    start, token = time.perf_counter(), None
    try:
        while True:
            query = {"list-type": "2", "prefix": prefix} | (
                {"continuation-token": token} if token else {})
            connection.request("GET", f"/{BUCKET}?{urllib.parse.urlencode(query)}")
            answer = connection.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"listing {prefix}: {answer.status} {body[:200]!r}")
            found = re.search(rb"<NextContinuationToken>(.*?)</NextContinuationToken>", body)
            if found is None:
                return time.perf_counter() - start
            token = html.unescape(found.group(1).decode())
    finally:
        connection.close()


def count_requests(server: Server, tools: list[Tool], data: DataSet) -> dict[str, dict]:
    """Requests of each tool's two re-syncs, counted by a pass-through proxy."""
    data.build()
    counts: dict[str, dict] = {}
    with FaultProxy(server.url) as proxy:
        for tool in [t for t in tools if t.resync is not None]:
            target = tool.url(f"{data.name}/count/{slug(tool)}")
            env = tool.env(server, proxy.url)
            run(tool.command("upload", str(data.path), target), env)
            proxy.clear()
            run(tool.command("resync", str(data.path), target), env)
            counts[tool.name] = {"resync": tally(proxy.log)}
            data.change_one()
            proxy.clear()
            run(tool.command("resync", str(data.path), target), env)
            counts[tool.name]["changed"] = tally(proxy.log)
    return counts


def tally(log: list[tuple[str, str, str]]) -> dict[str, int]:
    """Requests by kind: listings, objects written (PUT or multipart complete), others."""
    counts = {"requests": len(log), "list": 0, "written": 0, "HEAD": 0, "GET": 0}
    for method, target, _outcome in log:
        path, _, query = target.partition("?")
        if method == "GET" and path.rstrip("/") == f"/{BUCKET}":
            counts["list"] += 1
        elif (method == "PUT" and "partNumber=" not in query) or (
                method == "POST" and "uploadId=" in query):
            counts["written"] += 1
        elif method in ("HEAD", "GET"):
            counts[method] += 1
    return counts


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(times: Times, server: str, sets: list[DataSet], tools: list[Tool],
          unit: str = "s") -> list[str]:
    """Markdown: one row per set and scenario, medians per tool, tpi / rclone default."""
    head = ["data set", "scenario", *(t.name for t in tools), f"tpi / {BASELINE}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for data in sets:
        for scenario, label in SCENARIOS:
            row = [median(times.get((server, data.name, scenario, t.name), []))
                   for t in tools]
            if all(v is None for v in row):
                continue
            cells = [(f"{v:.2f} s" if unit == "s" else f"{v:.0f} {unit}") if v is not None
                     else "n/a" for v in row]
            tpi, base = row[0], row[[t.name for t in tools].index(BASELINE)]
            ratio = f"**{tpi / base:.2f}**" if tpi and base else "n/a"
            lines.append(f"| {data.label} | {label} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def count_table(counts: dict[str, dict], data: DataSet) -> list[str]:
    lines = [f"| {data.label} | tool | requests | list requests | objects written "
             "| HEAD | GET |", "|---|---|---|---|---|---|---|"]
    for scenario, label in (("resync", "no change"), ("changed", "1 file changed")):
        for tool, by in counts.items():
            c = by[scenario]
            lines.append(f"| re-sync, {label} | {tool} | {c['requests']} | {c['list']} | "
                         f"{c['written']} | {c['HEAD']} | {c['GET']} |")
    return lines


def targets(times: Times, counts: dict[str, dict]) -> list[str]:
    """The issue's done-when figures, checked."""
    def med(data: str, scenario: str, tool: str) -> float:
        return median(times.get(("s3rver", data, scenario, tool), [])) or float("nan")

    small = med("small1k", "upload", "tpi") / med("small1k", "upload", BASELINE)
    up = med("big200m", "upload", "tpi") / med("big200m", "upload", BASELINE)
    down = med("big200m", "download", "tpi") / med("big200m", "download", BASELINE)
    tpi = counts.get("tpi", {}).get("resync", {})
    lines = [f"- 1,000 x 4 KB upload, tpi / rclone default = {small:.2f} "
             f"(target <= 0.50): {'met' if small <= 0.5 else 'MISSED'}",
             f"- 1 x 200 MB upload {up:.2f}, download {down:.2f} x rclone default "
             f"(target <= 1.00): {'met' if max(up, down) <= 1 else 'MISSED'}",
             f"- re-sync with no change (1,000 x 4 KB): {tpi.get('written')} objects written, "
             f"{tpi.get('list')} list requests, {tpi.get('requests')} requests in all"]
    peak = {tool: max((max(v) for k, v in PEAKS.items() if k[0] == "s3rver" and k[3] == tool),
                      default=float("nan")) for tool in ("tpi", BASELINE)}
    lines.append(f"- peak memory of any tpi command: {peak['tpi']:.0f} MiB "
                 f"({BASELINE}: {peak[BASELINE]:.0f} MiB)")
    for data in SETS:
        first, again = med(data.name, "upload", "tpi"), med(data.name, "resync", "tpi")
        if first == first and again == again:  # not NaN: the set ran
            listing, start = med(data.name, "floor", "listing"), med(data.name, "floor", "start")
            lines.append(f"- {data.label}: no-change re-sync / first sync = "
                         f"{again / first:.2f} (target < 0.10; {again * 1000:.0f} ms against "
                         f"{first * 100:.0f} ms). Floor: s3rver lists the set in "
                         f"{listing * 1000:.0f} ms and Python starts with asyncio, anyio and "
                         f"click in {start * 1000:.0f} ms, together "
                         f"{(listing + start) / first:.2f} of the first sync")
    return lines


def report(times: Times, counts: dict, sets: list[DataSet], tools: list[Tool],
           runs: int, argv: list[str]) -> str:
    info = machine() | versions()
    lines = [f"# Sync benchmark results ({datetime.date.today().isoformat()})", "",
             f"`python benchmarks/bench_sync.py {' '.join(argv)}`: median of {runs} run(s), "
             "wall seconds per command (process start included).", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             "## s3rver", "", *table(times, "s3rver", sets, tools), "",
             "## Peak memory (resident set of each command, MiB; s3rver)", "",
             *table(PEAKS, "s3rver", sets, tools, unit="MiB"), ""]
    if any(key[0] == "moto" for key in times):
        lines += ["## moto (CPU-bound emulator: measures the emulator as much as the "
                  "client)", "", *table(times, "moto", SETS[:1], tools), ""]
    lines += ["## Requests of the re-syncs (s3rver, through a counting proxy)", "",
              *count_table(counts, SETS[0]), "", "## Targets", "",
              *targets(times, counts), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run, no 10,000-file set")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sets", help="comma-separated set names: "
                        + ", ".join(s.name for s in SETS))
    parser.add_argument("--no-moto", action="store_true", help="skip the moto table")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    runs = 1 if args.quick else args.runs
    wanted = set(args.sets.split(",")) if args.sets else None
    sets = [s for s in SETS if (wanted is None or s.name in wanted)
            and not (args.quick and s.name == "small10k")]
    tools = [t for t in TOOLS if t.available()]
    ensure_s3rver()
    compile_tpi()
    times: Times = defaultdict(list)
    with servers(with_moto=not args.no_moto) as found:
        for data in sets:
            bench_set(found[0], tools, data, runs, times)
        counts = count_requests(found[0], tools, SETS[0])
        if len(found) > 1:
            bench_set(found[1], tools, SETS[0], runs, times)
    text = report(times, counts, sets, tools, runs, argv)
    print("\n" + text)
    (HERE / "results.md").write_text(text)


if __name__ == "__main__":
    main()

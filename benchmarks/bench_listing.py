"""The no-change re-sync of many files over a link with a round trip, in one run.

    python benchmarks/bench_listing.py [--files 10000] [--latency 0,0.05] [--runs 3]

A no-change re-sync is one listing, and a listing is a page of 1,000 keys per request, each
waiting for the one before. On a local server the server's own work sets the pace; against a
cloud region the round trip does. This puts tpi_core/testing/faultproxy.py between each tool and s3rver
(127.0.0.1), adding LATENCY seconds before every request, and times the no-change re-sync of
FILES files of 10 bytes by tpi (its listing read as ranges at once, split by the manifest),
by the same tpi reading its listing as one range (``S3Storage.LISTS_AFTER`` off), by
rclone's defaults and by ``aws s3 sync``, with the list requests each made. Prints a
markdown table and writes benchmarks/listing.md. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import HERE, ROOT, TOOLS, DataSet, Tool, compile_tpi, machine, run  # noqa: E402
from bench_sync import ensure_s3rver, fresh_bucket, servers, slug, tally  # noqa: E402

sys.path.insert(0, str(ROOT))
from tpi_core.testing.faultproxy import FaultProxy  # noqa: E402

ONE_RANGE = ("from tpi_aws.storage import S3Storage; S3Storage.LISTS_AFTER = False; "
             "from tpi_core.cli import main; main()")


def commands(tools: list[Tool], data: DataSet) -> dict[str, tuple[Tool, list[str]]]:
    """The re-sync command of each contender, and the tool whose prefix and env it uses."""
    found = {}
    for tool in tools:
        target = tool.url(f"{data.name}/{slug(tool)}")
        found[tool.name] = (tool, tool.command("resync", str(data.path), target))
        if tool.kind == "tpi":
            found["tpi, one range"] = (tool, [sys.executable, "-c", ONE_RANGE, "sync",
                                              str(data.path), target])
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--latency", default="0,0.05",
                        help="comma-separated seconds added before each request")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    latencies = [float(x) for x in args.latency.split(",")]
    data = DataSet(f"tiny{args.files}", f"{args.files:,} x 10 B", args.files, 10)
    tools = [t for t in TOOLS if t.name in ("tpi", "rclone default", "aws s3 sync")
             and t.available()]
    ensure_s3rver()
    compile_tpi()
    print(f"{data.label}: building", flush=True)
    data.build()
    times: dict[tuple[float, str], list[float]] = defaultdict(list)
    lists: dict[tuple[float, str], int] = {}
    with servers(with_moto=False) as (server,):
        fresh_bucket(server)
        contenders = commands(tools, data)
        for tool in tools:  # each tool's own copy, as its own first sync left it
            print(f"{data.label}: first sync by {tool.name}", flush=True)
            run(tool.command("upload", str(data.path), tool.url(f"{data.name}/{slug(tool)}")),
                tool.env(server))
        for latency in latencies:
            with FaultProxy(server.url, latency=latency) as proxy:
                for run_no in range(args.runs):
                    names = list(contenders)
                    names = names[run_no % len(names):] + names[:run_no % len(names)]
                    for name in names:
                        tool, command = contenders[name]
                        print(f"latency {latency * 1000:.0f} ms: run {run_no + 1}/{args.runs}:"
                              f" {name}", flush=True)
                        proxy.clear()
                        times[(latency, name)].append(run(command, tool.env(server, proxy.url))[0])
                        lists[(latency, name)] = tally(proxy.log)["list"]
        fresh_bucket(server)
    lines = ["| added round trip | tool | no-change re-sync | list requests | tpi / tool |",
             "|---|---|---|---|---|"]
    for latency in latencies:
        tpi = statistics.median(times[(latency, "tpi")])
        for name in contenders:
            median = statistics.median(times[(latency, name)])
            lines.append(f"| {latency * 1000:.0f} ms | {name} | {median:.2f} s | "
                         f"{lists[(latency, name)]} | **{tpi / median:.2f}** |")
    text = "\n".join([
        f"# No-change re-sync over a round trip ({datetime.date.today().isoformat()})", "",
        f"`python benchmarks/bench_listing.py {' '.join(argv)}`: {data.label} on s3rver "
        f"behind a proxy adding the round trip to every request; median of {args.runs} "
        "run(s), wall seconds per command (process start included).", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()), "",
        *lines, ""])
    print("\n" + text)
    (HERE / "listing.md").write_text(text)


if __name__ == "__main__":
    main()

"""Peak memory of ``tpi sync`` on a tree of many small files, against rclone, in one run.

    python benchmarks/bench_memory.py [--files 100000] [--runs 1]

Builds FILES files of 10 bytes in 10 directories under benchmarks/.data, starts s3rver on
127.0.0.1 and, for tpi and rclone's defaults, measures each command's wall time and peak
resident memory (GNU time): upload into a fresh prefix, re-sync with no change, and download
into an empty directory. Prints a markdown table and writes benchmarks/memory.md. The point
is how memory grows with the number of files: run it with --files 10000 and 100000 and
compare. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tools import BASELINE, HERE, TOOLS, DataSet, compile_tpi, machine, run  # noqa: E402
from bench_sync import (PEAKS, Times, ensure_s3rver, fresh_bucket, servers,  # noqa: E402
                        table, time_download, time_sync)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    data = DataSet(f"tiny{args.files}", f"{args.files:,} x 10 B", args.files, 10)
    tools = [t for t in TOOLS if t.name in ("tpi", BASELINE) and t.available()]
    ensure_s3rver()
    compile_tpi()
    times: Times = defaultdict(list)
    print(f"{data.label}: building", flush=True)
    data.build()
    with servers(with_moto=False) as (server,):
        fresh_bucket(server)
        source = next(t for t in tools if t.name == BASELINE)  # a neutral uploader
        run(source.command("upload", str(data.path), source.url(f"{data.name}/source")),
            source.env(server))
        for run_no in range(args.runs):
            for tool in tools:
                print(f"{data.label}: run {run_no + 1}/{args.runs}: {tool.name}", flush=True)
                time_sync(server, tool, data, run_no, times, changed=False)
                time_download(server, tool, data, times)
        fresh_bucket(server)
    info = machine()
    text = "\n".join([
        f"# Memory of many small files ({datetime.date.today().isoformat()})", "",
        f"`python benchmarks/bench_memory.py {' '.join(argv)}`: median of {args.runs} run(s) "
        "on s3rver.", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
        "## Peak resident memory of each command", "",
        *table(PEAKS, "s3rver", [data], tools, unit="MiB"), "",
        "## Wall time of each command", "", *table(times, "s3rver", [data], tools), ""])
    print("\n" + text)
    (HERE / "memory.md").write_text(text)


if __name__ == "__main__":
    main()

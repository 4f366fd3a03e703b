"""``python -m tpi_core.agent``: the agent's command line (its own process edge)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import anyio

from tpi_core.agent.hooks import load_hooks
from tpi_core.agent.runner import EXIT_ERROR, Agent, AgentConfig
from tpi_core.errors import TpiError, UsageError


def _interval(variable: str, default: str) -> str:
    # argparse converts a string default with ``type`` and reports a bad value in one line
    return os.environ.get(variable) or default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tpi_core.agent",
                                     description="Run one replica of a tpi task.")
    parser.add_argument("--storage", required=True, help="URL of the task's storage prefix")
    parser.add_argument("--replica", type=int, default=None,
                        help="replica index (default: the hooks claim one)")
    parser.add_argument("--workdir", type=Path, required=True, help="where the script runs")
    parser.add_argument("--hooks", default="", help="module:Class, an AgentHooks subclass")
    parser.add_argument("--log-interval", type=float,
                        default=_interval("TPI_AGENT_LOG_INTERVAL", "5"))
    parser.add_argument("--sync-interval", type=float,
                        default=_interval("TPI_AGENT_SYNC_INTERVAL", "10"))
    parser.add_argument("--stop-grace", type=float,
                        default=_interval("TPI_AGENT_STOP_GRACE", "5"))
    parser.add_argument("--machine-log", type=Path, default=None,
                        help="the machine's boot log, put at the head of this boot's log")
    parser.add_argument("--companion", type=Path, default=None,
                        help="run directory shared with the container that runs the script "
                             "(a pod's; tpi_core.agent.companion)")
    parser.add_argument("--start-patience", type=float,
                        default=_interval("TPI_AGENT_START_PATIENCE", "1800"),
                        help="seconds the companion may take to start the script")
    parser.add_argument("--linger", action="store_true",
                        help="after the replica's end, stay until SIGTERM (a native sidecar "
                             "is restarted when it exits)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one boot; the exit code (0 final, 143 preempted)."""
    args = _parser().parse_args(argv)
    config = AgentConfig(args.storage, args.replica, args.workdir.absolute(),
                         args.log_interval, args.sync_interval, args.stop_grace,
                         args.machine_log, args.companion and args.companion.absolute(),
                         args.start_patience)
    try:
        code = anyio.run(Agent(config, load_hooks(args.hooks)).run)
    except TpiError as exc:
        print(f"tpi-agent: error: {exc}", file=sys.stderr)
        code = 2 if isinstance(exc, UsageError) else EXIT_ERROR
    if args.linger:
        anyio.run(_until_sigterm)
    return code


async def _until_sigterm() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


if __name__ == "__main__":
    sys.exit(main())

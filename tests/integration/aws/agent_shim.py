"""Stand-in for ``python -m tpi_core.agent`` without ``--replica`` (test harness only).

The agent's command line still requires ``--replica``; on AWS the replica comes from the
hooks (``replica_index``) and the environment values from SSM (``environment``). This shim
does exactly that around the real :class:`~tpi_core.agent.Agent`, and goes away once the
agent asks its hooks itself (the harness then runs the agent's own command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import anyio

from tpi_core import layout
from tpi_core.agent import Agent, AgentConfig, load_hooks
from tpi_core.registry import open_storage


async def main(args: argparse.Namespace) -> int:
    hooks = load_hooks(args.hooks)
    async with open_storage(args.storage) as storage:
        spec = json.loads(await storage.read(layout.SPEC))
        index = await hooks.replica_index(storage, spec)
    if index is None:
        return 0
    environ = {**os.environ, **await hooks.environment(spec)}
    config = AgentConfig(args.storage, index, Path(args.workdir).absolute(),
                         float(os.environ.get("TPI_AGENT_LOG_INTERVAL", 5)),
                         float(os.environ.get("TPI_AGENT_SYNC_INTERVAL", 10)))
    return await Agent(config, hooks, environ=environ).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--storage", "--workdir", "--hooks"):
        parser.add_argument(option, required=True)
    sys.exit(anyio.run(main, parser.parse_args()))

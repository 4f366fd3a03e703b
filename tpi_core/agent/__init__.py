"""The agent: the program that runs a task's script on every machine, every boot.

The same program runs for every backend (DESIGN.md section 6)::

    python -m tpi_core.agent --storage URL --replica N --workdir DIR [--hooks module:Class]

It restores ``data/`` into the workdir, runs the script with the task's environment and
``TPI_TASK_ID``, ``TPI_REPLICA_INDEX``, ``TPI_REPLICA_COUNT``, ``TPI_ATTEMPT``, pushes
timestamped logs and changed files while it runs (only when something changed), flushes at
once on a preemption notice (SIGTERM, or the cloud's own through :class:`AgentHooks`),
stops the script at the task's absolute deadline, and writes the replica's status.

Environment values reach the agent through its own process environment only; it hands
the script the task's ``environment_keys`` from it, never writing a value anywhere.

The package's names are imported on first use, so the CLI can read one of its small modules
(the lease reader, the pod wrapper's text) without importing the whole agent.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"AgentHooks": "hooks", "GroupHooks": "hooks", "load_hooks": "hooks",
          "EXIT_DONE": "runner", "EXIT_PREEMPTED": "runner", "Agent": "runner",
          "AgentConfig": "runner"}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)

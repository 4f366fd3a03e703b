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
"""

from tpi_core.agent.hooks import AgentHooks, GroupHooks, load_hooks
from tpi_core.agent.runner import EXIT_DONE, EXIT_PREEMPTED, Agent, AgentConfig

__all__ = ["EXIT_DONE", "EXIT_PREEMPTED", "Agent", "AgentConfig", "AgentHooks", "GroupHooks",
           "load_hooks"]

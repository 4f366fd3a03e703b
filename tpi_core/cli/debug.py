"""``tpi debug``: tools to rehearse failures before the cloud makes them happen."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app


@click.group(name="debug")
def command() -> None:
    """Tools to rehearse failures (preemption)."""


@command.command()
@click.argument("task")
@click.option("--replica", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the replica to preempt.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM (the notice) and SIGKILL (the machine is gone).")
@pass_app
def preempt(app: Application, task: str, replica: int, grace: float) -> None:
    """Preempt a replica of a local TASK (id or name) as a spot machine would be.

    The replica's agent gets SIGTERM, the local form of a preemption notice: it flushes
    logs and files and stops the script. After the grace period everything left of that
    replica is killed. With spot >= 0 the task's supervisor replaces the replica, which
    resumes from the last synced state with TPI_ATTEMPT incremented.
    """
    from tpi_core.backends.local import LocalBackend

    backend = LocalBackend()
    message = app.run(backend.preempt, backend.resolve(task), replica, grace)
    app.say(message)

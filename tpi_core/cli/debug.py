"""``tpi debug``: tools to rehearse failures before the cloud makes them happen."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import cloud_option, file_option, region_option


@click.group(name="debug")
def command() -> None:
    """Tools to rehearse failures (preemption)."""


@command.command()
@click.argument("task")
@click.option("--replica", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the replica to preempt.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Local tasks: seconds between SIGTERM (the notice) and SIGKILL.")
@file_option
@cloud_option
@region_option
@pass_app
def preempt(app: Application, task: str, replica: int, grace: float, tasks_file, clouds,
            region) -> None:
    """Preempt a replica of TASK (name or id) as a spot machine would be.

    Local: the replica's agent gets SIGTERM, the local form of a preemption notice: it
    flushes logs and files and stops the script; after the grace period everything left of
    that replica is killed. AWS: the instance holding the replica is terminated, as a spot
    loss does. With spot >= 0 the task's supervisor or group replaces the replica, which
    resumes from the last synced state with TPI_ATTEMPT incremented.
    """
    from tpi_core.backend import TaskRef
    from tpi_core.cli._tasks import resolve
    from tpi_core.errors import TaskNotFound

    try:
        ref = resolve(tasks_file, (task,), clouds, region, app.run)[0].ref
    except TaskNotFound:
        from tpi_core.backends.local import LocalBackend

        ref = TaskRef(LocalBackend().resolve(task), "local", "")  # a local task by name
    app.say(app.run(_preempt, ref, replica, grace))


async def _preempt(ref, replica: int, grace: float) -> str:
    from tpi_core.engine import Engine

    async with Engine() as engine:
        return await engine.backend(ref.cloud).preempt(ref, replica, grace)

"""``tpi plan [FILE] [TASK...]``: what apply would do, without doing it."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import file_and_tasks, json_option


@click.command("plan")
@file_and_tasks
@json_option("Print the plan as JSON.")
@pass_app
def command(app: Application, tasks_file: str, names: tuple[str, ...]) -> int:
    """Show for each task whether apply would create, keep, update or replace it."""
    from tpi_core.cli._tasks import load_tasks

    planned = app.run(_plan, load_tasks(tasks_file, names, launching=True))
    rows = [{"task": p.task.name, "id": p.task.id, "cloud": p.task.cloud,
             "action": p.action.value, "reason": p.reason} for p in planned]
    if app.json:
        app.out_json(rows)
    for row in [] if app.json else rows:
        app.out(f"{row['action']:<9} {row['task']} ({row['id']} on {row['cloud']}) "
                f"{row['reason']}".rstrip())
    return 0


async def _plan(tasks):
    from tpi_core.engine import Engine

    async with Engine() as engine:
        return await engine.plan(tasks)

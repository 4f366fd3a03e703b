"""``tpi plan [FILE] [TASK...]``: what apply would do, without doing it."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli.apply import file_flag, split_args


@click.command("plan")
@click.argument("args", nargs=-1, metavar="[FILE] [TASK]...")
@file_flag
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_app
def command(app: Application, args, tasks_file, as_json) -> int:
    """Show for each task whether apply would create, keep, update or replace it."""
    from tpi_core.cli._tasks import load_tasks
    tasks_file, names = split_args(args, tasks_file)
    planned = app.run(_plan, load_tasks(tasks_file, names, launching=True))
    rows = [{"task": p.task.name, "id": p.task.id, "cloud": p.task.cloud,
             "action": p.action.value, "reason": p.reason} for p in planned]
    if as_json:
        app.out_json(rows)
    for row in [] if as_json else rows:
        app.out(f"{row['action']:<9} {row['task']} ({row['id']} on {row['cloud']}) "
                f"{row['reason']}".rstrip())
    return 0


async def _plan(tasks):
    from tpi_core.engine import Engine

    async with Engine() as engine:
        return await engine.plan(tasks)

"""``tpi start [TASK...]``: scale stopped tasks back to their parallelism."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import file_option, json_option


@click.command("start")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@json_option("Print the tasks started as JSON.")
@pass_app
def command(app: Application, names, tasks_file) -> int:
    """Start stopped tasks again (they need their tasks file: the environment comes from it)."""
    from tpi_core.cli._tasks import load_tasks

    tasks = load_tasks(tasks_file, names, launching=True)
    app.run(_start, app, tasks)
    if app.json:
        from tpi_core.cli._output import done_json

        app.out_json([done_json(t.name, t.id, "started") for t in tasks])
    return 0


async def _start(app: Application, tasks) -> None:
    from tpi_core.engine import Engine, gather

    async with Engine(app.say) as engine:
        await gather([lambda t=t: engine.start(t) for t in tasks])
    for task in tasks:
        app.say(f"{task.name}: started")

"""``tpi stop [TASK...]``: scale tasks to zero machines, keeping their storage."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import cloud_option, file_option, json_option, region_option


@click.command("stop")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@json_option("Print the tasks stopped as JSON.")
@pass_app
def command(app: Application, names, tasks_file, clouds, region) -> int:
    """Stop the machines of tasks; `tpi start` resumes them from their synced state."""
    from tpi_core.cli._tasks import resolve

    targets = resolve(tasks_file, names, clouds, region, app.run)
    app.run(_stop, app, targets)
    if app.json:
        from tpi_core.cli._output import done_json

        app.out_json([done_json(t.label, t.ref.task_id, "stopped") for t in targets])
    return 0


async def _stop(app: Application, targets) -> None:
    from tpi_core.engine import Engine, gather

    async with Engine(app.say) as engine:
        await gather([lambda t=t: engine.stop(t.ref) for t in targets])
    for target in targets:
        app.say(f"{target.label}: stopped")

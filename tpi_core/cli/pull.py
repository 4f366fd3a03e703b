"""``tpi pull [TASK...]``: download ``storage.output`` now; safe while tasks run."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._tasks import cloud_option, file_option, region_option


@click.command("pull")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@pass_app
def command(app: Application, names, tasks_file, cloud, region) -> int:
    """Download the output of tasks into their workdir (changed files only; deletes nothing).

    A task given by id downloads into this folder, its output as its spec names it."""
    from tpi_core.cli._tasks import resolve

    targets = [t for t in resolve(tasks_file, names, cloud, region, app.run)
               if _has_output(app, t)]
    app.run(_pull, app, targets)
    return 0


def _has_output(app: Application, target) -> bool:
    if target.workdir is None or not (target.output or target.by_id):
        app.say(f"{target.label}: no storage.output to download")
        return False
    return True


async def _pull(app: Application, targets) -> None:
    from tpi_core.cli._progress import progress_factory
    from tpi_core.engine import Engine, gather

    async with Engine(app.say, progress_factory(app)) as engine:
        results = await gather([lambda t=t: engine.pull(t.ref, t.workdir, t.output)
                                 for t in targets])
    for target, result in zip(targets, results, strict=True):
        app.say(f"{target.label}: {result.moved()} downloaded, {result.unchanged} unchanged")
        for skipped in result.skipped:
            app.say(f"{target.label}: skipped {skipped}")

"""``tpi pull [TASK...]``: download ``storage.output`` now; safe while tasks run."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import (
    cloud_option,
    file_option,
    json_option,
    overwrite_option,
    region_option,
)


@click.command("pull")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@overwrite_option
@json_option("Print what was done as JSON.")
@pass_app
def command(app: Application, names, tasks_file, clouds, region, overwrite) -> int:
    """Download the output of tasks into their workdir (changed files only; deletes nothing).

    A local file changed since tpi last wrote or uploaded it is kept: the task's copy lands
    beside it as NAME.tpi-<time>, and each such file is named (--overwrite takes the task's
    copy). A task given by id downloads into this folder, its output as its spec names it."""
    from tpi_core.cli._output import pulled_json
    from tpi_core.cli._tasks import resolve

    targets = [t for t in resolve(tasks_file, names, clouds, region, app.run)
               if _has_output(app, t)]
    results = app.run(_pull, app, tasks_file, targets, overwrite)
    if app.json:
        app.out_json([pulled_json(t, r) for t, r in zip(targets, results, strict=True)])
    return 0


def _has_output(app: Application, target) -> bool:
    if target.workdir is None or not (target.output or target.by_id):
        app.say(f"{target.label}: no storage.output to download")
        return False
    return True


async def _pull(app: Application, tasks_file: str, targets, overwrite: bool):
    from tpi_core.cli._progress import progress_factory
    from tpi_core.cli._tasks import guard_for
    from tpi_core.engine import Engine, gather, pulled_lines

    async with Engine(app.say, progress_factory(app)) as engine:
        results = await gather([
            lambda t=t: engine.pull(t.ref, t.workdir, t.output,
                                    guard_for(tasks_file, t, overwrite))
            for t in targets])
    for target, result in zip(targets, results, strict=True):
        held = len(result.kept)
        app.say(f"{target.label}: {result.moved()} downloaded, {result.unchanged} unchanged"
                + (f", {held} kept as changed here" if held else ""))
        for line in pulled_lines(result):
            app.say(f"{target.label}: {line}")
    return results

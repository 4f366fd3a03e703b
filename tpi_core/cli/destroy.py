"""``tpi destroy [TASK...]``: pull the output, then delete every resource of tasks."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._tasks import cloud_option, file_option, region_option


@click.command("destroy")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def command(app: Application, names, tasks_file, cloud, region, yes) -> int:
    """Download each task's output into its workdir, then delete its machines and storage.

    Asks for confirmation on a terminal unless --yes; with no terminal it proceeds.
    If the download fails nothing is deleted.
    """
    from tpi_core.cli._tasks import resolve

    targets = resolve(tasks_file, names, cloud, region, app.run)
    labels = ", ".join(t.label for t in targets)
    if not targets:
        app.say("nothing to destroy")
        return 0
    if not yes and app.interactive and not app.confirm(f"Destroy {labels}?"):
        app.say("nothing destroyed")
        return 1
    app.run(_destroy, app, tasks_file, targets)
    return 0


async def _destroy(app: Application, tasks_file: str, targets) -> None:
    from pathlib import Path

    from tpi_core.cli._progress import progress_factory
    from tpi_core.engine import Engine, gather
    from tpi_core.index import Index

    index = Index(Path(tasks_file).parent)

    async def one(target) -> None:
        await engine.destroy(target.ref, target.workdir, target.output)
        index.remove(target.ref.name, target.ref.task_id)

    async with Engine(app.say, progress_factory(app)) as engine:
        await gather([lambda t=t: one(t) for t in targets])

"""``tpi destroy [TASK...]``: pull the output, then delete every resource of tasks."""

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


@click.command("destroy")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@overwrite_option
@json_option("Print what was downloaded as JSON.")
@pass_app
def command(app: Application, names, tasks_file, clouds, region, yes, overwrite) -> int:
    """Download each task's output into its workdir, then delete its machines and storage.

    Local files changed since tpi wrote them are kept, as by `tpi pull` (the task's copy
    lands beside each). Asks for confirmation on a terminal unless --yes; with no terminal
    it proceeds. If the download fails nothing is deleted.
    """
    from tpi_core.cli._tasks import resolve

    targets = resolve(tasks_file, names, clouds, region, app.run)
    labels = ", ".join(t.label for t in targets)
    if not targets:
        app.say("nothing to destroy")
        return 0
    if not yes and app.interactive and not app.confirm(f"Destroy {labels}?"):
        app.say("nothing destroyed")
        return 1
    pulled = app.run(_destroy, app, tasks_file, targets, overwrite)
    if app.json:
        from tpi_core.cli._output import pulled_json

        app.out_json([{**(pulled_json(t, r) if r is not None else
                          {"task": t.label, "id": t.ref.task_id}), "destroyed": True}
                      for t, r in zip(targets, pulled, strict=True)])
    return 0


async def _destroy(app: Application, tasks_file: str, targets, overwrite: bool):
    from pathlib import Path

    from tpi_core.cli._progress import progress_factory
    from tpi_core.cli._tasks import guard_for
    from tpi_core.engine import Engine, gather
    from tpi_core.index import Index

    index = Index(Path(tasks_file).parent)

    async def one(target):
        pulled = await engine.destroy(target.ref, target.workdir, target.output,
                                      guard_for(tasks_file, target, overwrite))
        index.remove(target.ref.task_id)
        return pulled

    def waiting(task_id: str) -> None:
        app.say(f"{task_id}: waiting for another tpi command on it to finish")

    async with Engine(app.say, progress_factory(app)) as engine:
        with index.task_lock([t.ref.task_id for t in targets], waiting):
            return await gather([lambda t=t: one(t) for t in targets])

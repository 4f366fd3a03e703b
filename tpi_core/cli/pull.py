"""``tpi pull [TASK...]``: download ``storage.output`` now; safe while tasks run."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._tasks import cloud_option, file_option, region_option

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace local files changed since tpi wrote them (default: keep them, and put "
         "the task's copy beside each as NAME.tpi-<time>).")


@click.command("pull")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@pass_app
def command(app: Application, names, tasks_file, cloud, region, overwrite, as_json) -> int:
    """Download the output of tasks into their workdir (changed files only; deletes nothing).

    A local file changed since tpi last wrote or uploaded it is kept: the task's copy lands
    beside it as NAME.tpi-<time>, and each such file is named (--overwrite takes the task's
    copy). A task given by id downloads into this folder, its output as its spec names it."""
    from tpi_core.cli._tasks import resolve

    targets = [t for t in resolve(tasks_file, names, cloud, region, app.run)
               if _has_output(app, t)]
    results = app.run(_pull, app, tasks_file, targets, overwrite)
    if as_json:
        app.out_json([pulled_json(t, r) for t, r in zip(targets, results, strict=True)])
    return 0


def guard_for(tasks_file: str, target, overwrite: bool):
    """The guard of a target's workdir: what tpi last wrote there, kept beside the index."""
    from tpi_core.index import Index
    from tpi_core.storage.sync import Guard

    return Guard(Index.beside(tasks_file)[0].baseline(target.ref.task_id), overwrite)


def pulled_json(target, result) -> dict:
    """A pull's result for ``--json``."""
    return {"task": target.label, "id": target.ref.task_id, "downloaded": result.sent,
            "bytes": result.bytes_sent, "unchanged": result.unchanged,
            "kept": [{"path": key, "incoming": side or None} for key, side in result.kept],
            "skipped": list(result.skipped)}


def _has_output(app: Application, target) -> bool:
    if target.workdir is None or not (target.output or target.by_id):
        app.say(f"{target.label}: no storage.output to download")
        return False
    return True


async def _pull(app: Application, tasks_file: str, targets, overwrite: bool):
    from tpi_core.cli._progress import progress_factory
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

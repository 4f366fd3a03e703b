"""``tpi validate [FILE] [TASK...]``: parse a tasks file and show its tasks."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import file_and_tasks, json_option


@click.command("validate")
@file_and_tasks
@json_option("Print the tasks as JSON.")
@pass_app
def command(app: Application, tasks_file: str, names: tuple[str, ...]) -> int:
    """Check a tasks file; print each task with its id and resolved settings."""
    from tpi_core import config
    from tpi_core.cli._tasks import load_tasks

    tasks = load_tasks(tasks_file, names, launching=True)
    config.check_backends(tasks)  # the backend's own checks: aliases, regions, images
    rows = [_row(t) for t in tasks]
    if app.json:
        app.out_json(rows)
    else:
        for row in rows:
            app.out(" ".join(f"{k}={v}" for k, v in row.items()))
        app.say(f"{tasks_file}: {len(tasks)} task(s) OK")
    return 0


def _row(task) -> dict:
    row = {"task": task.name, "id": task.id, "cloud": task.cloud, "region": task.region,
           "machine": task.machine, "image": task.image, "spot": task.spot,
           "parallelism": task.parallelism, "timeout": task.timeout,
           "environment": sorted(task.environment), "workdir": str(task.workdir or ""),
           "output": task.storage.output}
    if task.cloud == "local":  # this computer: no region, no image
        del row["region"], row["image"]
    return row

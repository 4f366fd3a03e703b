"""``tpi validate [FILE] [TASK...]``: parse a tasks file and show its tasks."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli.apply import file_flag, split_args


@click.command("validate")
@click.argument("args", nargs=-1, metavar="[FILE] [TASK]...")
@file_flag
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON.")
@pass_app
def command(app: Application, args, tasks_file, as_json) -> int:
    """Check a tasks file; print each task with its id and resolved settings."""
    from tpi_core import config
    from tpi_core.cli._tasks import load_tasks

    tasks_file, names = split_args(args, tasks_file)
    tasks = load_tasks(tasks_file, names, launching=True)
    config.check_backends(tasks)  # the backend's own checks: aliases, regions, images
    rows = [_row(t) for t in tasks]
    if as_json:
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

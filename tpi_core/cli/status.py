"""``tpi status [TASK...]``: state, replica counts, recoveries and elapsed time."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import cloud_option, file_option, json_option, region_option


@click.command("status")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@file_option
@cloud_option
@region_option
@json_option("Print statuses as JSON.")
@click.option("--events", is_flag=True, help="Also show the events of each task.")
@pass_app
def command(app: Application, names, tasks_file, clouds, region, events) -> int:
    """Show the state of tasks (all tasks of the file and index when none is named)."""
    from tpi_core.cli._tasks import resolve

    targets = resolve(tasks_file, names, clouds, region, app.run)
    statuses = app.run(_statuses, targets)
    if app.json:
        app.out_json([s.to_json() for s in statuses])
    else:
        _table(app, statuses, events)
    return 0


async def _statuses(targets):
    from tpi_core.engine import Engine, gather

    async with Engine() as engine:
        return await gather([lambda t=t: engine.status(t.ref, applied_before=t.indexed)
                             for t in targets])


def _table(app: Application, statuses, events: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from tpi_core.model import ReplicaState, State
    from tpi_core.reports import elapsed, state_text

    table = Table(box=None, pad_edge=False)
    for column in ("TASK", "ID", "CLOUD", "STATE", "RUNNING", "SUCCEEDED", "FAILED",
                   "RECOVERIES", "ELAPSED"):
        table.add_column(column)
    for s in statuses:
        table.add_row(s.name, s.task_id, s.cloud, state_text(s),
                      str(s.count(ReplicaState.RUNNING)), str(s.count(ReplicaState.SUCCEEDED)),
                      str(s.count(ReplicaState.FAILED) + s.count(ReplicaState.TIMED_OUT)),
                      str(s.recoveries), _duration(elapsed(s)) if s.created else "-")
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200  # a pipe or a file: never cut an id short
    console.print(table)
    for s in statuses:
        if s.reason and s.state != State.SUCCEEDED:
            app.out(f"{s.name}: {s.reason}" + (f" ({s.boot_failures} failed boots)"
                                                 if s.boot_failures > 1 else ""))
    if events:
        for s in statuses:
            for e in s.events:
                app.out(f"{s.name} {_clock(e.time)} {e.code} {e.message}".rstrip())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _clock(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

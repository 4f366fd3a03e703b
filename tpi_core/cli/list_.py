"""``tpi list``: every task found in the local index and by the backends' own names and tags."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import cloud_option, file_option, json_option, region_option


@click.command("list")
@file_option
@cloud_option
@region_option
@json_option("Print the tasks as JSON.")
@pass_app
def command(app: Application, tasks_file, clouds, region) -> int:
    """List tasks, from the index beside the tasks file and from each backend."""
    from tpi_core.cli._tasks import search_clouds
    from tpi_core.index import Index

    index, file = Index.beside(tasks_file)
    entries = index.entries(file)
    found, skipped = app.run(_find, search_clouds(clouds), region)
    for reason in skipped:  # a backend with no credentials or configuration here
        app.say(f"not searched: {reason}")
    indexed = {e.task_id for e in entries.values()}
    rows = [{"id": r.task_id, "name": r.name, "cloud": r.cloud, "region": r.region,
             "indexed": r.task_id in indexed} for r in found]
    seen = {r["id"] for r in rows}
    rows += [{"id": e.task_id, "name": e.name, "cloud": e.cloud, "region": e.region,
              "indexed": True} for e in entries.values() if e.task_id not in seen]
    if app.json:
        app.out_json(rows)
    for row in [] if app.json else rows:
        app.out(f"{row['id']}\t{row['name'] or '-'}\t{row['cloud']}\t{row['region']}")
    return 0


async def _find(clouds, region):
    from tpi_core.engine import Engine

    async with Engine() as engine:
        return await engine.search(clouds, region)

"""``tpi plugins``: installed backends and storages, with their distributions and versions."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import json_option


@click.command("plugins")
@click.option("--check", is_flag=True, help="Import each plugin and report the broken ones.")
@json_option("Print as JSON.")
@pass_app
def command(app: Application, check: bool) -> int:
    """List plugins from package metadata (nothing is imported unless --check)."""
    from tpi_core import registry

    rows = []
    for group, load in ((registry.BACKEND_GROUP, registry.backend_class),
                        (registry.STORAGE_GROUP, registry.storage_class)):
        for info in registry.plugins(group):
            row = {"group": group, "name": info.name, "target": info.value,
                   "distribution": info.distribution, "version": info.version}
            if check:
                row["status"] = _check(load, info.name)
            rows.append(row)
    if app.json:
        app.out_json(rows)
    for row in [] if app.json else rows:
        status = f"\t{row['status']}" if check else ""
        app.out(f"{row['group']}\t{row['name']}\t{row['distribution']} {row['version']}"
                f"\t{row['target']}{status}")
    return 1 if check and any(r["status"] != "ok" for r in rows) else 0


def _check(load, name: str) -> str:
    from tpi_core.errors import TpiError

    try:
        load(name)
    except TpiError as exc:
        return f"broken: {exc}"
    return "ok"

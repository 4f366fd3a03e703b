"""``tpi machines [--cloud NAME]``: the size aliases of a backend."""

from __future__ import annotations

import click

from tpi_core.cli._app import Application, pass_app
from tpi_core.cli._options import json_option


@click.command("machines")
@click.option("--cloud", default="local", show_default=True, help="Backend to show.")
@json_option("Print as JSON.")
@pass_app
def command(app: Application, cloud: str) -> int:
    """Print what each size alias (s, m, l, xl, m+t4, ...) means on a backend."""
    from tpi_core import registry

    rows = registry.backend_class(cloud).machine_types()
    if app.json:
        app.out_json([{"alias": r.alias, "native": r.native, "detail": r.detail} for r in rows])
        return 0
    width = max((len(r.alias) for r in rows), default=5)
    for row in rows:
        app.out(f"{row.alias:<{width}}  {row.native}  {row.detail}".rstrip())
    return 0

"""``tpi logs [TASK...] [--follow]``: logs of every replica and boot, in order."""

from __future__ import annotations

import click

from tpi_core.cli._app import FOLLOW_HINT, Application, interrupt_hint, pass_app
from tpi_core.cli._options import cloud_option, json_option, region_option, tasks_file_option


@click.command("logs")
@click.argument("names", nargs=-1, metavar="[TASK]...")
@tasks_file_option("-F")
@cloud_option
@region_option
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new lines until the tasks end; exit with their result "
                   "(-f as in kubectl and tail: the tasks file is -F here).")
@json_option("Print one JSON object a line: task, id, replica, boot, line.")
@pass_app
def command(app: Application, names, tasks_file, clouds, region, follow) -> int:
    """Print the logs of tasks, each line prefixed by task[replica.boot]."""
    from tpi_core.cli._tasks import resolve

    targets = resolve(tasks_file, names, clouds, region, app.run)
    return app.run(_logs, app, targets, follow)


async def _logs(app: Application, targets, follow: bool) -> int:
    from tpi_core.cli import _follow
    from tpi_core.engine import Engine
    from tpi_core.model import State

    async with Engine() as engine:
        if follow:
            interrupt_hint.append(FOLLOW_HINT)
            statuses = await _follow.follow(engine, targets, app.out, app.say, app.json)
            for target, status in zip(targets, statuses):
                if status.state != State.SUCCEEDED:  # say why the exit code is not 0
                    app.say(f"{target.label}: {_follow.outcome(status)}")
            return _follow.exit_code(statuses)
        for target in targets:
            status, logs = await engine.status_and_logs(
                target.ref, applied_before=target.indexed)
            if not logs:
                app.say(f"{target.label}: no log yet: {_follow.waiting(status)}")
                continue
            await _follow.print_new_logs(engine, target, {}, app.out, logs, as_json=app.json)
            if status.state != State.SUCCEEDED and (status.state.final or status.reason):
                app.say(f"{target.label}: {_follow.outcome(status)}")  # why it did not
    return 0

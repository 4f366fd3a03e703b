"""``tpi apply [FILE] [TASK...]``: create or reconcile tasks."""

from __future__ import annotations

import click

from tpi_core.cli._app import FOLLOW_HINT, Application, interrupt_hint, pass_app
from tpi_core.cli._options import file_and_tasks, json_option


@click.command("apply")
@file_and_tasks
@click.option("--wait", is_flag=True, help="Follow logs to the end; exit with the result.")
@click.option("--replace", is_flag=True, help="Replace tasks whose fields changed.")
@json_option("Print what was done as JSON.")
@pass_app
def command(app: Application, tasks_file: str, names: tuple[str, ...], wait: bool,
            replace: bool) -> int:
    """Create or update the tasks of FILE (default tasks.toml), all or the named ones.

    A second apply of an unchanged file changes nothing. A task whose fields changed is
    replaced (its output is pulled first) only with --replace or after a confirmation.
    Returns as soon as the cloud has accepted the task; --wait follows it to the end.
    """
    from tpi_core.cli._tasks import load_tasks

    tasks = load_tasks(tasks_file, names, launching=True)
    return app.run(_apply, app, tasks_file, tasks, wait, replace)


async def _apply(app, tasks_file, tasks, wait, replace) -> int:
    from tpi_core.cli._follow import exit_code, follow, outcome
    from tpi_core.cli._progress import progress_factory
    from tpi_core.cli._tasks import Target
    from tpi_core.engine import Engine
    from tpi_core.index import Index

    index, _file = Index.beside(tasks_file)
    async with Engine(app.say, progress_factory(app)) as engine:
        # another command on one of these tasks (a second apply, a destroy) finishes first:
        # this one then plans from what that one left, so a task is launched once
        with index.task_lock([t.id for t in tasks], lambda i: _waiting(app, tasks, i)):
            planned = await engine.plan(tasks)
            _approve(app, planned, replace)
            await engine.apply(planned)
            _record(tasks_file, planned)
        if app.json:
            app.out_json([{"task": p.task.name, "id": p.task.id, "action": p.action.value}
                          for p in planned])
        if not wait:
            return 0
        targets = [Target(_ref(p.task), p.task, indexed=True) for p in planned]
        interrupt_hint.append(FOLLOW_HINT)
        statuses = await follow(engine, targets, app.out, app.say)
        for status in statuses:
            app.say(f"{status.name}: {outcome(status)}")
        return exit_code(statuses)


def _waiting(app: Application, tasks, task_id: str) -> None:
    name = next(t.name for t in tasks if t.id == task_id)
    app.say(f"{name}: waiting for another tpi command on {task_id} to finish")


def _approve(app: Application, planned, replace: bool) -> None:
    from tpi_core.engine import Action
    from tpi_core.errors import ReplaceRequired

    changed = [p for p in planned if p.action == Action.REPLACE]
    if not changed or replace:
        return
    names = ", ".join(p.task.name for p in changed)
    if app.interactive and app.confirm(f"Replace {names} (output is pulled first)?"):
        return
    raise ReplaceRequired(f"task(s) {names} changed and must be replaced: "
                          "run `tpi apply --replace` (nothing was changed)")


def _record(tasks_file: str, planned) -> None:
    from tpi_core.index import Entry, Index

    index, file = Index.beside(tasks_file)
    for p in planned:
        t = p.task
        index.put(Entry(t.name, t.id, t.cloud, t.region, t.storage.container,
                        str(t.workdir or ""), t.storage.output, file=file))


def _ref(task):
    from tpi_core.backend import TaskRef

    return TaskRef.of(task)

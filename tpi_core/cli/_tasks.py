"""Finding the tasks a command is about: the tasks file, the local index, or a task id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from tpi_core.backend import TaskRef
from tpi_core.errors import TaskNotFound
from tpi_core.model import Task

DEFAULT_FILE = "tasks.toml"

file_option = click.option(
    "-f", "--file", "tasks_file", default=DEFAULT_FILE, show_default=True,
    type=click.Path(dir_okay=False), help="The tasks file (its .tpi/ index sits beside it).")
cloud_option = click.option(
    "--cloud", default=None,
    help="Backend of a task given by id (default: search every installed backend).")
region_option = click.option(
    "--region", default=None,
    help="Region of a task given by id (default: search the backend's regions).")


@dataclass(frozen=True, slots=True)
class Target:
    """A task a command acts on: always a ref; the loaded task when its file defines it."""

    ref: TaskRef
    task: Task | None = None
    workdir: Path | None = None
    output: str = ""
    by_id: bool = False
    """Found by its id alone: its output comes into this folder, as its spec names it."""

    @property
    def label(self) -> str:
        """The name to show."""
        return self.ref.name or self.ref.task_id


def load_tasks(tasks_file: str, names: tuple[str, ...] = (), *,
               launching: bool = False) -> list[Task]:
    """The tasks of a file (all, or the named ones). ``launching`` (apply, plan, validate,
    start): every environment value to copy from here must be set here."""
    from tpi_core import config

    tasks = config.load(Path(tasks_file), names)
    if launching:
        config.check_environment(tasks)
    return tasks


def resolve(tasks_file: str, names: tuple[str, ...], cloud: str | None = None,
            region: str | None = None, run=None) -> list[Target]:
    """Targets for task names or ids: from the tasks file first, then the index, then ids.

    A task id found in neither is looked for by the backends' names and tags (``--cloud``,
    or every installed backend; ``--region``, or every region they search), through
    ``run`` (the CLI's one sync/async seam); one that no backend has is TaskNotFound.
    """
    from tpi_core.identifier import is_task_id
    from tpi_core.index import Index

    path = Path(tasks_file)
    tasks = {t.name: t for t in load_tasks(tasks_file)} if path.is_file() else {}
    entries = Index(path.parent).entries()
    if not (names or tasks or entries):
        load_tasks(tasks_file)  # no file and nothing launched from here: say so (exit 2)
    wanted = names or tuple(dict.fromkeys([*tasks, *entries]))
    targets = []
    for name in wanted:
        if name in tasks:
            task = tasks[name]
            targets.append(Target(TaskRef.of(task), task, task.workdir, task.storage.output))
        elif name in entries:
            entry = entries[name]
            workdir = Path(entry.workdir) if entry.workdir else None
            targets.append(Target(entry.ref(), None, workdir, entry.output))
        elif is_task_id(name):
            targets.append(Target(_locate(name, cloud, region, run), None, Path.cwd(),
                                  by_id=True))
        else:
            known = ", ".join(sorted({*tasks, *entries})) or "none"
            raise TaskNotFound(f"{tasks_file}: no task {name!r} (tasks: {known})")
    return targets


def _locate(task_id: str, cloud: str | None, region: str | None, run) -> TaskRef:
    from tpi_core import registry
    from tpi_core.engine import Engine

    clouds = [registry.canonical(cloud)] if cloud else registry.backend_names()

    async def locate() -> TaskRef:
        async with Engine() as engine:
            return await engine.locate(task_id, clouds, region)

    return run(locate)

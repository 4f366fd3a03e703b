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
    "--cloud", default="local", show_default=True,
    help="Backend of a task given by id rather than by name.")
region_option = click.option("--region", default="us-west", show_default=True,
                             help="Region of a task given by id.")


@dataclass(frozen=True, slots=True)
class Target:
    """A task a command acts on: always a ref; the loaded task when its file defines it."""

    ref: TaskRef
    task: Task | None = None
    workdir: Path | None = None
    output: str = ""

    @property
    def label(self) -> str:
        """The name to show."""
        return self.ref.name or self.ref.task_id


def load_tasks(tasks_file: str, names: tuple[str, ...] = ()) -> list[Task]:
    """The tasks of a file (all, or the named ones)."""
    from tpi_core import config

    return config.load(Path(tasks_file), names)


def resolve(tasks_file: str, names: tuple[str, ...], cloud: str = "local",
            region: str = "us-west") -> list[Target]:
    """Targets for task names or ids: from the tasks file first, then the index, then ids."""
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
            targets.append(Target(TaskRef(name, cloud, region)))
        else:
            known = ", ".join(sorted({*tasks, *entries})) or "none"
            raise TaskNotFound(f"{tasks_file}: no task {name!r} (tasks: {known})")
    return targets

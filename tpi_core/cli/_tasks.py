"""Finding the tasks a command is about: the tasks file, the local index, or a task id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tpi_core.backend import TaskRef
from tpi_core.errors import BackendNotInstalled, PluginError, TaskNotFound
from tpi_core.model import Task


@dataclass(frozen=True, slots=True)
class Target:
    """A task a command acts on: always a ref; the loaded task when its file defines it."""

    ref: TaskRef
    task: Task | None = None
    workdir: Path | None = None
    output: str = ""
    by_id: bool = False
    """Found by its id alone: its output comes into this folder, as its spec names it."""
    indexed: bool = False
    """Applied from this tasks file (its index lists it): with no storage, it was destroyed;
    a task of the file the index does not list was never applied."""

    @property
    def label(self) -> str:
        """The name to show."""
        return self.ref.name or self.ref.task_id


def load_tasks(tasks_file: str, names: tuple[str, ...] = (), *,
               launching: bool = False) -> list[Task]:
    """The tasks of a file (all, or the named ones). ``launching`` (apply, plan, validate,
    start): every environment value to copy from here must be set here."""
    from tpi_core import config

    tasks = _default_regions(config.load(Path(tasks_file), names))
    if launching:
        config.check_environment(tasks)
    return tasks


def _default_regions(tasks: list[Task]) -> list[Task]:
    """Tasks whose file gives no region take their backend's default one (AWS_REGION...)."""
    from tpi_core import config, registry

    regions: dict[str, str | None] = {}
    for cloud in {task.cloud for task in tasks if not task.region_given}:
        try:
            regions[cloud] = registry.backend_class(cloud).default_region()
        except (BackendNotInstalled, PluginError):
            pass  # the command that needs the backend says what to install
    return [config.with_region(task, regions.get(task.cloud)) for task in tasks]


def resolve(tasks_file: str, names: tuple[str, ...], clouds: Sequence[str] | str = (),
            region: str | None = None, run=None) -> list[Target]:
    """Targets for task names or ids: from the tasks file first, then the index, then ids.

    A task id found in neither is looked for by the backends' names and tags (``--cloud``
    names, or every installed backend; ``--region``, or every region they search), through
    ``run`` (the CLI's one sync/async seam); one that no backend has is TaskNotFound.
    """
    from tpi_core.identifier import is_task_id
    from tpi_core.index import Index

    path = Path(tasks_file)
    tasks = {t.name: t for t in load_tasks(tasks_file)} if path.is_file() else {}
    index, file = Index.beside(path)
    entries, destroyed = index.entries(file), index.destroyed(file)
    if not (names or tasks or entries):
        load_tasks(tasks_file)  # no file and nothing launched from here: say so (exit 2)
    wanted = names or tuple(dict.fromkeys([*tasks, *entries]))
    targets = []
    for name in wanted:
        if name in tasks:
            task = _launched_region(tasks[name], entries.get(name))
            indexed = (name in entries and entries[name].task_id == task.id
                       or task.id in destroyed)
            targets.append(Target(TaskRef.of(task), task, task.workdir, task.storage.output,
                                  indexed=indexed))
        elif name in entries:
            entry = entries[name]
            workdir = Path(entry.workdir) if entry.workdir else None
            targets.append(Target(entry.ref(), None, workdir, entry.output, indexed=True))
        elif is_task_id(name):
            targets.append(Target(_locate(name, clouds, region, run), None, Path.cwd(),
                                  by_id=True, indexed=True))
        else:
            known = ", ".join(sorted({*tasks, *entries})) or "none"
            raise TaskNotFound(f"{tasks_file}: no task {name!r} (tasks: {known})")
    return targets


def _launched_region(task: Task, entry) -> Task:
    """A task whose file gives no region is looked for where it was launched from here:
    the default region may have changed since (another AWS_REGION), its resources did not."""
    from tpi_core import config

    if entry is None or (entry.task_id, entry.cloud) != (task.id, task.cloud):
        return task
    return config.with_region(task, entry.region)


def _locate(task_id: str, given: Sequence[str] | str, region: str | None, run) -> TaskRef:
    from tpi_core.engine import Engine

    clouds = search_clouds(given)

    async def locate() -> TaskRef:
        async with Engine() as engine:
            return await engine.locate(task_id, clouds, region)

    return run(locate)


def search_clouds(given: Sequence[str] | str | None) -> list[str]:
    """The backends ``--cloud`` names (canonical), or every installed one."""
    from tpi_core import registry

    given = (given,) if isinstance(given, str) else given or ()
    return [registry.canonical(c) for c in given] or registry.backend_names()


def guard_for(tasks_file: str, target: Target, overwrite: bool):
    """The guard of a target's workdir: what tpi last wrote there, kept beside the index."""
    from tpi_core.index import Index
    from tpi_core.storage.sync import Guard

    return Guard(Index.beside(tasks_file)[0].baseline(target.ref.task_id), overwrite)

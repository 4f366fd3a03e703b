"""The local index ``.tpi/`` beside a tasks file: which tasks were applied from which file.

It is only an index (DESIGN.md section 1.2): every id can be recomputed from the tasks file
and every task found again by cloud names and tags. No environment value is ever written here.
Each task belongs to the file that declared it (two tasks files in one folder never see each
other's tasks), and is keyed by its id. Changes are read, made and written under an exclusive
lock on ``.tpi/index.lock``, so two commands run at once in one directory both keep their
tasks; an index that is not valid JSON is an error that names it, never silently replaced.

:func:`task_lock` serialises the commands that create or delete one task (two concurrent
applies of one id launch it once: the second waits, then finds it applied).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tpi_core.backend import TaskRef
from tpi_core.errors import UsageError
from tpi_core.model import DEFAULT_FILE

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one command at a time
    fcntl = None  # type: ignore[assignment]

INDEX_DIR = ".tpi"
_FILE = "index.json"
VERSION = 2
LEGACY_FILE = DEFAULT_FILE
"""Indexes written before tasks belonged to files listed them by name alone: those tasks are
taken as the default file's."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One applied task."""

    name: str
    task_id: str
    cloud: str
    region: str
    container: str = ""
    workdir: str = ""
    output: str = ""
    applied: float = field(default_factory=time.time)
    file: str = LEGACY_FILE
    """The tasks file that declared it, by name (it sits beside the index)."""
    destroyed: float = 0.0
    """When ``tpi destroy`` removed it (0: it is live). Kept, so that ``status`` says
    ``destroyed`` for it and ``not applied`` only for a task never applied from here."""

    def ref(self) -> TaskRef:
        """The reference the engine works with."""
        return TaskRef(self.task_id, self.cloud, self.region, self.name, self.container)


class Index:
    """``.tpi/index.json`` in a directory; writes are atomic."""

    def __init__(self, directory: Path):
        self.dir = Path(directory) / INDEX_DIR

    @classmethod
    def beside(cls, tasks_file: str | Path) -> tuple[Index, str]:
        """The index of a tasks file's folder, and the file's name in it."""
        path = Path(tasks_file)
        return cls(path.parent), path.name

    def baseline(self, task_id: str) -> Path:
        """Where what tpi last wrote into the task's workdir is kept (``sync/guard.py``)."""
        return self.dir / "files" / f"{task_id}.manifest"

    def environment_key(self, task_id: str, *, create: bool = False) -> bytes | None:
        """The task's random key for :meth:`Task.environment_digest` (made with ``create``),
        readable by this user only; None when this computer has none (applied elsewhere)."""
        path = self.dir / "files" / f"{task_id}.key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ignore()
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
        try:
            os.link(temp, path)  # the first writer's key wins; a second apply reads it
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
        return path.read_bytes()

    def entries(self, file: str | None = None) -> dict[str, Entry]:
        """Applied tasks by name: those of ``file`` (a tasks file's name), or all."""
        return {e.name: e for e in self._all().values()
                if (file is None or e.file == file) and not e.destroyed}

    def destroyed(self, file: str | None = None) -> set[str]:
        """Ids of the tasks of ``file`` (or all) that were destroyed from here."""
        return {e.task_id for e in self._all().values()
                if (file is None or e.file == file) and e.destroyed}

    def _all(self) -> dict[str, Entry]:
        path = self.dir / _FILE
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not an object of tasks")
            known = Entry.__dataclass_fields__
            if doc.get("version") == VERSION:
                tasks = doc.get("tasks")
                if not isinstance(tasks, dict):
                    raise ValueError("no object of tasks")
            else:  # version 1: {name: entry}, one file's tasks
                tasks = {v["task_id"]: v for v in doc.values()}
            return {k: Entry(**{f: v[f] for f in known if f in v}) for k, v in tasks.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise UsageError(
                f"{path}: not an index tpi can read ({exc}); it only lists tasks applied "
                "from here: move it away and `tpi list` finds them again by their tags"
            ) from None

    def put(self, entry: Entry) -> None:
        """Record or update a task."""
        self._change(lambda entries: entries.__setitem__(entry.task_id, entry))

    def remove(self, task_id: str) -> None:
        """Mark a task destroyed (its entry stays until it is applied again) and delete what
        was kept for it (its baseline, its environment key)."""
        for path in (self.baseline(task_id), self.dir / "files" / f"{task_id}.key"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        def mark(entries: dict[str, Entry]) -> None:
            if task_id in entries and not entries[task_id].destroyed:
                entries[task_id] = replace(entries[task_id], destroyed=time.time())
        self._change(mark)

    def _change(self, change: Callable[[dict[str, Entry]], object]) -> None:
        with self._locked():
            entries = self._all()
            before = dict(entries)
            change(entries)
            if entries != before or not (self.dir / _FILE).exists():
                self._save(entries)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(exist_ok=True)
        with open(self.dir / "index.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _save(self, entries: dict[str, Entry]) -> None:
        self._ignore()
        temp = self.dir / f".{_FILE}.{os.getpid()}"
        doc = {"version": VERSION, "tasks": {k: asdict(v) for k, v in entries.items()}}
        temp.write_text(json.dumps(doc, indent=2))
        os.replace(temp, self.dir / _FILE)

    def _ignore(self) -> None:
        self.dir.mkdir(exist_ok=True)
        ignore = self.dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")

    @contextlib.contextmanager
    def task_lock(self, task_ids: Iterable[str], waiting: Callable[[str], None] | None = None,
                  ) -> Iterator[None]:
        """Hold the lock of each task id (taken in sorted order: two commands over
        overlapping tasks never deadlock). ``waiting(task_id)`` is told before blocking on a
        lock another command holds."""
        with contextlib.ExitStack() as stack:
            if fcntl is None:
                yield
                return
            self._ignore()
            locks = self.dir / "locks"
            locks.mkdir(exist_ok=True)
            for task_id in sorted(set(task_ids)):
                handle = stack.enter_context(open(locks / f"{task_id}.lock", "a"))
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if waiting is not None:
                        waiting(task_id)
                    fcntl.flock(handle, fcntl.LOCK_EX)
            yield

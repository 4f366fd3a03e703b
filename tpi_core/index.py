"""The local index ``.tpi/`` beside a tasks file: which tasks were applied from it.

It is only an index (DESIGN.md section 1.2): every id can be recomputed from the tasks file
and every task found again by cloud names and tags. No environment value is ever written here.
Changes are read, made and written under an exclusive lock on ``.tpi/index.lock``, so two
commands run at once in one directory both keep their tasks; an index that is not valid JSON
is an error that names it, never silently replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tpi_core.backend import TaskRef
from tpi_core.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one command at a time
    fcntl = None  # type: ignore[assignment]

INDEX_DIR = ".tpi"
_FILE = "index.json"


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

    def ref(self) -> TaskRef:
        """The reference the engine works with."""
        return TaskRef(self.task_id, self.cloud, self.region, self.name, self.container)


class Index:
    """``.tpi/index.json`` in a directory; writes are atomic."""

    def __init__(self, directory: Path):
        self.dir = Path(directory) / INDEX_DIR

    def entries(self) -> dict[str, Entry]:
        """Applied tasks by name."""
        path = self.dir / _FILE
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not an object of tasks")
            known = Entry.__dataclass_fields__
            return {k: Entry(**{f: v[f] for f in known if f in v}) for k, v in doc.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError) as exc:
            raise UsageError(
                f"{path}: not an index tpi can read ({exc}); it only lists tasks applied "
                "from here: move it away and `tpi list` finds them again by their tags"
            ) from None

    def put(self, entry: Entry) -> None:
        """Record or update a task."""
        with self._locked():
            entries = self.entries()
            entries[entry.name] = entry
            self._save(entries)

    def remove(self, name: str, task_id: str | None = None) -> None:
        """Forget a task (after destroy); with ``task_id``, only if the entry is that task."""
        with self._locked():
            entries = self.entries()
            entry = entries.get(name)
            if entry is not None and task_id in (None, entry.task_id):
                del entries[name]
                self._save(entries)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(exist_ok=True)
        with open(self.dir / "index.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _save(self, entries: dict[str, Entry]) -> None:
        ignore = self.dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        temp = self.dir / f".{_FILE}.{os.getpid()}"
        temp.write_text(json.dumps({k: asdict(v) for k, v in entries.items()}, indent=2))
        os.replace(temp, self.dir / _FILE)

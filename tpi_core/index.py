"""The local index ``.tpi/`` beside a tasks file: which tasks were applied from it.

It is only an index (DESIGN.md section 1.2): every id can be recomputed from the tasks file
and every task found again by cloud names and tags. No environment value is ever written here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tpi_core.backend import TaskRef

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
        try:
            doc = json.loads((self.dir / _FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        known = Entry.__dataclass_fields__
        return {k: Entry(**{f: v[f] for f in known if f in v}) for k, v in doc.items()}

    def put(self, entry: Entry) -> None:
        """Record or update a task."""
        entries = self.entries()
        entries[entry.name] = entry
        self._save(entries)

    def remove(self, name: str) -> None:
        """Forget a task (after destroy)."""
        entries = self.entries()
        if entries.pop(name, None) is not None:
            self._save(entries)

    def _save(self, entries: dict[str, Entry]) -> None:
        self.dir.mkdir(exist_ok=True)
        ignore = self.dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        temp = self.dir / f".{_FILE}.{os.getpid()}"
        temp.write_text(json.dumps({k: asdict(v) for k, v in entries.items()}, indent=2))
        os.replace(temp, self.dir / _FILE)

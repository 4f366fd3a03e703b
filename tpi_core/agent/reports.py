"""What the agent writes under ``reports/replica-N/``: status, events and the boot log."""

from __future__ import annotations

import json
import time

from tpi_core import layout
from tpi_core.errors import ObjectNotFound
from tpi_core.model import Event, ReplicaStatus
from tpi_core.retry import retry
from tpi_core.storage import Storage

__all__ = ["Reports", "retry"]


class Reports:
    """One boot of one replica: its status, its events file and its log, by key."""

    def __init__(self, storage: Storage, index: int):
        self.storage = storage
        self.index = index
        self.attempt = 0
        self._events: list[str] = []

    async def previous(self) -> ReplicaStatus:
        """The status an earlier boot left (pending when this is the first)."""
        try:
            doc = json.loads(await retry(self.storage.read, layout.status_key(self.index)))
        except ObjectNotFound:
            return ReplicaStatus(self.index)
        return ReplicaStatus.from_json(doc)

    @property
    def log_key(self) -> str:
        """This boot's log."""
        return layout.log_key(self.index, self.attempt)

    async def write_status(self, status: ReplicaStatus) -> None:
        """Replace the replica's status.json."""
        data = json.dumps(status.to_json(), sort_keys=True).encode()
        await retry(self.storage.write, layout.status_key(self.index), data)

    async def event(self, code: str, message: str = "") -> None:
        """Append an event to this boot's events file (the file is small: rewritten whole)."""
        event = Event(time.time(), code, message, self.index)
        self._events.append(json.dumps(event.to_json(), sort_keys=True) + "\n")
        key = layout.events_key(self.index, self.attempt)
        await retry(self.storage.write, key, "".join(self._events).encode())

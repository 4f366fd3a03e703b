"""A sync progress receiver for tests: it sums what it is told."""

from __future__ import annotations


class Tally:
    """A :class:`~tpi_core.sync.result.SyncProgress` that sums what it is told."""

    def __init__(self) -> None:
        self.bytes = self.files = 0
        self.totals = (0, 0)

    def start(self, total_files: int, total_bytes: int) -> None:
        self.totals = (total_files, total_bytes)

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes

    def file_done(self) -> None:
        self.files += 1

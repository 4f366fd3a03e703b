"""Progress bars (rich) for uploads and downloads, shown only on a terminal.

One live display per command, one row per transfer, so concurrent task uploads share it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class Row:
    """One transfer's row: a SyncProgress (files, bytes, bytes/s, ETA)."""

    def __init__(self, bar, label: str):
        self._bar, self._label = bar, label
        self._task = bar.add_task(f"{label}: planning", total=None)
        self._files = self._done = 0

    def start(self, total_files: int, total_bytes: int) -> None:
        self._files = total_files
        self._bar.update(self._task, total=total_bytes, description=self._describe())

    def advance(self, nbytes: int) -> None:
        self._bar.advance(self._task, nbytes)

    def file_done(self) -> None:
        self._done += 1
        self._bar.update(self._task, description=self._describe())

    def _describe(self) -> str:
        return f"{self._label}: {self._done}/{self._files} files"


class Bars:
    """A rich Progress started with its first row and stopped with its last."""

    def __init__(self, console):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console)
        self._rows = 0

    @contextlib.contextmanager
    def row(self, label: str) -> Iterator[Row]:
        """A row for one transfer, removed when it ends."""
        if self._rows == 0:
            self._bar.start()
        self._rows += 1
        row = Row(self._bar, label)
        try:
            yield row
        finally:
            self._rows -= 1
            self._bar.refresh()
            self._bar.remove_task(row._task)
            if self._rows == 0:
                self._bar.stop()


def progress_factory(app):
    """``label -> context manager yielding a progress``; None when not on a terminal."""
    if app.quiet or not app.console.is_terminal:
        return None
    return Bars(app.console).row

"""Progress bars (rich) for uploads and downloads, shown only on a terminal."""

from __future__ import annotations


class RichProgress:
    """Adapts the sync engine's progress calls to one rich bar with bytes/s and ETA."""

    def __init__(self, app, label: str):
        self._app, self._label = app, label
        self._bar = None
        self._id = None

    def start(self, files: int, total_bytes: int) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(),
                             console=self._app.console, transient=True)
        self._bar.start()
        self._id = self._bar.add_task(f"{self._label} ({files} files)", total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._id, nbytes)

    def file_done(self) -> None:
        pass

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_factory(app):
    """A factory of progress objects for the engine, or None when not on a terminal."""
    if app.quiet or not app.console.is_terminal:
        return None
    return lambda label: RichProgress(app, label)

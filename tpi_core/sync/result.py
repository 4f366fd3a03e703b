"""What a sync reports: its result, and the progress callback shape it drives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

DryRun = Callable[[str, str, "int | None"], None]
"""Told what a dry run would do, one call per change, and nothing is changed:
``("send" | "fetch" | "delete", key, size)`` (size None for a deletion)."""


@dataclass
class SyncResult:
    """What a sync did: files and bytes moved, files left alone, deletions, and skips.

    ``skipped`` holds one ``"key: reason"`` line per thing that was not transferred
    (a symlink out of the tree, a vanished file, a directory in the way).
    """

    sent: int = 0
    bytes_sent: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    """Local files a download did not replace because they were changed here:
    ``(key, key of the task's copy beside it)``, or ``(key, "")`` when the task's copy is
    what tpi wrote before (nothing new to put beside it)."""

    def moved(self) -> str:
        """``3 files (12.3 kB)``: what was transferred, for messages."""
        return f"{self.sent} file{'' if self.sent == 1 else 's'} ({size_text(self.bytes_sent)})"


def size_text(nbytes: float) -> str:
    """Bytes for people, in powers of 1000: ``512 B``, ``12.3 kB``, ``1.5 GB``."""
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    for unit in ("kB", "MB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} GB"


class SyncProgress(Protocol):
    """Receives progress from a sync (a progress bar, a log line); None means silent.

    Planning streams, so the totals grow while transfers already run: ``start`` is called
    again whenever they grow, and its last call carries the final totals. ``advance`` may be
    called from worker threads, and with a negative count when a failed attempt is retried.
    """

    def start(self, total_files: int, total_bytes: int) -> None:
        """Files and bytes planned for transfer so far."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes moved (negative: taken back for a retry)."""

    def file_done(self) -> None:
        """One more file transferred."""

"""What tpi last wrote into a workdir, so a download never overwrites a file the user changed.

The baseline is a manifest (``manifest.py``'s format, sorted, streamed) of every file of a
task's workdir as tpi last left it: ``apply`` records the workdir as it uploaded it, and each
``pull`` or ``destroy`` the files it fetched. A download guarded by it decides, for a local
file that differs from the task's copy:

- the file is as tpi left it (same size and modification time): the task's copy replaces it;
- the user changed it and the task did not (the task's md5 is the baseline's): it is kept;
- both changed, or tpi never wrote it: it is kept, and the task's copy lands beside it as
  ``NAME.tpi-<UTC time>``, told to the caller in :attr:`SyncResult.kept`.

``overwrite`` takes the task's copy every time (and still records what it wrote).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tpi_core.storage import cut_name
from tpi_core.sync import manifest as mf

BESIDE_MARK = ".tpi-"
"""An incoming copy kept beside a changed file is named ``NAME.tpi-<stamp>``."""


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _closing(handle) -> Iterator[tuple[str, mf.Entry]]:
    with handle:
        yield from mf.entries_of(handle)


@dataclass(frozen=True, slots=True)
class Guard:
    """The baseline file of one task's workdir, and how a download treats changed files."""

    path: Path
    overwrite: bool = False
    stamp: str = field(default_factory=_stamp)

    def entries(self) -> Iterator[tuple[str, mf.Entry]]:
        """The baseline's entries, sorted by key (none before the first apply or pull)."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed by the generator)
        except FileNotFoundError:
            return iter(())
        return _closing(handle)

    def beside(self, key: str, n: int = 1) -> str:
        """The key the task's copy of ``key`` lands at when the local file is kept (the
        ``n``-th try: a name taken already gets ``-n``)."""
        parent, _, name = key.rpartition("/")
        side = f"{cut_name(name)}{BESIDE_MARK}{self.stamp}" + (f"-{n}" if n > 1 else "")
        return f"{parent}/{side}" if parent else side

    def save(self, entries: Iterator[tuple[str, mf.Entry]]) -> None:
        """Replace the baseline with ``entries`` (sorted), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            mf.write(temp, entries)
            os.replace(temp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def forget(self) -> None:
        """Remove the baseline (the task is destroyed)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

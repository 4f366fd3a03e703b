"""One boot's output: timestamped lines spooled to a local file, pushed whole when it grew.

Each line is ``ISO-UTC-timestamp stream text``, e.g. ``2026-11-26T10:00:00.123Z stdout epoch 3``.
The spool keeps memory flat however much a script prints.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tpi_core.storage import Storage

_CHUNK = 1 << 16
_MAX_LINE = 1 << 16


def utc_stamp(now: float | None = None) -> str:
    """``2026-11-26T10:00:00.123Z`` for ``now`` (default: the current time)."""
    now = time.time() if now is None else now
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


class BootLog:
    """The log of one boot. ``push`` uploads it only when lines were added since the last push."""

    def __init__(self, path: Path):
        self.path = path
        # one os.write per line on an O_APPEND descriptor: an upload never sees half a line
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._written = 0
        self._pushed = 0

    def add(self, stream: str, text: str, when: float | None = None) -> None:
        """Append one line of ``stream`` (stdout, stderr, boot), stamped ``when`` (now)."""
        os.write(self._fd, f"{utc_stamp(when)} {stream} {text}\n".encode())
        self._written += 1

    @property
    def dirty(self) -> bool:
        """True when lines were added since the last successful push."""
        return self._written > self._pushed

    async def push(self, storage: Storage, key: str) -> bool:
        """Upload the whole log if it grew; True when something was sent."""
        if not self.dirty:
            return False
        mark = self._written
        await storage.upload(key, self.path)
        self._pushed = mark
        return True

    def close(self) -> None:
        """Close the spool file (it is removed with the agent's temporary directory)."""
        os.close(self._fd)


async def pump(reader: asyncio.StreamReader, stream: str, log: BootLog) -> None:
    """Copy a pipe into ``log`` line by line until EOF; overlong lines are split."""
    pending = b""
    while chunk := await reader.read(_CHUNK):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            log.add(stream, _text(line))
        while len(pending) > _MAX_LINE:
            log.add(stream, _text(pending[:_MAX_LINE]))
            pending = pending[_MAX_LINE:]
    if pending:
        log.add(stream, _text(pending))


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")

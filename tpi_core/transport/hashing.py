"""md5 helpers of the transport, and the in-order hasher of a file written in ranges.

Every storage tpi speaks checks bodies by md5 (S3's single-part ETag and Content-MD5,
GCS's ``x-goog-hash: md5=``, Azure's Content-MD5); hashlib releases the GIL on large
buffers, so hashing runs on worker threads beside the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import anyio

from tpi_core.errors import IntegrityError

_READ = 4 << 20


def md5_digest(data: bytes) -> bytes:
    """The md5 of a body (its hex is a single-part ETag, its base64 the Content-MD5)."""
    return hashlib.md5(data, usedforsecurity=False).digest()


def md5_hex(data: bytes) -> str:
    """Hex md5 of a body."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def content_md5(digest: bytes) -> dict[str, str]:
    """The Content-MD5 header (RFC 1864), with which S3 and Azure refuse a body damaged on
    the way."""
    return {"Content-MD5": base64.b64encode(digest).decode()}


def base64_to_hex(value: str) -> str | None:
    """A base64 md5 (Content-MD5, ``x-goog-hash: md5=``) as hex; None when it is none."""
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


class InOrderHasher:
    """The md5 of a file written in ranges, computed in order in a worker thread while the
    later ranges still arrive (instead of reading the whole file again at the end)."""

    def __init__(self, fd: int):
        self.fd, self.next = fd, 0
        self.digest = hashlib.md5(usedforsecurity=False)
        self.ready: dict[int, int] = {}
        self.busy = False

    async def completed(self, start: int, end: int) -> None:
        """``[start, end)`` is on disk; hash whatever is now contiguous from the start."""
        self.ready[start] = end
        if self.busy:  # the task hashing now will find this range when it looks again
            return
        self.busy = True
        try:
            while self.next in self.ready:
                end = self.ready.pop(self.next)
                await anyio.to_thread.run_sync(_hash_range, self.digest, self.fd, self.next,
                                               end)
                self.next = end
        finally:
            self.busy = False

    def hexdigest(self, total: int) -> str:
        """The md5 of the first ``total`` bytes, all of which must have been hashed."""
        if self.next != total:
            raise IntegrityError(f"hashed {self.next} of {total} bytes")
        return self.digest.hexdigest()


def _hash_range(digest: Any, fd: int, start: int, end: int) -> None:
    while start < end:
        chunk = os.pread(fd, min(_READ, end - start), start)
        if not chunk:
            raise IntegrityError(f"short file at {start}")
        digest.update(chunk)
        start += len(chunk)

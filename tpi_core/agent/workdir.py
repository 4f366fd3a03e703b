"""Cheap change detection for the workdir: a digest of every synced file's key, size, mtime.

A walk of ``stat`` calls costs no request; the sync engine (one listing, then transfers) is
called only when the digest moved. The walk is the sync engine's own, with the task's
excludes, so a busy excluded directory (a cache) never triggers a sync. The digest is an
order-free sum, so memory stays flat for any number of files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tpi_core.sync.excludes import Excludes
from tpi_core.sync.walk import LocalFile, walk

_MODULUS = 1 << 128


def fingerprint(root: Path, excludes: Excludes) -> str:
    """A digest that changes when a file sync would send is added, removed or modified."""
    total = count = 0
    for item in walk(root.resolve(), excludes):
        if isinstance(item, LocalFile):
            entry = f"{item.key}\0{item.size}\0{item.mtime_ns}".encode(errors="surrogateescape")
            digest = hashlib.blake2b(entry, digest_size=16).digest()
            total = (total + int.from_bytes(digest, "big")) % _MODULUS
            count += 1
    return f"{count}:{total:032x}"

"""The sync manifest: what a storage holds, as last synced, so a re-sync needs no hashing.

Kept in storage as lines of JSON, after a header line, each line an array of up to 512
entries, every entry ``[key, size, mtime_ns, md5]``, all sorted by key::

    {"version":2}
    [["dir/a.txt",12,1718000000000000000,"9e107d9d372bb6826bd81d3542a419d6"],["dir/b.bin",8388608,1718000000000000000,null]]

``size`` and ``md5`` describe the stored object; ``mtime_ns`` is the modification time of the
local file it was uploaded from (so an untouched file is recognised without reading it).
Being sorted, it is read as a stream and merged with the walk and the listing (see
``plan.py``): a manifest of 100,000 files is never held in memory. The version 1 document
(one JSON object) is still read, whole, so manifests written before stay useful.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tpi_core.sync.spill import chunk_lines

VERSION = 2
HEADER = b'{"version":2}\n'
_MD5 = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the manifest."""

    size: int
    mtime_ns: int
    md5: str | None


Manifest = dict[str, Entry]
Entries = Iterable[tuple[str, Entry]]
"""Manifest entries as ``(key, entry)`` pairs, sorted by key."""


def read(path: str | Path) -> Iterator[tuple[str, Entry]]:
    """The entries of the manifest file at ``path``, sorted by key, streamed.

    A damaged manifest only costs hashing or re-sending, never wrong data: reading stops
    quietly at the first line that is not an entry or not above the one before it.
    """
    with open(path, "rb") as handle:
        yield from entries_of(handle)


def entries_of(handle: IO[bytes]) -> Iterator[tuple[str, Entry]]:
    first = handle.readline()
    try:
        header = json.loads(first)
    except ValueError:
        return
    if not isinstance(header, dict):
        return
    if header.get("version") == 1:
        yield from sorted(_parse_v1(header).items())
        return
    if header.get("version") != VERSION:
        return
    last = ""
    for line in handle:
        try:
            chunk = json.loads(line)
        except ValueError:
            return
        for data in chunk if isinstance(chunk, list) else (None,):
            pair = _entry(data)
            if pair is None or (last and not pair[0] > last):
                return
            last = pair[0]
            yield pair


def _entry(data: object) -> tuple[str, Entry] | None:
    try:
        key, size, mtime_ns, md5 = data  # type: ignore[misc]
        if not (isinstance(key, str) and key and (md5 is None or isinstance(md5, str))):
            return None
        return key, Entry(int(size), int(mtime_ns), md5)
    except (ValueError, TypeError):
        return None


def _parse_v1(doc: dict) -> Manifest:
    try:
        return {key: Entry(int(v["size"]), int(v["mtime_ns"]), v.get("md5"))
                for key, v in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def parse(data: bytes) -> Manifest:
    """Entries of a manifest document held in memory (small manifests, tests)."""
    return dict(entries_of(io.BytesIO(data)))


def lines(entries: Entries) -> Iterator[bytes]:
    """The manifest document for ``entries`` (sorted by key, each key once), line by line."""
    yield HEADER
    data = ([key, e.size, e.mtime_ns, e.md5] for key, e in entries)
    for line in chunk_lines(data):
        yield line.encode()


def write(path: str | Path, entries: Entries) -> None:
    """Write the manifest document for ``entries`` to the file ``path``."""
    with open(path, "wb") as handle:
        handle.writelines(lines(entries))


def md5_etag(etag: str | None) -> str | None:
    """The md5 an etag stands for, or None (multipart and opaque etags are not md5s)."""
    if not etag:
        return None
    etag = etag.strip('"').lower()
    return etag if _MD5.fullmatch(etag) else None


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

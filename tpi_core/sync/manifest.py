"""The sync manifest: what a storage holds, as last synced, so a re-sync needs no hashing.

One JSON object kept in storage::

    {"version": 1, "files": {"dir/file.txt": {"size": 12, "mtime_ns": 17..., "md5": "9e10..."}}}

``size`` and ``md5`` describe the stored object; ``mtime_ns`` is the modification time of the
local file it was uploaded from (so an untouched file is recognised without reading it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

VERSION = 1
_MD5 = re.compile(r"[0-9a-f]{32}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the manifest."""

    size: int
    mtime_ns: int
    md5: str | None


Manifest = dict[str, Entry]


def parse(data: bytes) -> Manifest:
    """Entries of a manifest document; an unreadable document counts as empty."""
    try:
        files = json.loads(data)["files"]
        return {key: Entry(int(v["size"]), int(v["mtime_ns"]), v.get("md5"))
                for key, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # a damaged manifest only costs hashing or re-sending, never wrong data


def dump(entries: Manifest) -> bytes:
    """The manifest document for ``entries`` (keys sorted, compact)."""
    files = {key: {"size": e.size, "mtime_ns": e.mtime_ns, "md5": e.md5}
             for key, e in sorted(entries.items())}
    return json.dumps({"version": VERSION, "files": files}, separators=(",", ":")).encode()


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

"""Walk a local tree incrementally (``os.scandir``), never following a link out of it.

Yields one :class:`LocalFile` per regular file, and a :class:`Skipped` for what cannot be
sent: symlinks that leave the tree, symlinks to directories, broken links, sockets and
fifos, names a storage key cannot hold. A symlink to a file inside the tree is sent as
that file's content. Only the directories still to visit are held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tpi_core.sync.excludes import Excludes

PART_MARK = ".tpi-part-"
"""Temporary download files carry this in their name; walks never report them."""


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to sync: its key, the real path to read, size and modification time."""

    key: str
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something in the tree that is not transferred, and why.

    ``unread`` marks a directory that could not be read: the walk is incomplete.
    """

    key: str
    reason: str
    unread: bool = False

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def walk(root: Path, excludes: Excludes, start: str = "") -> Iterator[LocalFile | Skipped]:
    """Files under ``root/start`` (keys relative to ``root``), excluded ones left out.

    ``root`` must be resolved (no symlink in it). A ``start`` that is a file yields that file.
    """
    first = root / start if start else root
    if start and os.path.realpath(first) != str(first):
        return  # a symlink on the way to start: what it points to is not ours to walk
    if start and os.path.isfile(first) and not os.path.islink(first):
        if not excludes.excluded(start):
            yield _file(start, str(first), os.stat(first))
        return
    pending = [(str(first), start + "/" if start else "")]
    while pending:
        directory, base = pending.pop()
        yield from _scan(root, directory, base, excludes, pending)


def _scan(root: Path, directory: str, base: str, excludes: Excludes,
          pending: list[tuple[str, str]]) -> Iterator[LocalFile | Skipped]:
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                yield from _visit(root, entry, base + entry.name, excludes, pending)
    except (FileNotFoundError, NotADirectoryError):
        return
    except PermissionError:
        yield Skipped(base.rstrip("/") or ".", "directory cannot be read", unread=True)


def _visit(root: Path, entry: os.DirEntry, key: str, excludes: Excludes,
           pending: list[tuple[str, str]]) -> Iterator[LocalFile | Skipped]:
    if PART_MARK in entry.name:
        return
    if entry.is_symlink():
        if not excludes.excluded(key):
            yield _link(root, entry, key, excludes)
    elif entry.is_dir(follow_symlinks=False):
        if not excludes.prunes(key):
            pending.append((entry.path, key + "/"))
    elif excludes.excluded(key):
        return
    elif "\\" in key:
        yield Skipped(key, "a backslash in the name cannot be part of a storage key")
    elif entry.is_file(follow_symlinks=False):
        yield _file(key, entry.path, entry.stat(follow_symlinks=False))
    else:
        yield Skipped(key, "not a regular file")


def _link(root: Path, entry: os.DirEntry, key: str, excludes: Excludes) -> LocalFile | Skipped:
    target = os.path.realpath(entry.path)
    inside = os.path.commonpath([root, target]) == str(root)
    if not inside:
        return Skipped(key, "symlink points outside the tree")
    if os.path.isdir(target):
        return Skipped(key, "symlink to a directory is not followed")
    if not os.path.isfile(target):
        return Skipped(key, "broken symlink")
    if excludes.excluded(Path(target).relative_to(root).as_posix()):
        return Skipped(key, "symlink to an excluded file")
    return _file(key, target, os.stat(target))


def _file(key: str, path: str, stat: os.stat_result) -> LocalFile:
    return LocalFile(key, path, stat.st_size, stat.st_mtime_ns)

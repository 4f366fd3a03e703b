"""Walk a local tree incrementally (``os.scandir``), never following a link out of it.

Yields one :class:`LocalFile` per regular file, and a :class:`Skipped` for what cannot be
sent: symlinks that leave the tree, symlinks to directories, broken links, sockets and
fifos, names a storage key cannot hold. A symlink to a file inside the tree is sent as
that file's content.

Files come in key order, the order of an S3 listing, so the planner merges the walk with the
listing instead of holding either: each directory is read whole and sorted, a subdirectory
counting as its name plus ``/`` (``a-b`` < ``a/x`` < ``a0``), and visited at its place.
Only the directories on the way down are held, each in a bounded
:class:`~tpi_core.sync.spill.SortedSpill` (a directory of a million files goes to disk).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tpi_core.sync.excludes import Excludes
from tpi_core.sync.spill import SortedSpill

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
    stack = [_sorted(root, str(first), start + "/" if start else "", excludes)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, _Dir):
            stack.append(_sorted(root, item.path, item.key + "/", excludes))
        else:
            yield item


@dataclass(frozen=True, slots=True)
class _Dir:
    """A subdirectory still to visit."""

    key: str
    path: str


Item = LocalFile | Skipped | _Dir
_KINDS: dict[str, type] = {"f": LocalFile, "s": Skipped, "d": _Dir}


def _sort_key(item: Item) -> str:
    return item.key + "/" if isinstance(item, _Dir) else item.key


def _encode(item: Item) -> list:
    kind = "f" if isinstance(item, LocalFile) else "s" if isinstance(item, Skipped) else "d"
    return [kind, *(getattr(item, name) for name in item.__slots__)]


def _decode(data: list) -> Item:
    return _KINDS[data[0]](*data[1:])


def _sorted(root: Path, directory: str, base: str, excludes: Excludes) -> Iterator[Item]:
    with SortedSpill(_sort_key, _encode, _decode) as items:
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    item = _visit(root, entry, base + entry.name, excludes)
                    if item is not None:
                        items.add(item)
        except (FileNotFoundError, NotADirectoryError):
            return
        except PermissionError:
            yield Skipped(base.rstrip("/") or ".", "directory cannot be read", unread=True)
            return
        yield from items


def _visit(root: Path, entry: os.DirEntry, key: str, excludes: Excludes) -> Item | None:
    if PART_MARK in entry.name:
        _remove_leftover(entry)
        return None
    if not _utf8(entry.name):
        return _not_utf8(entry, key, excludes)
    if entry.is_symlink():
        return None if excludes.excluded(key) else _link(root, entry, key, excludes)
    if entry.is_dir(follow_symlinks=False):
        return None if excludes.prunes(key) else _Dir(key, entry.path)
    if excludes.excluded(key):
        return None
    if "\\" in key:
        return Skipped(key, "a backslash in the name cannot be part of a storage key")
    if entry.is_file(follow_symlinks=False):
        return _file(key, entry.path, entry.stat(follow_symlinks=False))
    return Skipped(key, "not a regular file")


def _utf8(name: str) -> bool:
    """Whether a file name decoded from the disk is real text (not undecodable bytes kept
    as surrogates, which no storage key can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_utf8(entry: os.DirEntry, key: str, excludes: Excludes) -> Skipped | None:
    if entry.is_dir(follow_symlinks=False):
        return None if excludes.prunes(key) else Skipped(
            printable(key), "the directory name is not valid UTF-8, which a storage key must "
            "be: nothing in it is sent")
    return None if excludes.excluded(key) else Skipped(
        printable(key), "the name is not valid UTF-8, which a storage key must be")


def printable(key: str) -> str:
    """``key`` for messages: undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(key).decode("utf-8", "backslashreplace")


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


def _remove_leftover(entry: os.DirEntry) -> None:
    """Remove a temporary download file whose process died (a killed pull or sync): its name
    says ``<PART_MARK><pid>.<id>-<n>``. One of a live process, or of another form, stays."""
    pid = entry.name.rpartition(PART_MARK)[2].partition(".")[0]
    if not pid.isdigit() or not entry.is_file(follow_symlinks=False):
        return
    try:
        os.kill(int(pid), 0)
        return  # alive (or not ours to signal): perhaps still downloading
    except ProcessLookupError:
        pass
    except (PermissionError, OverflowError, ValueError):
        return
    with contextlib.suppress(OSError):
        os.unlink(entry.path)

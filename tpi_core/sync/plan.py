"""The sync planner: pure functions from (local files, one remote listing, manifest) to actions.

Nothing here touches storage. Local reads happen only through the ``hash_file`` (None when
the file cannot be read) and ``stat_local`` callables the caller passes, and hashing only
when size and modification time cannot decide (a file touched but the same size). Plans
are generators that merge streams sorted by key (the walk, the listing, the manifest), so a
100,000-file tree is planned one file at a time and no side of it is held as a dictionary;
a stream out of order raises :class:`~tpi_core.sync.spill.OrderError` before anything is
deleted.

Upload, for each local file: no remote object or another size -> :class:`Send`; a manifest
entry with the same size and mtime -> :class:`Unchanged`; same size but another mtime -> hash
and compare with the manifest's md5. With no manifest entry, an md5 etag is compared with
the file's hash; failing that, a file whose mtime is the object's (a download set it) is
unchanged, and an equal size means unchanged only when the caller keeps no manifest at all.
Remote objects no local file claimed are deleted only with ``delete=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from tpi_core.storage.local import checked_key
from tpi_core.sync import manifest as mf
from tpi_core.sync import spill
from tpi_core.sync.excludes import Excludes
from tpi_core.sync.manifest import Entry, md5_etag
from tpi_core.sync.spill import Cursor
from tpi_core.sync.walk import LocalFile, Skipped

RemoteObject = tuple[int, str | None, float | None]
"""A listed object: size, etag, modification time (seconds)."""

MTIME_SLACK_NS = 1_000_000
"""A local file whose mtime is this close to the object's is what a download left there."""


@dataclass(frozen=True, slots=True)
class Send:
    """Upload a local file; ``md5`` is its hash when planning already computed it."""

    file: LocalFile
    md5: str | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """Download an object; ``md5`` (from the storage's etag) verifies the bytes when known."""

    key: str
    size: int
    md5: str | None = None
    mtime: float | None = None
    beside: bool = False
    """The local file is the user's: the object lands beside it (see ``guard.py``)."""
    ours: str | None = None
    """With ``beside``: the md5 of what tpi last wrote there, when known (an object that
    turns out to be that is no news, and is not kept beside)."""


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Nothing to move; ``entry`` is the manifest entry to keep for an upload, ``recorded``
    when the manifest holds that very entry already (nothing to write for it)."""

    key: str
    entry: Entry | None = None
    recorded: bool = False


@dataclass(frozen=True, slots=True)
class Keep:
    """A local file the user changed since tpi wrote it, whose object is unchanged: left."""

    key: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key`` on the destination side (remote object or local file)."""

    key: str


@dataclass(frozen=True, slots=True)
class Forget:
    """The manifest's entry for ``key`` has no file any more: leave it out of the next one."""

    key: str


Action = Send | Fetch | Unchanged | Keep | Delete | Forget | Skipped


def plan_upload(files: Iterable[LocalFile | Skipped], remote: Iterable[tuple[str, RemoteObject]],
                manifest: mf.Entries | None, *, excludes: Excludes, delete: bool,
                hash_file: Callable[[LocalFile], str | None]) -> Iterator[Action]:
    """Actions that make the remote side match ``files``.

    All three inputs are sorted by key (``walk`` yields files so): ``remote`` is the one
    listing of the destination and ``manifest`` the entries of the manifest (None when the
    caller keeps none), as ``(key, value)`` pairs. A manifest entry no file claims gives a
    :class:`Forget`, so the caller learns what its next manifest leaves out without reading
    the old one again. Listed keys no local file claims are what
    ``delete`` removes, at the end, and only when the whole tree could be read (rclone's
    rule: no deletions after a read error). Until then they wait in a
    :class:`~tpi_core.sync.spill.SortedSpill`, not in memory.
    """
    listed, entries = Cursor(remote, "the listing"), Cursor(manifest or (), "the manifest")
    walked = Cursor((), "the walk")
    with spill.keys() as unclaimed:
        complete = True
        for item in files:
            if isinstance(item, Skipped):
                complete = complete and not item.unread
                yield item
                continue
            walked.check(item.key)
            for key, _obj in listed.until(item.key):
                if delete and not excludes.excluded(key):
                    unclaimed.add(key)
            yield from (Forget(key) for key, _entry in entries.until(item.key))
            yield _upload_decision(item, listed.take(item.key), entries.take(item.key),
                                   manifest is not None, hash_file)
        for key, _obj in listed.until(None):
            if delete and not excludes.excluded(key):
                unclaimed.add(key)
        yield from (Forget(key) for key, _entry in entries.until(None))
        if delete and not complete:
            yield Skipped("*", "nothing deleted: part of the tree could not be read")
        elif delete:
            yield from (Delete(key) for key in unclaimed)


def _upload_decision(file: LocalFile, obj: RemoteObject | None, entry: Entry | None,
                     keeps_manifest: bool, hash_file: Callable[[LocalFile], str | None]) -> Action:
    if obj is None:
        return Send(file)
    if entry is not None and (entry.size, entry.mtime_ns) == (file.size, file.mtime_ns):
        # untouched since this side last synced it: a different object there now was
        # written by another writer (a sibling replica) and is theirs to keep
        return Unchanged(file.key, entry, recorded=True)
    if obj[0] != file.size:
        return Send(file)
    # the manifest is ours and trusted over etags: an S3 object encrypted with KMS has an
    # etag that looks like an md5 but is not one
    if entry is not None and entry.size == file.size:
        return _by_hash(file, entry.md5, hash_file)
    etag = md5_etag(obj[1])
    if etag is not None:
        return _by_hash(file, etag, hash_file)
    if _same_time(file.mtime_ns, obj[2]):
        # the file is the object as a download left it (downloads set the object's mtime):
        # an agent's first push after restoring the workdir sends nothing
        if not keeps_manifest:
            return Unchanged(file.key)
        return _by_hash(file, None, hash_file, trusted=True)  # hashed for the manifest only
    # same size, nothing to compare with: trust it only when no manifest is kept at all
    return Send(file) if keeps_manifest else Unchanged(file.key)


def _same_time(mtime_ns: int, mtime: float | None) -> bool:
    return mtime is not None and abs(mtime_ns - round(mtime * 1e9)) <= MTIME_SLACK_NS


def _by_hash(file: LocalFile, expected: str | None,
             hash_file: Callable[[LocalFile], str | None], *, trusted: bool = False) -> Action:
    md5 = hash_file(file)
    if md5 is not None and (trusted or md5 == expected):
        return Unchanged(file.key, Entry(file.size, file.mtime_ns, md5))
    return Send(file, md5)


def plan_download(remote: Iterable[tuple[str, RemoteObject]], manifest: mf.Entries | None, *,
                  stat_local: Callable[[str], tuple[int, int] | None],
                  hash_file: Callable[[str], str | None],
                  written: mf.Entries | None = None) -> Iterator[Action]:
    """Actions that make local files match the ``remote`` listing (already filtered).

    ``remote`` and ``manifest`` are ``(key, value)`` pairs sorted by key. ``stat_local(key)``
    gives ``(size, mtime_ns)`` of the local regular file or None. A local file of the right
    size is kept when its md5 equals the object's (etag, else the manifest's), or, with no
    checksum known, when its mtime is the object's (set by the last download). An unsafe key
    raises UnsafePathError.

    ``written``: what tpi last wrote locally (``guard.py``), sorted; when given, a local file
    that differs from its object and was changed since is never replaced: it is kept
    (:class:`Keep`) or the object is fetched beside it (``Fetch.beside``).
    """
    entries = Cursor(manifest or (), "the manifest")
    baseline = Cursor(written, "the local manifest") if written is not None else None
    for key, obj in Cursor(remote, "the listing").until(None):
        checked_key(key)
        local = stat_local(key)
        action = _download_decision(key, obj, local, entries.find(key), hash_file)
        if baseline is not None:
            action = _guarded(action, local, baseline.find(key))
        yield action


def _guarded(action: Action, local: tuple[int, int] | None, entry: Entry | None) -> Action:
    if not isinstance(action, Fetch) or local is None:
        return action
    if entry is not None and (entry.size, entry.mtime_ns) == local:
        return action  # as tpi left it: the task's copy replaces it
    if entry is not None and action.md5 is not None and entry.md5 == action.md5:
        return Keep(action.key)  # changed here, not by the task
    return replace(action, beside=True, ours=entry.md5 if entry is not None else None)


def _download_decision(key: str, obj: RemoteObject, local: tuple[int, int] | None,
                       entry: Entry | None, hash_file: Callable[[str], str | None]) -> Action:
    size, etag, mtime = obj
    fetch = Fetch(key, size, md5_etag(etag), mtime)
    if local is None or local[0] != size:
        return fetch
    expected = fetch.md5 or (entry.md5 if entry is not None and entry.size == size else None)
    if expected is not None:
        return Unchanged(key) if hash_file(key) == expected else fetch
    if _same_time(local[1], mtime):
        return Unchanged(key)
    return fetch


def plan_local_deletions(files: Iterable[LocalFile | Skipped],
                         remote: Iterable[tuple[str, RemoteObject]]) -> Iterator[Delete]:
    """Local files (from a walk, sorted) that the sorted remote listing no longer has."""
    listed, walked = Cursor(remote, "the listing"), Cursor((), "the walk")
    for item in files:
        if isinstance(item, LocalFile):
            walked.check(item.key)
            if listed.find(item.key) is None:
                yield Delete(item.key)

"""Download a storage prefix into a local directory, safely and atomically.

Every file is written to a temporary file beside its target and renamed over it only once
complete and checked (size, and md5 when the etag is one), so a reader never sees half a
file and a failed download leaves the old file untouched. A mismatch is fetched again; only
the same bytes twice are accepted (the object changed after the listing). Keys are checked
before anything is written: ``..``, absolute or backslashed keys and paths through a symlinked
directory inside the destination raise :class:`~tpi_core.errors.UnsafePathError`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio

from tpi_core.errors import IntegrityError, ObjectNotFound, UnsafePathError, UsageError
from tpi_core.storage import Storage, cut_name
from tpi_core.storage.local import checked_key
from tpi_core.sync import DEFAULT_JOBS, spill
from tpi_core.sync import manifest as mf
from tpi_core.sync.excludes import Excludes
from tpi_core.sync.execute import SyncRun
from tpi_core.sync.guard import BESIDE_MARK, Guard
from tpi_core.sync.plan import Action, Fetch, Keep, plan_download, plan_local_deletions
from tpi_core.sync.result import DryRun, SyncProgress, SyncResult
from tpi_core.sync.retry import RetryPolicy, retrying
from tpi_core.sync.spill import Cursor
from tpi_core.sync.upload import Listing, OldManifest, local_root, manifest_and_listing
from tpi_core.sync.walk import PART_MARK, LocalFile, walk

IN_THE_WAY = (IsADirectoryError, NotADirectoryError, FileExistsError)
_TEMP_ID = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
"""Per process (its pid first: a later walk removes the leftovers of a process that died);
a counter makes each temporary name unique."""
_TEMPS = itertools.count()
INLINE_PLACE = 64 << 10
"""Files up to this size are checked and renamed on the event loop when no hash is due."""


async def download(remote: Storage, local: str | Path, *, prefix: str = "",
                   exclude: Excludes | Sequence[str] = (), delete: bool = False,
                   manifest: tuple[Storage, str] | None = None, jobs: int = DEFAULT_JOBS,
                   progress: SyncProgress | None = None, retry: RetryPolicy | None = None,
                   fsync: bool = False, record: tuple[Storage, str] | None = None,
                   dry_run: DryRun | None = None, max_delete: int | None = None,
                   guard: Guard | None = None) -> SyncResult:
    """Make ``local`` hold the objects under ``prefix`` (see ``download_tree``)."""
    root = local_root(local)
    excludes = Excludes.coerce(exclude)
    top = checked_key(prefix.strip("/")) if prefix.strip("/") else ""

    unsafe: list[str] = []

    def accept(key: str) -> bool:
        # every key is checked as it is listed: a hostile key (``..``, absolute) is left
        # out before a single byte is written, named, and the rest is fetched
        if not _wanted(key, top, excludes):
            return False
        try:
            return bool(checked_key(key))
        except UnsafePathError:
            unsafe.append(key)
            return False

    run = _Download(remote, LocalTree(root), fsync, jobs=jobs, progress=progress, retry=retry,
                    dry_run=dry_run, max_delete=max_delete, guard=guard)
    with tempfile.TemporaryDirectory(prefix="tpi-sync-") as scratch:
        old, listing = await manifest_and_listing(manifest, remote, prefix, run.retry,
                                                  Path(scratch), accept)
        with listing:
            if delete and not listing:
                await anyio.to_thread.run_sync(_refuse_empty_mirror, remote, top, root,
                                               walk(root, excludes, top))
            if dry_run is None:
                await anyio.to_thread.run_sync(lambda: root.mkdir(parents=True, exist_ok=True))
            written = guard.entries() if guard is not None and not guard.overwrite else None
            try:
                await run.run(plan_download(listing, old and old.entries(),
                                            stat_local=run.tree.stat, hash_file=run.tree.md5,
                                            written=written))
            finally:
                if guard is not None and dry_run is None:
                    # what was fetched is recorded even when the rest failed
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(
                            guard.save, _baseline(listing, run.tree, guard.entries(), run.held))
            if delete:  # (a walk of a directory a dry run did not make finds nothing)
                await run.delete_local(walk(root, excludes, top), listing)
            if record is not None and dry_run is None:
                await _record(record, listing, run, old, Path(scratch))
    run.result.skipped.extend(f"{key}: not a safe local path (.., absolute or backslashed), "
                              "not fetched" for key in sorted(set(unsafe)))
    return run.result


async def _record(record: tuple[Storage, str], listing: Listing, run: _Download,
                  old: OldManifest | None, scratch: Path) -> None:
    """Write an upload manifest of every listed object as it now is on disk."""
    path = scratch / "recorded-manifest"
    known = old.entries() if old is not None else iter(())
    await anyio.to_thread.run_sync(mf.write, path, _restored_entries(listing, run.tree, known))
    storage, key = record
    await retrying(run.retry, lambda moved: storage.upload(key, path, moved))


def _restored_entries(listing: Listing, tree: LocalTree,
                      old: Iterator[tuple[str, mf.Entry]]) -> Iterator[tuple[str, mf.Entry]]:
    known = Cursor(old, "the manifest")
    for key, (size, etag, _mtime) in listing:
        local = tree.stat(key)
        entry = known.find(key)
        if local is not None and local[0] == size:
            md5 = mf.md5_etag(etag) or (entry.md5 if entry and entry.size == size else None)
            yield key, mf.Entry(size, local[1], md5)


def _baseline(listing: Listing, tree: LocalTree, old: Iterator[tuple[str, mf.Entry]],
              held: set[str]) -> Iterator[tuple[str, mf.Entry]]:
    """The guard's next baseline: the old one, with each listed file that is now the task's
    copy on disk (fetched, or found equal) as it is now; the files kept as the user's keep
    their old entry, so the next download still sees them changed."""
    known = Cursor(old, "the local manifest")
    for key, (size, etag, _mtime) in listing:
        yield from known.until(key)
        entry = known.take(key)
        local = None if key in held else tree.stat(key)
        if local is not None and local[0] == size:
            yield key, mf.Entry(size, local[1], mf.md5_etag(etag))
        elif entry is not None:
            yield key, entry
    yield from known.until(None)


def _refuse_empty_mirror(remote: Storage, top: str, root: Path, files: Iterator) -> None:
    """Mirroring nothing would delete every local file: far more often a mistyped URL than a
    wish (rclone refuses a source directory that does not exist, for the same reason)."""
    if any(isinstance(item, LocalFile) for item in files):
        where = f"{remote.url.rstrip('/')}/{top}" if top else remote.url
        raise UsageError(f"{where}: nothing there to mirror; deleting would empty {root}. "
                         "Check the URL, or delete the files yourself")


def _wanted(key: str, top: str, excludes: Excludes) -> bool:
    if key.endswith("/"):
        return False  # a "folder" marker (S3 consoles make them): no file to write
    under = not top or key == top or key.startswith(top + "/")
    return under and not excludes.excluded(key)


class LocalTree:
    """The destination directory: paths for keys, never through a symlinked directory."""

    def __init__(self, root: Path):
        self.root = root
        self._dirs: set[str] = set()  # parent directories already checked (or made)

    def stat(self, key: str) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of the regular file at ``key``, or None."""
        parent = self.parent(key, create=False)
        if parent is None:
            return None
        try:
            st = os.lstat(parent / key.rsplit("/", 1)[-1])
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None

    def has_beside(self, key: str, size: int, md5: str, but: str) -> bool:
        """Whether a copy of ``size`` bytes and ``md5`` already sits beside ``key`` (a file
        ``NAME.tpi-*`` other than ``but``), put there by an earlier download."""
        parent = self.parent(key, create=False)
        if parent is None:
            return False
        mark = f"{cut_name(key.rsplit('/', 1)[-1])}{BESIDE_MARK}"
        try:
            with os.scandir(parent) as entries:
                for entry in entries:
                    if (entry.name.startswith(mark) and entry.name != but
                            and entry.is_file(follow_symlinks=False)
                            and entry.stat().st_size == size
                            and mf.md5_file(entry.path) == md5):
                        return True
        except OSError:
            return False
        return False

    def md5(self, key: str) -> str | None:
        """Hex md5 of the local file at ``key``; None when it cannot be read."""
        try:
            return mf.md5_file(self.root / key)
        except OSError:
            return None

    def known_target(self, key: str) -> Path | None:
        """The path for ``key`` when its parents were checked already (no system call)."""
        parent = key.rpartition("/")[0]
        if parent and parent not in self._dirs:
            return None
        return self.root / key

    def target(self, key: str) -> Path:
        """The path to write ``key`` to, its parent directories made."""
        parent = self.parent(key, create=True)
        assert parent is not None
        return parent / key.rsplit("/", 1)[-1]

    def parent(self, key: str, *, create: bool) -> Path | None:
        """The directory holding ``key``; None when missing and ``create`` is false.

        Raises UnsafePathError for a symlink on the way, NotADirectoryError for a file.
        """
        path, done = self.root, ""
        for part in checked_key(key).split("/")[:-1]:
            path, done = path / part, f"{done}/{part}" if done else part
            if done not in self._dirs and not self._check_dir(key, path, done, create):
                return None
        return path

    def _check_dir(self, key: str, path: Path, done: str, create: bool) -> bool:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(mode):
            raise UnsafePathError(
                f"refusing to write {key!r}: {done!r} is a symlink inside the destination")
        if not stat.S_ISDIR(mode):
            if create:
                raise NotADirectoryError(f"{done!r} is a file")
            return False
        self._dirs.add(done)
        return True


class _Download(SyncRun):
    def __init__(self, remote: Storage, tree: LocalTree, fsync: bool,
                 guard: Guard | None = None, **kwargs):
        super().__init__(**kwargs)
        self.remote, self.tree, self.fsync, self.guard = remote, tree, fsync, guard
        self.mismatches: dict[str, tuple[int, str | None]] = {}
        self.held: set[str] = set()
        """Keys whose local file was kept as the user's (few: they are conflicts)."""

    def _handle(self, action: Action) -> bool:
        if isinstance(action, Keep):
            self.held.add(action.key)
        return super()._handle(action)

    async def transfer(self, action: Action) -> None:
        assert isinstance(action, Fetch)
        if action.beside:
            await self._beside(action)
            return
        try:
            target = self.tree.known_target(action.key)
            if target is None:
                target = await anyio.to_thread.run_sync(self.tree.target, action.key)
            size = await retrying(self.retry, lambda moved: self._fetch(action, target, moved),
                                  self.advance)
        except IN_THE_WAY:
            self.skip(action.key, "a local file or directory is in the way")
            return
        except ObjectNotFound:
            self.skip(action.key, "vanished from the storage before it could be fetched")
            return
        self.done(size)

    async def _beside(self, action: Fetch) -> None:
        """The local file is the user's: the task's copy lands beside it, once (a copy
        already beside it with the same bytes, from an earlier pull, is enough)."""
        assert self.guard is not None
        self.held.add(action.key)
        if action.md5 is not None and (action.md5 == action.ours or await anyio.to_thread.run_sync(
                self.tree.has_beside, action.key, action.size, action.md5, "")):
            self._known(action.key)
            return
        side = await anyio.to_thread.run_sync(self._free_side, action.key)
        try:
            target = await anyio.to_thread.run_sync(self.tree.target, side)
            size = await retrying(self.retry, lambda moved: self._fetch(action, target, moved),
                                  self.advance)
            if action.md5 is None:  # a storage with no md5 in its listing: known only now
                md5 = await anyio.to_thread.run_sync(mf.md5_file, target)
                if md5 == action.ours or await anyio.to_thread.run_sync(
                        self.tree.has_beside, action.key, size, md5, target.name):
                    await anyio.to_thread.run_sync(os.unlink, target)
                    self._known(action.key)
                    return
        except IN_THE_WAY:
            self.skip(action.key, "changed here, and a file or directory is in the way of "
                                  f"the task's copy {side}")
            return
        except ObjectNotFound:
            self.skip(action.key, "vanished from the storage before it could be fetched")
            return
        self.result.kept.append((action.key, side))
        self.done(size)

    def _free_side(self, key: str) -> str:
        assert self.guard is not None
        n = 1
        while os.path.lexists(self.tree.root / (side := self.guard.beside(key, n))):
            n += 1
        return side

    def _known(self, key: str) -> None:
        """The task's copy of a kept file is no news: what tpi wrote, or already beside."""
        self.result.kept.append((key, ""))

    async def _fetch(self, action: Fetch, target: Path, moved) -> int:
        temp = target.with_name(f".{cut_name(target.name)}{PART_MARK}{_TEMP_ID}-{next(_TEMPS)}")
        try:
            await self.remote.download(action.key, temp, moved)
            verified = self.remote.VERIFIES_MD5
            if action.size <= INLINE_PLACE and not self.fsync:
                # no hash to compute and a few system calls: cheaper than a thread hop
                if verified or action.md5 is None:
                    return _place(temp, target, action, False, self.mismatches, verified)
            return await anyio.to_thread.run_sync(_place, temp, target, action, self.fsync,
                                                  self.mismatches, verified)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    async def delete_local(self, files: Iterator, listing: Listing) -> None:
        """Remove local files under the prefix that the listing does not have: counted
        first (on disk beyond a run), so that over ``max_delete`` none is."""
        with spill.keys() as doomed:
            await anyio.to_thread.run_sync(
                doomed.extend, (delete.key for delete in plan_local_deletions(files, listing)))
            if not self.to_delete(doomed):
                return
            keys = iter(doomed)
            while batch := await anyio.to_thread.run_sync(_next_batch, keys):
                await anyio.to_thread.run_sync(_delete_keys, self.tree.root, batch)
                self.result.deleted += len(batch)


def _place(temp: Path, target: Path, action: Fetch, fsync: bool,
           mismatches: dict[str, tuple[int, str | None]], verified: bool = False) -> int:
    size = _verify(temp, action, mismatches, verified)
    if fsync:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(temp, target)
    if action.mtime is not None:
        ns = round(action.mtime * 1e9)
        os.utime(target, ns=(ns, ns))
    return size


def _verify(temp: Path, action: Fetch, mismatches: dict[str, tuple[int, str | None]],
            verified: bool = False) -> int:
    """The size of a downloaded file that matches the listing. ``verified``: the storage
    checked the bytes against the object's md5 already, so only the size is checked here
    (the file is not read a second time)."""
    if action.md5 is None or verified:
        md5 = action.md5
    else:
        md5 = mf.md5_file(temp)
    got = (os.stat(temp).st_size, md5)
    if got == (action.size, action.md5):
        return got[0]
    if mismatches.get(action.key) == got:
        # the same bytes twice: the object changed after the listing (or its etag is not an
        # md5, as with S3 KMS encryption), while damage in transit would not repeat itself
        return got[0]
    mismatches[action.key] = got
    raise IntegrityError(f"{action.key}: downloaded bytes do not match the listing "
                         f"(size {got[0]}, expected {action.size})")


def _next_batch(keys: Iterator[str], limit: int = 500) -> list[str]:
    return list(itertools.islice(keys, limit))


def _delete_keys(root: Path, keys: list[str]) -> None:
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / key)

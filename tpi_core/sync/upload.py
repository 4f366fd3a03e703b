"""Upload a local tree to a storage: one listing, the manifest, then changed files only."""

from __future__ import annotations

import contextlib
import filecmp
import heapq
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from tpi_core.errors import ObjectNotFound, StorageError
from tpi_core.storage import Storage
from tpi_core.sync import DEFAULT_JOBS, spill
from tpi_core.sync import manifest as mf
from tpi_core.sync.excludes import Excludes
from tpi_core.sync.execute import SyncRun, alongside
from tpi_core.sync.listing import Listing, every_page, list_remote
from tpi_core.sync.plan import Action, Send, Unchanged, plan_upload
from tpi_core.sync.result import DryRun, SyncProgress, SyncResult
from tpi_core.sync.retry import RetryPolicy, retrying
from tpi_core.sync.spill import Cursor
from tpi_core.sync.walk import LocalFile, walk

SMALL_FILE = 1 << 20
"""Files up to this size are hashed by the planning thread; bigger ones while they upload."""
DELETE_BATCH = 1000
MANIFEST_SAVE_SECONDS = 15


async def upload(local: str | Path, remote: Storage, *, exclude: Excludes | Sequence[str] = (),
                 delete: bool = False, manifest: tuple[Storage, str] | None = None,
                 jobs: int = DEFAULT_JOBS, progress: SyncProgress | None = None,
                 retry: RetryPolicy | None = None, dry_run: DryRun | None = None,
                 max_delete: int | None = None, baseline: Path | None = None) -> SyncResult:
    """Make ``remote`` hold the files under ``local`` (see ``upload_tree``).

    ``baseline``: a local file the new manifest is copied to (with ``manifest``): the
    tree as uploaded, what a guarded download compares local files with (``guard.py``)."""
    root = local_root(local, must_exist=True)
    excludes = Excludes.coerce(exclude)
    # the manifest is no file of the tree: never delete it
    own = manifest[1] if manifest is not None and manifest[0].url == remote.url else None
    with tempfile.TemporaryDirectory(prefix="tpi-sync-") as scratch:
        run = _Upload(remote, manifest, Path(scratch), jobs=jobs, progress=progress, retry=retry,
                      dry_run=dry_run, max_delete=max_delete)
        old, listing = await manifest_and_listing(manifest, remote, "", run.retry, Path(scratch),
                                                  lambda key: key != own)
        with listing, run.deletions, run.changes, run.dropped:
            plan = plan_upload(walk(root, excludes), listing, old and old.entries(),
                               excludes=excludes, delete=delete,
                               hash_file=lambda f: _md5_or_none(f.path))
            try:
                prehash = manifest is not None and not remote.UPLOAD_MD5 and dry_run is None
                await run.run(_hash_small(plan) if prehash else plan)
                await run.delete_remote()
            except BaseException:
                await run.save_manifest(old, complete=False)
                raise
            await run.save_manifest(old, complete=True)
            if baseline is not None and manifest is not None and dry_run is None:
                written = Path(scratch) / "manifest"
                source = written if written.exists() else old and old.path
                await anyio.to_thread.run_sync(_copy_baseline, source, baseline)
    return run.result


def _copy_baseline(source: Path | None, baseline: Path) -> None:
    baseline.parent.mkdir(parents=True, exist_ok=True)
    temp = baseline.with_name(f".{baseline.name}.{os.getpid()}")
    if source is None:
        mf.write(temp, ())
    else:
        shutil.copyfile(source, temp)
    os.replace(temp, baseline)


def _encode_entry(entry: mf.Entry) -> list:
    return [entry.size, entry.mtime_ns, entry.md5]


def _decode_entry(data: list) -> mf.Entry:
    return mf.Entry(*data)


class _Upload(SyncRun):
    def __init__(self, remote: Storage, manifest: tuple[Storage, str] | None, scratch: Path,
                 **kwargs):
        super().__init__(**kwargs)
        self.remote, self.manifest, self.scratch = remote, manifest, scratch
        # the next manifest is the old one, less what was dropped, plus what changed: an
        # unchanged tree of any size writes none and holds none of it
        self.changes = spill.pairs(_encode_entry, _decode_entry)
        """New entries (sent files, files hashed again), in the order transfers end."""
        self.dropped = spill.keys()
        """Keys of the old manifest that no file kept."""

    def keep(self, action: Unchanged) -> None:
        if action.entry is not None and not action.recorded:
            self.changes.add((action.key, action.entry))

    def forget(self, key: str) -> None:
        self.dropped.add(key)

    async def transfer(self, action: Action) -> None:
        assert isinstance(action, Send)
        file, md5 = action.file, action.md5
        try:
            if self.manifest is not None and md5 is None and not self.remote.UPLOAD_MD5:
                md5 = await alongside(self._send(file), lambda: _md5_or_none(file.path))
            else:
                returned = await self._send(file)
                md5 = md5 or returned
        except FileNotFoundError:
            self.skip(file.key, "vanished before it could be sent")
            self.dropped.add(file.key)
            return
        self.changes.add((file.key, mf.Entry(file.size, file.mtime_ns, md5)))
        self.done(file.size)

    async def _send(self, file: LocalFile) -> str | None:
        path = Path(file.path)
        return await retrying(self.retry, lambda moved: self.remote.upload(file.key, path, moved),
                       self.advance)

    async def delete_remote(self) -> None:
        """Delete what the plan marked, in batches, after every upload (rclone's default)."""
        if not self.to_delete(self.deletions):
            return
        batch: list[str] = []
        for key in self.deletions:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                await self._delete(batch)
                batch = []
        if batch:
            await self._delete(batch)

    async def _delete(self, batch: list[str]) -> None:
        await retrying(self.retry, lambda _moved: self.remote.delete(batch))
        self.result.deleted += len(batch)

    async def save_manifest(self, old: OldManifest | None, *, complete: bool) -> None:
        """Write the manifest if it changed; after a failure keep the old entries too."""
        if self.manifest is None or self.dry_run is not None or (
                not self.changes and (old is None or old.path is None)):
            return
        if complete:
            await self._write_manifest(old, complete)
            return
        # shielded: a failed or cancelled sync still records what it sent, so the next resumes
        with anyio.move_on_after(MANIFEST_SAVE_SECONDS, shield=True):
            with contextlib.suppress(Exception):
                await self._write_manifest(old, complete)

    async def _write_manifest(self, old: OldManifest | None, complete: bool) -> None:
        assert self.manifest is not None
        storage, key = self.manifest
        path = self.scratch / "manifest"

        def write() -> bool:
            kept = old.entries() if old is not None else iter(())
            if complete:
                if not self.changes and not self.dropped and old is not None and old.current:
                    return False
                kept = _without(kept, self.dropped)
            mf.write(path, _unique(_newer_first(iter(self.changes), kept)))
            return old is None or old.path is None or not filecmp.cmp(path, old.path, False)

        if await anyio.to_thread.run_sync(write):
            await retrying(self.retry, lambda moved: storage.upload(key, path, moved))


def _newer_first(new: Iterator[tuple[str, mf.Entry]],
                 old: Iterator[tuple[str, mf.Entry]]) -> Iterator[tuple[str, mf.Entry]]:
    """Both streams in one, sorted; for a key in both, the new entry comes first."""
    tagged = heapq.merge(((key, 0, e) for key, e in new), ((key, 1, e) for key, e in old))
    return ((key, entry) for key, _tag, entry in tagged)


def _without(entries: Iterator[tuple[str, mf.Entry]],
             keys: Iterable[str]) -> Iterator[tuple[str, mf.Entry]]:
    """Sorted entries but those of the sorted ``keys``."""
    gone = Cursor(((key, True) for key in keys), "the dropped keys")
    return ((key, entry) for key, entry in entries if gone.find(key) is None)


def _unique(entries: Iterator[tuple[str, mf.Entry]]) -> Iterator[tuple[str, mf.Entry]]:
    """Sorted entries, the first of each key only."""
    last = None
    for key, entry in entries:
        if key != last:
            last = key
            yield key, entry


def _hash_small(plan: Iterator[Action]) -> Iterator[Action]:
    for action in plan:
        if isinstance(action, Send) and action.md5 is None and action.file.size <= SMALL_FILE:
            action = Send(action.file, _md5_or_none(action.file.path))
        yield action


def _md5_or_none(path: str) -> str | None:
    try:
        return mf.md5_file(path)
    except OSError:
        return None


def local_root(local: str | Path, *, must_exist: bool = False) -> Path:
    """The resolved directory a sync reads from or writes to."""
    root = Path(local).expanduser().resolve()
    if must_exist and not root.exists():
        raise StorageError(f"{local}: no such directory")
    if root.exists() and not root.is_dir():
        raise StorageError(f"{local}: not a directory")
    return root


class OldManifest:
    """The manifest as the last sync left it, downloaded to a local file (None: there is none
    yet), read as a stream of sorted entries as often as needed."""

    def __init__(self, path: Path | None):
        self.path = path

    def entries(self) -> Iterator[tuple[str, mf.Entry]]:
        """Its entries, sorted by key."""
        return mf.read(self.path) if self.path is not None else iter(())

    @property
    def current(self) -> bool:
        """True when it is in this version's format (else it is rewritten)."""
        if self.path is None:
            return False
        with open(self.path, "rb") as handle:
            return handle.read(len(mf.HEADER)) == mf.HEADER


async def load_manifest(manifest: tuple[Storage, str], retry: RetryPolicy,
                        scratch: Path) -> OldManifest:
    """The manifest kept in storage, downloaded into ``scratch``."""
    storage, key = manifest
    path = scratch / "old-manifest"
    try:
        await retrying(retry, lambda moved: storage.download(key, path, moved))
    except ObjectNotFound:
        return OldManifest(None)
    return OldManifest(path)


async def manifest_and_listing(manifest: tuple[Storage, str] | None, storage: Storage,
                               prefix: str, retry: RetryPolicy, scratch: Path,
                               accept: Callable[[str], bool] = lambda key: True,
                               ) -> tuple[OldManifest | None, Listing]:
    """The manifest (None when none is kept) and the listing, fetched at the same time;
    when both fail (a missing bucket), the listing's error is the one raised."""
    found: dict[str, Any] = {}
    failed: dict[str, Exception] = {}

    loaded = anyio.Event()

    async def fetch(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            found[name] = await call()
        except Exception as exc:
            failed[name] = exc
        finally:
            if name == "manifest":
                loaded.set()

    async def bounds() -> list[str]:
        """Every page-th key of the old manifest: the last sync's keys split the listing."""
        await loaded.wait()
        old = found.get("manifest")
        if old is None or old.path is None:
            return []
        return await anyio.to_thread.run_sync(
            lambda: every_page((key for key, _entry in old.entries()), prefix))

    async with anyio.create_task_group() as group:
        if manifest is not None:
            group.start_soon(fetch, "manifest", partial(load_manifest, manifest, retry, scratch))
        group.start_soon(fetch, "listing", partial(list_remote, storage, prefix, retry, accept,
                                                   bounds if manifest is not None else None))
    if failed:
        if "listing" in found:
            found["listing"].close()
        raise failed.get("listing") or failed["manifest"]
    return found.get("manifest"), found["listing"]

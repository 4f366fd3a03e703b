"""Upload a local tree to a storage: one listing, the manifest, then changed files only."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from tpi_core.sync import DEFAULT_JOBS
from tpi_core.errors import ObjectNotFound, StorageError
from tpi_core.storage import Storage
from tpi_core.sync import manifest as mf
from tpi_core.sync.excludes import Excludes
from tpi_core.sync.execute import SyncRun, alongside
from tpi_core.sync.plan import Action, RemoteObject, Send, Unchanged, plan_upload
from tpi_core.sync.result import SyncProgress, SyncResult
from tpi_core.sync.retry import RetryPolicy, retrying
from tpi_core.sync.walk import LocalFile, walk

SMALL_FILE = 1 << 20
"""Files up to this size are hashed by the planning thread; bigger ones while they upload."""
DELETE_BATCH = 1000
MANIFEST_SAVE_SECONDS = 15


async def upload(local: str | Path, remote: Storage, *, exclude: Excludes | Sequence[str] = (),
                 delete: bool = False, manifest: tuple[Storage, str] | None = None,
                 jobs: int = DEFAULT_JOBS, progress: SyncProgress | None = None,
                 retry: RetryPolicy | None = None) -> SyncResult:
    """Make ``remote`` hold the files under ``local`` (see ``upload_tree``)."""
    root = local_root(local, must_exist=True)
    excludes = Excludes.coerce(exclude)
    run = _Upload(remote, manifest, jobs=jobs, progress=progress, retry=retry)
    old, listing = await manifest_and_listing(manifest, remote, "", run.retry)
    if manifest is not None and manifest[0].url == remote.url:
        listing.pop(manifest[1], None)  # the manifest is no file of the tree: never delete it
    plan = plan_upload(walk(root, excludes), listing, old, excludes=excludes, delete=delete,
                       hash_file=lambda f: _md5_or_none(f.path))
    try:
        prehash = manifest is not None and not remote.UPLOAD_MD5
        await run.run(_hash_small(plan) if prehash else plan)
        await run.delete_remote()
    except BaseException:
        await run.save_manifest(old, complete=False)
        raise
    await run.save_manifest(old, complete=True)
    return run.result


class _Upload(SyncRun):
    def __init__(self, remote: Storage, manifest: tuple[Storage, str] | None, **kwargs):
        super().__init__(**kwargs)
        self.remote, self.manifest = remote, manifest
        self.entries: mf.Manifest = {}

    def keep(self, action: Unchanged) -> None:
        if action.entry is not None:
            self.entries[action.key] = action.entry

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
            return
        self.entries[file.key] = mf.Entry(file.size, file.mtime_ns, md5)
        self.done(file.size)

    async def _send(self, file: LocalFile) -> str | None:
        path = Path(file.path)
        return await retrying(self.retry, lambda moved: self.remote.upload(file.key, path, moved),
                       self.advance)

    async def delete_remote(self) -> None:
        """Delete what the plan marked, in batches, after every upload (rclone's default)."""
        for start in range(0, len(self.deletions), DELETE_BATCH):
            batch = self.deletions[start:start + DELETE_BATCH]
            await retrying(self.retry, lambda _moved: self.remote.delete(batch))
            self.result.deleted += len(batch)

    async def save_manifest(self, old: mf.Manifest | None, *, complete: bool) -> None:
        """Write the manifest if it changed; after a failure keep the old entries too."""
        if self.manifest is None:
            return
        entries = self.entries if complete else {**(old or {}), **self.entries}
        if entries == old:
            return
        if complete:
            await self._write_manifest(entries)
            return
        # shielded: a failed or cancelled sync still records what it sent, so the next resumes
        with anyio.move_on_after(MANIFEST_SAVE_SECONDS, shield=True):
            with contextlib.suppress(Exception):
                await self._write_manifest(entries)

    async def _write_manifest(self, entries: mf.Manifest) -> None:
        assert self.manifest is not None
        storage, key = self.manifest
        data = mf.dump(entries)
        await retrying(self.retry, lambda _moved: storage.write(key, data))


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


async def load_manifest(manifest: tuple[Storage, str], retry: RetryPolicy) -> mf.Manifest:
    """The entries of a manifest kept in storage; none when it does not exist yet."""
    storage, key = manifest
    try:
        return mf.parse(await retrying(retry, lambda _moved: storage.read(key)))
    except ObjectNotFound:
        return {}


async def list_remote(storage: Storage, prefix: str, retry: RetryPolicy,
                      accept: Callable[[str], bool] = lambda key: True,
                      ) -> dict[str, RemoteObject]:
    """One listing under ``prefix`` (retried whole): key -> (size, etag, mtime)."""
    async def attempt(_moved: object) -> dict[str, RemoteObject]:
        return {info.key: (info.size, info.etag, info.mtime)
                async for info in storage.list(prefix) if accept(info.key)}

    return await retrying(retry, attempt)


async def manifest_and_listing(manifest: tuple[Storage, str] | None, storage: Storage,
                               prefix: str, retry: RetryPolicy,
                               accept: Callable[[str], bool] = lambda key: True,
                               ) -> tuple[mf.Manifest | None, dict[str, RemoteObject]]:
    """The manifest (None when none is kept) and the listing, fetched at the same time;
    when both fail (a missing bucket), the listing's error is the one raised."""
    found: dict[str, Any] = {}
    failed: dict[str, Exception] = {}

    async def fetch(name: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            found[name] = await call()
        except Exception as exc:
            failed[name] = exc

    async with anyio.create_task_group() as group:
        if manifest is not None:
            group.start_soon(fetch, "manifest", partial(load_manifest, manifest, retry))
        group.start_soon(fetch, "listing", partial(list_remote, storage, prefix, retry, accept))
    if failed:
        raise failed.get("listing") or failed["manifest"]
    return found.get("manifest"), found["listing"]

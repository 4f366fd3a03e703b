"""Sync between a local tree and a storage: the public API of the sync engine.

The engine and the agent call these two functions; the work is done by
:mod:`tpi_core.sync` (a pure planner, then a concurrent executor).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tpi_core.storage import Storage
from tpi_core.sync import DEFAULT_JOBS
from tpi_core.sync.excludes import ALWAYS_EXCLUDED, Excludes
from tpi_core.sync.guard import Guard
from tpi_core.sync.result import DryRun, SyncProgress, SyncResult
from tpi_core.sync.retry import RetryPolicy

__all__ = ["ALWAYS_EXCLUDED", "DryRun", "Excludes", "Guard", "RetryPolicy", "SyncProgress",
           "SyncResult", "download_tree", "upload_tree"]


async def upload_tree(local: Path, remote: Storage, *, exclude: Sequence[str] = (),
                      delete: bool = False, manifest: tuple[Storage, str] | None = None,
                      jobs: int = DEFAULT_JOBS, progress: SyncProgress | None = None,
                      retry: RetryPolicy | None = None, dry_run: DryRun | None = None,
                      max_delete: int | None = None, baseline: Path | None = None,
                      ) -> SyncResult:
    """Make ``remote`` hold the files under ``local``, sending changed files only.

    One listing of ``remote`` is compared with the local tree. ``manifest=(storage, key)``
    names where the manifest (key -> size, mtime_ns, md5) is kept: with it an unchanged tree
    is recognised without reading a file and nothing is written; without it an equal size
    (and an equal md5 etag when the storage reports one) counts as unchanged. ``exclude``
    is TPI's ``storage.exclude`` (or an :class:`Excludes`); ``.tpi/`` is always excluded.
    ``delete=True`` mirrors (deletes remote objects no local file has, excluded ones kept;
    nothing is deleted when part of the tree could not be read).
    Symlinks that leave ``local`` are not followed but reported in ``result.skipped``.
    Transfers run ``jobs`` at a time and are retried by ``retry`` on transient errors.
    ``dry_run``: a callable told each upload and deletion instead of their being made
    (the result counts them; no manifest is written). ``max_delete``: with more deletions
    due than this, none is made and UsageError is raised (after the uploads).
    ``baseline``: with ``manifest``, a local file that gets a copy of the new manifest, the
    tree as uploaded: the :class:`Guard` of a later ``download_tree`` compares with it.
    """
    from tpi_core.sync.upload import upload

    return await upload(local, remote, exclude=exclude, delete=delete, manifest=manifest,
                        jobs=jobs, progress=progress, retry=retry, dry_run=dry_run,
                        max_delete=max_delete, baseline=baseline)


async def download_tree(remote: Storage, local: Path, *, prefix: str = "",
                        exclude: Sequence[str] = (), delete: bool = False,
                        manifest: tuple[Storage, str] | None = None,
                        jobs: int = DEFAULT_JOBS, progress: SyncProgress | None = None,
                        retry: RetryPolicy | None = None, fsync: bool = False,
                        record: tuple[Storage, str] | None = None,
                        dry_run: DryRun | None = None,
                        max_delete: int | None = None, guard: Guard | None = None,
                        ) -> SyncResult:
    """Make ``local`` hold the objects of ``remote`` under ``prefix``, fetching changed ones.

    A key ``k`` lands at ``local/k`` (the prefix is kept); ``prefix`` names a directory or a
    single object. A local file is kept when its size and md5 match the object (the etag,
    else the ``manifest`` entry) or, with no checksum, its size and mtime match (each
    download sets the file's mtime to the object's). Files are written atomically and
    checked against the storage's md5 when known (``fsync=True`` also flushes them). Keys
    that would leave ``local`` (``..``, absolute, backslashes, a symlinked directory on the
    way) raise UnsafePathError. ``delete=True`` removes local files under ``prefix`` that
    the storage does not have; ``exclude`` and the ``.tpi/`` rule apply both ways.
    ``record=(storage, key)`` writes an upload manifest of the files as restored, so a later
    ``upload_tree`` with that manifest sends only what changed locally after the restore
    (and never overwrites a newer object another writer made meanwhile).
    ``dry_run``: a callable told each fetch and deletion instead of their being made
    (nothing is written, not even ``local`` itself). ``max_delete`` limits deletions as
    for ``upload_tree``. ``guard``: what tpi last wrote locally; a local file changed since
    is never replaced, the object lands beside it (see :class:`Guard`, ``result.kept``).
    """
    from tpi_core.sync.download import download

    return await download(remote, local, prefix=prefix, exclude=exclude, delete=delete,
                          manifest=manifest, jobs=jobs, progress=progress, retry=retry,
                          fsync=fsync, record=record, dry_run=dry_run,
                          max_delete=max_delete, guard=guard)

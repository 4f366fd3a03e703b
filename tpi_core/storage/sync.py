"""Sync between a local tree and a storage (PLACEHOLDER: simple and sequential).

The public functions and their signatures are the contract; the engine and the agent use
them. The implementation here is to be replaced by the planner/executor of the sync issue.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tpi_core.storage import Storage

ALWAYS_EXCLUDED = (".tpi/",)


@dataclass
class SyncResult:
    """What a sync did."""

    sent: int = 0
    bytes_sent: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[str] = field(default_factory=list)


ProgressFactory = Callable[[int, int], Callable[[int], None]] | None


async def upload_tree(local: Path, remote: Storage, *, exclude: Sequence[str] = (),
                      delete: bool = False, manifest: tuple[Storage, str] | None = None,
                      jobs: int = 16, progress: object | None = None) -> SyncResult:
    """Make ``remote`` hold the files under ``local`` (changed ones only)."""
    result = SyncResult()
    for path in sorted(Path(local).rglob("*")):
        if path.is_file() and not path.is_symlink():
            key = path.relative_to(local).as_posix()
            if key.startswith(".tpi/"):
                continue
            await remote.upload(key, path)
            result.sent += 1
            result.bytes_sent += path.stat().st_size
    return result


async def download_tree(remote: Storage, local: Path, *, prefix: str = "",
                        exclude: Sequence[str] = (), delete: bool = False,
                        manifest: tuple[Storage, str] | None = None,
                        jobs: int = 16, progress: object | None = None) -> SyncResult:
    """Make ``local`` hold the objects of ``remote`` under ``prefix`` (changed ones only)."""
    result = SyncResult()
    async for info in remote.list(prefix):
        target = Path(local) / info.key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tpi-part")
        await remote.download(info.key, tmp)
        os.replace(tmp, target)
        result.sent += 1
        result.bytes_sent += info.size
    return result

"""Storage in a local directory: the local backend's "bucket", and a test double for clouds.

Writes are atomic (a temporary file in the same directory, then a rename), so a reader
never sees half an object, as with a real object store. Uploads hash what they copy
(``UPLOAD_MD5``), so a sync keeping a manifest reads each file once.

Small files are copied on the event loop: a few system calls cost less than the hop to a
worker thread, and dozens of threads that each make a few system calls spend their time
handing the GIL to one another, most of their time in futex calls (see
benchmarks/README.md, "Measurements behind the code"). Larger files go to at most
``THREADS`` worker threads per storage.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

import anyio

from tpi_core.errors import ObjectNotFound, UnsafePathError
from tpi_core.storage import ObjectInfo, Progress, Storage, cut_name

_CHUNK = 1 << 20
INLINE_IO = 64 << 10
"""Files up to this size are copied on the event loop."""
THREADS = 4
"""Worker threads one storage copies larger files on at a time."""
_TMP_MARK = ".tpi-tmp-"
_TEMP_IDS = itertools.count()


def checked_key(key: str) -> str:
    """Refuse keys that could leave the root: absolute, ``..``, empty or backslashed parts."""
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"unsafe storage key {key!r}")
    return key


class LocalStorage(Storage):
    """A directory holding one file per key."""

    SCHEME = "file"
    UPLOAD_MD5 = True

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        self._limiter: anyio.CapacityLimiter | None = None

    async def _copying(self, size: int, copy: Callable[..., str], *args: object) -> str:
        """Run a copy on the event loop when small, else on one of THREADS worker threads."""
        if size <= INLINE_IO:
            return copy(*args)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(THREADS)
        return await anyio.to_thread.run_sync(copy, *args, limiter=self._limiter)

    @classmethod
    def from_url(cls, url: str, **options: str) -> LocalStorage:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise UnsafePathError(f"not a file:// URL: {url!r}")
        return cls(Path(unquote(parsed.path)))

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self.root / checked_key(prefix.strip("/")))

    def _path(self, key: str) -> Path:
        return self.root / checked_key(key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / top if top else self.root
        pending = [start]
        while pending:
            entries = await anyio.to_thread.run_sync(_scan, pending.pop())
            for path, is_dir, size, mtime in entries:
                key = path[len(str(self.root)) + 1:].replace(os.sep, "/")
                if is_dir:
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        pending.append(Path(path))
                elif key.startswith(prefix) and _TMP_MARK not in key:
                    yield ObjectInfo(key, size, None, mtime)

    async def read(self, key: str) -> bytes:
        try:
            return await anyio.Path(self._path(key)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    async def write(self, key: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(_atomic_write, self._path(key), data)

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> str:
        target = self._path(key)
        return await self._copying(os.stat(path).st_size, _atomic_copy, Path(path), target,
                                   progress)

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        source = self._path(key)
        try:
            await self._copying(os.stat(source).st_size, _copy, source, Path(path), progress)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not source.is_file():
                raise ObjectNotFound(key) from exc
            raise

    async def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(k) for k in keys]
        await anyio.to_thread.run_sync(_unlink_all, paths, self.root)

    async def delete_prefix(self, prefix: str = "") -> int:
        count = await super().delete_prefix(prefix)
        if not prefix and self.root.exists():
            await anyio.to_thread.run_sync(shutil.rmtree, self.root, True)
        return count


def _scan(directory: Path) -> list[tuple[str, bool, int, float]]:
    try:
        with os.scandir(directory) as it:
            return [_entry(e) for e in it if not e.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _entry(entry: os.DirEntry) -> tuple[str, bool, int, float]:
    if entry.is_dir(follow_symlinks=False):
        return entry.path, True, 0, 0.0
    stat = entry.stat(follow_symlinks=False)
    return entry.path, False, stat.st_size, stat.st_mtime


def _temp_for(path: Path) -> Path:
    # a counter, not id(path): two writers of one key must never share a temporary file
    return path.with_name(f"{_TMP_MARK}{os.getpid()}-{next(_TEMP_IDS)}-{cut_name(path.name)}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_for(path)
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _copy(source: Path, target: Path, progress: Progress | None) -> str:
    """Copy a file, returning the hex md5 of what was copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(usedforsecurity=False)
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        buffer = memoryview(bytearray(min(max(size, 1), _CHUNK) + 1))  # +1: sees the end
        while count := src.readinto(buffer):
            digest.update(buffer[:count])
            dst.write(buffer[:count])
            if progress:
                progress(count)
    return digest.hexdigest()


def _atomic_copy(source: Path, target: Path, progress: Progress | None) -> str:
    temp = _temp_for(target)
    try:
        digest = _copy(source, temp, progress)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return digest


def _unlink_all(paths: list[Path], root: Path) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            continue  # a directory or a path below a file holds no object: nothing to delete
        parent = path.parent
        while parent != root and parent.is_relative_to(root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

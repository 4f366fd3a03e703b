"""LocalStorage passes the storage contract, and keeps keys inside its root."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from tpi_core.errors import UnsafePathError
from tpi_core.registry import open_storage
from tpi_core.storage import local
from tpi_core.storage.local import LocalStorage, checked_key
from tpi_core.testing.contract import StorageContract


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "bucket")



@pytest.mark.parametrize("key", ["../x", "/etc/x", "a/../../x", "a\\b", "a//b", "", "./a", "a/"])
def test_checked_key_refuses_keys_that_could_escape(key: str) -> None:
    with pytest.raises(UnsafePathError):
        checked_key(key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["../x", "/etc/x", "a/../../x"])
async def test_hostile_keys_never_touch_outside(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(UnsafePathError):
        await storage.write(key, b"x")
    assert not (tmp_path / "x").exists()


@pytest.mark.anyio
async def test_list_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    storage = LocalStorage(tmp_path / "root")
    await storage.write("real", b"r")
    (tmp_path / "root" / "link").symlink_to(outside)
    assert [i.key async for i in storage.list()] == ["real"]


@pytest.mark.anyio
async def test_delete_of_a_directory_key_is_a_no_op(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    await storage.write("dir/file", b"x")
    await storage.delete(["dir", "dir/file/below"])
    assert await storage.read("dir/file") == b"x"


@pytest.mark.anyio
async def test_copies_use_few_worker_threads(tmp_path: Path, monkeypatch) -> None:
    """Small files are copied on the event loop, larger ones on at most THREADS threads:
    dozens of threads making a few system calls each spend their time on the GIL."""
    busy, peak, threads = 0, 0, set()
    copy = local._copy

    def counted(*args):
        nonlocal busy, peak
        if threading.current_thread() is threading.main_thread():
            return copy(*args)
        threads.add(threading.get_ident())
        busy += 1
        peak = max(peak, busy)
        try:
            time.sleep(0.002)  # long enough for every free thread to be busy at once
            return copy(*args)
        finally:
            busy -= 1

    monkeypatch.setattr(local, "_copy", counted)
    files = {f"s{i}": os.urandom(100) for i in range(50)}
    files |= {f"l{i}": os.urandom(local.INLINE_IO + 1) for i in range(20)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    storage = LocalStorage(tmp_path / "root")
    async with anyio.create_task_group() as group:
        for name in files:
            group.start_soon(storage.upload, name, tmp_path / name)
    assert {n: await storage.read(n) for n in files} == files
    assert peak <= local.THREADS
    assert 1 < len(threads) <= local.THREADS


@pytest.mark.anyio
async def test_failed_upload_leaves_no_temporary_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(FileNotFoundError):
        await storage.upload("k", tmp_path / "missing")
    await storage.write("other", b"x")
    with pytest.raises(FileNotFoundError):
        await storage.upload("k", tmp_path / "missing")
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["other"]


def test_open_storage_plain_path_is_local(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    assert isinstance(storage, LocalStorage) and storage.root == tmp_path
    assert open_storage(tmp_path.as_uri()).url == storage.url

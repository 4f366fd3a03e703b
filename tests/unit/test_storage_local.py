"""LocalStorage passes the storage contract, and keeps keys inside its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpi_core.errors import UnsafePathError
from tpi_core.storage import open_storage
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

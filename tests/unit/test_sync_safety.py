"""Downloads never write outside the destination; uploads never follow a link out of the tree;
local writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpi_core.errors import StorageError, TransientError, UnsafePathError
from tpi_core.storage.local import LocalStorage
from tpi_core.storage.sync import download_tree, upload_tree
from tpi_core.sync.retry import RetryPolicy
from tpi_core.testing.memory import MemoryStorage

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, base=0.0, cap=0.0)



def everything(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("key", ["../x", "/etc/x", "a/../../x", "a/./b", "a\\..\\x"])
async def test_hostile_keys_are_skipped_named_and_the_rest_fetched(tmp_path: Path,
                                                                   key: str) -> None:
    remote = MemoryStorage()
    await remote.write("good", b"fine")
    await remote.write(key, b"evil")
    (tmp_path / "box").mkdir()
    dst = tmp_path / "box" / "dst"
    result = await download_tree(remote, dst)
    assert everything(tmp_path) == {"box", "box/dst", "box/dst/good"}  # nothing outside
    assert (dst / "good").read_bytes() == b"fine"
    assert result.skipped == [f"{key}: not a safe local path (.., absolute or backslashed), "
                              "not fetched"]


async def test_hostile_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        await download_tree(MemoryStorage(), tmp_path / "dst", prefix="../up")


async def test_symlinked_parent_inside_the_destination_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "linked").symlink_to(outside)
    remote = MemoryStorage()
    await remote.write("linked/file", b"evil")
    with pytest.raises(UnsafePathError, match="'linked/file'.*'linked' is a symlink"):
        await download_tree(remote, dst)
    assert list(outside.iterdir()) == []


async def test_symlinked_grandparent_is_refused_even_when_contents_match(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "f").write_bytes(b"same")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "a").symlink_to(outside)
    remote = MemoryStorage()
    await remote.write("a/deeper/f", b"same")
    with pytest.raises(UnsafePathError):
        await download_tree(remote, dst)


async def test_a_symlink_at_the_target_itself_is_replaced_not_written_through(
        tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"do not touch")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "f").symlink_to(outside)
    remote = MemoryStorage()
    await remote.write("f", b"new")
    await download_tree(remote, dst)
    assert outside.read_bytes() == b"do not touch"
    assert not (dst / "f").is_symlink() and (dst / "f").read_bytes() == b"new"


async def test_upload_skips_and_reports_symlinks_out_of_the_tree(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir" / "key").write_bytes(b"secret")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "real").write_bytes(b"real")
    (src / "out").symlink_to(tmp_path / "secret")
    (src / "sub" / "out-dir").symlink_to(tmp_path / "secret-dir")
    (src / "sub" / "dotdot").symlink_to("../../secret")
    (src / "in").symlink_to("real")
    (src / "in-dir").symlink_to("sub")
    (src / "broken").symlink_to("nowhere")
    remote = MemoryStorage()
    result = await upload_tree(src, remote)
    assert remote.objects == {"real": b"real", "in": b"real"}  # a link inside sends its file
    assert sorted(result.skipped) == [
        "broken: broken symlink",
        "in-dir: symlink to a directory is not followed",
        "out: symlink points outside the tree",
        "sub/dotdot: symlink points outside the tree",
        "sub/out-dir: symlink points outside the tree",
    ]


async def test_a_link_to_an_excluded_file_is_not_a_way_around_the_rule(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ".tpi").mkdir(parents=True)
    (src / ".tpi" / "state.json").write_bytes(b"index")
    (src / "state").symlink_to(".tpi/state.json")
    remote = MemoryStorage()
    result = await upload_tree(src, remote)
    assert remote.objects == {} and result.skipped == ["state: symlink to an excluded file"]


class FailingDownloads(MemoryStorage):
    """Writes half of every object, then fails, as a reset connection would."""

    async def download(self, key, path, progress=None):
        Path(path).write_bytes((await self.read(key))[:3])
        raise TransientError("connection reset")


async def test_failed_download_leaves_no_partial_file_and_keeps_the_old_one(
        tmp_path: Path) -> None:
    remote = FailingDownloads()
    await remote.write("f", b"brand new content")
    await remote.write("sub/g", b"never here")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "f").write_bytes(b"old")
    with pytest.raises(TransientError):
        await download_tree(remote, dst, retry=FAST)
    assert (dst / "f").read_bytes() == b"old"
    assert {p.name for p in dst.rglob("*") if p.is_file()} == {"f"}


class Corrupting(MemoryStorage):
    """Damages a different byte on each of the first ``bad`` downloads, as a bad link would."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.count = bad, 0

    async def download(self, key, path, progress=None):
        data = bytearray(await self.read(key))
        if self.count < self.bad:
            data[self.count % len(data)] ^= 0xFF
        self.count += 1
        Path(path).write_bytes(bytes(data))


async def test_corrupted_download_is_caught_and_fetched_again(tmp_path: Path) -> None:
    remote = Corrupting(bad=2)
    await remote.write("f", b"payload")
    result = await download_tree(remote, tmp_path / "dst", retry=FAST)
    assert (tmp_path / "dst" / "f").read_bytes() == b"payload" and remote.count == 3
    assert result.bytes_sent == 7


async def test_persistent_corruption_fails_and_writes_nothing(tmp_path: Path) -> None:
    remote = Corrupting(bad=100)
    await remote.write("f", b"payload")
    with pytest.raises(StorageError, match="do not match"):
        await download_tree(remote, tmp_path / "dst", retry=FAST)
    assert not (tmp_path / "dst" / "f").exists()


async def test_an_object_replaced_after_the_listing_is_taken_as_it_is_now(
        tmp_path: Path) -> None:
    class Replaced(MemoryStorage):
        async def list(self, prefix=""):
            async for info in super().list(prefix):
                yield info
            await self.write("f", b"a longer, newer version")  # the agent wrote meanwhile

    remote = Replaced()
    await remote.write("f", b"old")
    result = await download_tree(remote, tmp_path / "dst", retry=FAST)
    assert (tmp_path / "dst" / "f").read_bytes() == b"a longer, newer version"
    assert result.sent == 1 and remote.calls["download"] == 2


async def test_local_storage_as_destination_root_is_never_left(tmp_path: Path) -> None:
    bucket = LocalStorage(tmp_path / "bucket")
    await bucket.write("x/y", b"ok")
    await download_tree(bucket.child("x"), tmp_path / "dst")
    assert everything(tmp_path / "dst") == {"y"}
    assert not os.path.exists(tmp_path / "y")


async def test_an_unreadable_directory_stops_mirror_deletions(tmp_path: Path,
                                                             monkeypatch) -> None:
    src = tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "x").write_bytes(b"x")
    remote = MemoryStorage()
    await upload_tree(src, remote)
    scandir = os.scandir

    def refusing(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))  # as for chmod 0
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    result = await upload_tree(src, remote, delete=True)
    assert result.deleted == 0 and remote.objects == {"locked/x": b"x"}
    assert result.skipped == ["locked: directory cannot be read",
                              "*: nothing deleted: part of the tree could not be read"]

"""upload_tree / download_tree end to end on MemoryStorage and LocalStorage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tpi_core.errors import StorageError, UsageError
from tpi_core.storage.local import LocalStorage
from tpi_core.storage.sync import download_tree, upload_tree
from tpi_core.sync.manifest import parse
from tpi_core.testing.memory import MemoryStorage
from tpi_core.testing.progress import Tally

pytestmark = pytest.mark.anyio

MANIFEST = ".tpi/manifest.json"



def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deep/c": b"", "d": b"delta"}


async def test_upload_then_resync_of_an_unchanged_tree_sends_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = MemoryStorage()
    first = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (first.sent, first.bytes_sent) == (4, sum(map(len, FILES.values())))
    assert {k: v for k, v in remote.objects.items() if k != MANIFEST} == FILES
    remote.calls.clear()
    again = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (again.sent, again.unchanged, again.deleted) == (0, 4, 0)
    assert remote.calls == {"list": 1, "download": 1}  # one listing, the manifest, no write


async def test_changing_one_file_sends_exactly_that_file(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = MemoryStorage()
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    (src / "sub/b.bin").write_bytes(b"new content")
    remote.calls.clear()
    result = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (result.sent, result.unchanged, result.bytes_sent) == (1, 3, 11)
    assert remote.calls["upload"] == 2 and "write" not in remote.calls  # the file + manifest
    assert remote.objects["sub/b.bin"] == b"new content"


async def test_touched_but_identical_file_is_hashed_not_sent(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = LocalStorage(tmp_path / "bucket")  # no etag: only the manifest knows the md5
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    stat = (src / "a.txt").stat()
    os.utime(src / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    result = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (result.sent, result.unchanged) == (0, 4)
    # the manifest learned the new mtime: the next sync needs no hashing either
    assert (await upload_tree(src, remote, manifest=(remote, MANIFEST))).unchanged == 4


async def test_same_size_edit_is_detected_through_the_manifest(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"f": b"aaaa"})
    remote = LocalStorage(tmp_path / "bucket")
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    (src / "f").write_bytes(b"bbbb")
    os.utime(src / "f", ns=(1, 1))
    result = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert result.sent == 1 and await remote.read("f") == b"bbbb"


async def test_mirror_deletes_and_copy_only_keeps(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"keep": b"k"})
    remote = MemoryStorage()
    await remote.write("stale", b"s")
    await remote.write("ignored.log", b"i")
    copy = await upload_tree(src, remote, exclude=["- *.log"])
    assert copy.deleted == 0 and set(remote.objects) == {"keep", "stale", "ignored.log"}
    mirror = await upload_tree(src, remote, exclude=["- *.log"], delete=True)
    assert mirror.deleted == 1 and set(remote.objects) == {"keep", "ignored.log"}


async def test_excludes_apply_to_upload_and_download(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"data/x.csv": b"1", "x.csv": b"2", "y.txt": b"3",
                                       ".tpi/state.json": b"local index"})
    remote = MemoryStorage()
    await upload_tree(src, remote, exclude=["*.csv"])
    assert set(remote.objects) == {"data/x.csv", "y.txt"}
    await remote.write("z.csv", b"remote only")
    await remote.write(".tpi/manifest.json", b"{}")
    result = await download_tree(remote, tmp_path / "dst", exclude=["z.csv"])
    assert tree(tmp_path / "dst") == {"data/x.csv": b"1", "y.txt": b"3"}
    assert result.sent == 2


async def test_download_round_trip_and_resync_skips_matching_files(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = MemoryStorage()
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    first = await download_tree(remote, tmp_path / "dst")
    assert tree(tmp_path / "dst") == FILES and first.sent == 4
    remote.calls.clear()
    again = await download_tree(remote, tmp_path / "dst")
    assert (again.sent, again.unchanged) == (0, 4)
    assert remote.calls == {"list": 1}


async def test_download_resync_without_checksums_uses_mtimes(tmp_path: Path) -> None:
    remote = LocalStorage(make_tree(tmp_path / "bucket", FILES))
    await download_tree(remote, tmp_path / "dst")
    again = await download_tree(remote, tmp_path / "dst")
    assert (again.sent, again.unchanged) == (0, 4)
    (tmp_path / "dst/a.txt").write_bytes(b"ALPHA")  # same size, new mtime: fetched again
    third = await download_tree(remote, tmp_path / "dst")
    assert third.sent == 1 and (tmp_path / "dst/a.txt").read_bytes() == b"alpha"


async def test_download_of_a_prefix_keeps_keys_and_deletes_only_under_it(tmp_path: Path) -> None:
    remote = MemoryStorage()
    for key in ("output/r1", "output/sub/r2", "outputs/not-this", "input/i"):
        await remote.write(key, key.encode())
    dst = make_tree(tmp_path / "dst", {"output/stale": b"x", "mine.txt": b"m",
                                       ".tpi/index": b"i"})
    result = await download_tree(remote, dst, prefix="output/", delete=True)
    assert tree(dst) == {"output/r1": b"output/r1", "output/sub/r2": b"output/sub/r2",
                         "mine.txt": b"m", ".tpi/index": b"i"}
    assert (result.sent, result.deleted) == (2, 1)


async def test_download_delete_mirrors_the_whole_tree(tmp_path: Path) -> None:
    remote = MemoryStorage()
    await remote.write("a", b"a")
    dst = make_tree(tmp_path / "dst", {"a": b"a", "b/c": b"c", ".tpi/keep": b"k"})
    result = await download_tree(remote, dst, delete=True)
    assert tree(dst) == {"a": b"a", ".tpi/keep": b"k"} and result.deleted == 1


async def test_download_manifest_gives_md5_for_opaque_storages(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = LocalStorage(tmp_path / "bucket")
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    dst = make_tree(tmp_path / "dst", FILES)  # same bytes, other mtimes
    result = await download_tree(remote, dst, manifest=(remote, MANIFEST))
    assert (result.sent, result.unchanged) == (0, 4)


async def test_a_directory_in_the_way_is_reported_not_fatal(tmp_path: Path) -> None:
    remote = MemoryStorage()
    await remote.write("x", b"file")
    await remote.write("ok", b"fine")
    dst = make_tree(tmp_path / "dst", {"x/inner": b"dir"})
    result = await download_tree(remote, dst)
    assert result.sent == 1 and result.skipped == ["x: a local file or directory is in the way"]


async def test_folder_markers_are_not_files(tmp_path: Path) -> None:
    remote = MemoryStorage()
    await remote.write("folder/", b"")
    await remote.write("folder/f", b"f")
    result = await download_tree(remote, tmp_path / "dst")
    assert tree(tmp_path / "dst") == {"folder/f": b"f"} and result.skipped == []


async def test_upload_of_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    remote = MemoryStorage()
    await remote.write("precious", b"p")
    with pytest.raises(StorageError, match="no such directory"):
        await upload_tree(tmp_path / "missing", remote, delete=True)
    assert remote.objects == {"precious": b"p"}


async def test_progress_reports_totals_bytes_and_files(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    recorder = Tally()
    await upload_tree(src, MemoryStorage(), progress=recorder)
    size = sum(map(len, FILES.values()))
    assert recorder.totals == (4, size) and recorder.bytes == size and recorder.files == 4


async def test_restore_then_push_sends_nothing(tmp_path: Path) -> None:
    # the agent's cycle: restore data/ on a new machine, then push with its own manifest
    bucket = LocalStorage(make_tree(tmp_path / "bucket", FILES))
    await download_tree(bucket, tmp_path / "workdir")
    pushed = await upload_tree(tmp_path / "workdir", bucket, manifest=(bucket, ".tpi/replica"))
    assert (pushed.sent, pushed.unchanged) == (0, 4)
    (tmp_path / "workdir" / "a.txt").write_bytes(b"ALPHA")
    again = await upload_tree(tmp_path / "workdir", bucket, manifest=(bucket, ".tpi/replica"))
    assert again.sent == 1 and await bucket.read("a.txt") == b"ALPHA"


async def test_a_manifest_inside_the_mirror_is_never_deleted(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"a"})
    remote = MemoryStorage()
    await upload_tree(src, remote, delete=True, manifest=(remote, "sync-manifest.json"))
    again = await upload_tree(src, remote, delete=True, manifest=(remote, "sync-manifest.json"))
    assert again.deleted == 0 and set(remote.objects) == {"a", "sync-manifest.json"}


@pytest.mark.anyio
async def test_a_restored_replica_never_pushes_a_stale_copy_over_a_siblings_file(tmp_path):
    """Replica A restores data/, sibling B then writes a newer file: A's push keeps B's."""
    from tpi_core.storage.sync import download_tree, upload_tree
    from tpi_core.testing.memory import MemoryStorage

    data, reports = MemoryStorage(), MemoryStorage()
    await data.write("results/epoch-1.txt", b"3")
    await data.write("results/own.txt", b"old")
    workdir = tmp_path / "a"
    manifest = (reports, "replica-0/manifest.json")
    await download_tree(data, workdir, record=manifest)
    await data.write("results/epoch-1.txt", b"10")  # the sibling's newer checkpoint
    (workdir / "results" / "own.txt").write_text("new and longer")
    result = await upload_tree(workdir, data, manifest=manifest)
    assert await data.read("results/epoch-1.txt") == b"10"
    assert await data.read("results/own.txt") == b"new and longer"
    assert result.sent == 1
    assert (await upload_tree(workdir, data, manifest=manifest)).sent == 0


class _HashingStorage(MemoryStorage):
    """A storage that hashes what it sends (as S3's does) and says so."""

    UPLOAD_MD5 = True

    async def upload(self, key: str, path: Path, progress=None) -> str:
        await super().upload(key, path, progress)
        return hashlib.md5(self.objects[key]).hexdigest()


async def test_a_storage_that_hashes_uploads_spares_reading_files_twice(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", {**FILES, "big": os.urandom(3 << 20)})
    remote = _HashingStorage()

    def no_second_read(path: str) -> str:
        raise AssertionError(f"{path} read again to hash it")

    monkeypatch.setattr("tpi_core.sync.upload._md5_or_none", no_second_read)
    result = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert result.sent == 5
    entries = parse(remote.objects[MANIFEST])
    assert {k: e.md5 for k, e in entries.items()} == {
        k: hashlib.md5(v).hexdigest() for k, v in tree(src).items()}
    monkeypatch.undo()  # an unchanged tree is then recognised from the manifest alone
    remote.calls.clear()
    again = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (again.sent, again.unchanged) == (0, 5) and "upload" not in remote.calls


async def test_a_mirror_of_nothing_deletes_nothing(tmp_path: Path) -> None:
    remote = MemoryStorage()
    await remote.write("out/a", b"a")
    dst = make_tree(tmp_path / "dst", {"ot/mine": b"m", "other": b"o"})
    with pytest.raises(UsageError, match="memory://.*/ot: nothing there to mirror"):
        await download_tree(remote, dst, prefix="ot", delete=True)
    assert tree(dst) == {"ot/mine": b"m", "other": b"o"}
    # nothing local under the prefix to lose: no refusal
    empty = await download_tree(remote, tmp_path / "dst", prefix="elsewhere", delete=True)
    assert (empty.sent, empty.deleted) == (0, 0) and tree(dst) == {"ot/mine": b"m", "other": b"o"}


async def test_a_dry_run_reads_and_tells_but_writes_nothing(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", FILES)
    remote = MemoryStorage()
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    (src / "a.txt").write_bytes(b"changed")
    (src / "d").unlink()
    told: list[tuple] = []
    remote.calls.clear()
    result = await upload_tree(src, remote, manifest=(remote, MANIFEST), delete=True,
                               dry_run=lambda *change: told.append(change))
    assert told == [("send", "a.txt", 7), ("delete", "d", None)]
    assert (result.sent, result.bytes_sent, result.unchanged, result.deleted) == (1, 7, 2, 1)
    assert remote.calls == {"list": 1, "download": 1}  # the listing and the manifest only
    assert remote.objects["a.txt"] == b"alpha" and "d" in remote.objects

    told.clear()
    local = make_tree(tmp_path / "local", {"a.txt": b"alpha", "mine": b"x"})
    result = await download_tree(remote, local, delete=True,
                                 dry_run=lambda *change: told.append(change))
    assert sorted(told) == [("delete", "mine", None), ("fetch", "d", 5),
                            ("fetch", "sub/b.bin", 3000), ("fetch", "sub/deep/c", 0)]
    assert tree(local) == {"a.txt": b"alpha", "mine": b"x"}

"""Sync in bounded memory: the sorted walk, the spill to disk, the sorted manifest, the merge.

Most tests run each sync twice over: with the default run size, where everything stays in
memory, and with runs of 3 items, where every listing, walk directory, manifest and list of
deletions goes through sorted runs on disk. Both must give the same result.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tpi_core.storage import ObjectInfo
from tpi_core.storage.local import LocalStorage
from tpi_core.storage.sync import download_tree, upload_tree
from tpi_core.sync import manifest as mf
from tpi_core.sync import spill
from tpi_core.sync.excludes import Excludes
from tpi_core.sync.plan import Delete, plan_upload
from tpi_core.sync.spill import OrderError, SortedSpill
from tpi_core.sync.walk import LocalFile, walk
from tpi_core.testing.memory import MemoryStorage

MANIFEST = ".tpi/manifest.json"
# names whose order is easy to get wrong: "-" and "." sort before "/", "0" after it
TRICKY = ["a-b", "a.txt", "a/x", "a/y/z", "a0", "B", "b/c/d", "é", "z\u0301", "zz/.hidden"]


@pytest.fixture(params=[None, 3], ids=["in-memory", "runs-on-disk"])
def run_items(request, monkeypatch):
    """The run size: the default, or 3 so that every spill goes to disk (and does)."""
    written = []
    if request.param is not None:
        monkeypatch.setattr(spill, "RUN_ITEMS", request.param)
        real = SortedSpill._spill
        monkeypatch.setattr(SortedSpill, "_spill", lambda self: written.append(real(self)))
    yield request.param
    assert bool(written) == (request.param is not None)


def make_tree(root: Path, keys: list[str]) -> Path:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode() * 3)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and ".tpi" not in p.parts}


# the spill

def test_a_spill_sorts_across_runs_on_disk_and_reads_again() -> None:
    rng = random.Random(3)
    keys = [f"k{rng.randrange(10**6)}" for _ in range(500)] + ["new\nline", "surrogate\udcff"]
    rng.shuffle(keys)
    with spill.keys(run_items=64) as spilled:
        spilled.extend(keys)
        assert spilled.runs == 7 and len(spilled) == 502
        assert list(spilled) == sorted(keys)
        assert list(spilled) == sorted(keys)  # a second pass reads the runs again
        spilled.add("a")
        assert next(iter(spilled)) == "a"
    assert len(spilled) == 0 and spilled.runs == 0


def test_equal_keys_keep_the_order_they_were_added_in() -> None:
    with SortedSpill(lambda pair: pair[0], list, tuple, run_items=2) as spilled:
        spilled.extend([("b", 1), ("a", 1), ("b", 2), ("a", 2), ("b", 3)])
        assert list(spilled) == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("b", 3)]


# the walk

def test_the_walk_yields_keys_in_listing_order(tmp_path: Path, run_items) -> None:
    root = make_tree(tmp_path / "src", TRICKY).resolve()
    keys = [item.key for item in walk(root, Excludes())]
    assert keys == sorted(TRICKY)


def test_a_large_directory_is_walked_in_order_through_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spill, "RUN_ITEMS", 50)
    names = [f"f{i}" for i in range(400)] + [f"d{i}/x" for i in range(0, 400, 37)]
    root = make_tree(tmp_path / "flat", names).resolve()
    files = list(walk(root, Excludes()))
    assert [f.key for f in files] == sorted(names)
    assert all(isinstance(f, LocalFile) and f.size == 3 * len(f.key) for f in files)


# the merge

def test_an_unsorted_walk_stops_the_plan_before_any_deletion() -> None:
    files = [LocalFile(k, "/nowhere/" + k, 1, 1) for k in ("b", "a")]
    plan = plan_upload(files, [("a", (1, None, None)), ("old", (1, None, None))], None,
                       excludes=Excludes(), delete=True, hash_file=lambda f: None)
    actions = []
    with pytest.raises(OrderError, match="the walk is not in key order: 'a' after 'b'"):
        for action in plan:
            actions.append(action)
    assert actions and not any(isinstance(a, Delete) for a in actions)


def test_an_unsorted_listing_stops_the_plan_before_any_deletion() -> None:
    files = [LocalFile("b", "/nowhere/b", 1, 1)]
    listing = [("c", (1, None, None)), ("a", (1, None, None))]
    actions = []
    with pytest.raises(OrderError, match="the listing is not in key order"):
        for action in plan_upload(files, listing, None, excludes=Excludes(), delete=True,
                                  hash_file=lambda f: None):
            actions.append(action)
    assert actions and not any(isinstance(a, Delete) for a in actions)


def test_the_plan_reads_the_listing_in_step_with_the_walk() -> None:
    """Neither side is read ahead of the other: a stream, not a dictionary."""
    pulled = itertools.count()

    def listing():
        for i in itertools.count():
            next(pulled)
            yield f"f{i:09}", (1, None, None)

    files = (LocalFile(f"f{i:09}", "/nowhere", 1, 1) for i in itertools.count())
    plan = plan_upload(files, listing(), None, excludes=Excludes(), delete=False,
                       hash_file=lambda f: None)
    taken = list(itertools.islice(plan, 10_000))
    assert len(taken) == 10_000 and next(pulled) <= 10_002


# whole syncs

class ShuffledStorage(MemoryStorage):
    """A storage that lists in no order at all, as the contract allows."""

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        found = [info async for info in super().list(prefix)]
        random.Random(len(found)).shuffle(found)
        for info in found:
            yield info


@pytest.mark.anyio
async def test_mirror_both_ways_gives_the_same_result_in_memory_and_on_disk(
        tmp_path: Path, run_items) -> None:
    keys = TRICKY + [f"d{i % 4}/f{i}" for i in range(40)]
    src = make_tree(tmp_path / "src", keys)
    remote = ShuffledStorage()
    await remote.write("stray/old", b"x")
    await remote.write("d1/f999", b"x")
    first = await upload_tree(src, remote, delete=True, manifest=(remote, MANIFEST))
    assert (first.sent, first.deleted) == (50, 2)
    assert sorted(k for k in remote.objects if k != MANIFEST) == sorted(keys)

    remote.calls.clear()
    again = await upload_tree(src, remote, delete=True, manifest=(remote, MANIFEST))
    assert (again.sent, again.unchanged, again.deleted) == (0, 50, 0)
    assert "upload" not in remote.calls  # an unchanged manifest is not written again

    os.utime(src / "d0/f0", ns=(5, 5))  # touched, same bytes: hashed once, then recorded
    touched = await upload_tree(src, remote, delete=True, manifest=(remote, MANIFEST))
    assert (touched.sent, touched.unchanged) == (0, 50)
    assert mf.parse(remote.objects[MANIFEST])["d0/f0"].mtime_ns == 5

    (src / "a0").unlink()
    (src / "a/x").write_bytes(b"changed")
    third = await upload_tree(src, remote, delete=True, manifest=(remote, MANIFEST))
    assert (third.sent, third.unchanged, third.deleted) == (1, 48, 1)
    entries = mf.parse(remote.objects[MANIFEST])
    assert list(entries) == sorted(set(keys) - {"a0"})

    dst = make_tree(tmp_path / "dst", ["a0", "a-b", "local-only/f"])  # a-b as it is there
    down = await download_tree(remote, dst, delete=True, manifest=(remote, MANIFEST))
    assert tree(dst) == tree(src)
    assert (down.sent, down.unchanged, down.deleted) == (48, 1, 2)


@pytest.mark.anyio
async def test_a_restore_records_a_manifest_that_spares_the_next_push(tmp_path: Path,
                                                                     run_items) -> None:
    keys = [f"w/f{i}" for i in range(20)] + TRICKY
    storage = MemoryStorage()
    await upload_tree(make_tree(tmp_path / "src", keys), storage.child("workdir"))
    work = tmp_path / "work"
    await download_tree(storage.child("workdir"), work, record=(storage, "manifest.json"))
    push = await upload_tree(work, storage.child("out"), manifest=(storage, "manifest.json"))
    assert push.sent == 30  # "out" is empty: every file goes, none of them hashed twice
    again = await upload_tree(work, storage.child("out"), manifest=(storage, "manifest.json"))
    assert (again.sent, again.unchanged) == (0, 30)


# the manifest

def test_the_manifest_is_sorted_lines_and_reads_back(tmp_path: Path) -> None:
    entries = {k: mf.Entry(i, i * 10, None if i % 2 else "0" * 32) for i, k in enumerate(TRICKY)}
    path = tmp_path / "m"
    mf.write(path, sorted(entries.items()))
    assert path.read_bytes().startswith(mf.HEADER)
    assert list(mf.read(path)) == sorted(entries.items())


def test_a_damaged_manifest_is_read_up_to_the_damage(tmp_path: Path) -> None:
    good = b'[["a",1,2,null],["c",1,2,null]]\n'
    assert mf.parse(mf.HEADER + good + b"garbage\n") == {
        "a": mf.Entry(1, 2, None), "c": mf.Entry(1, 2, None)}
    # out of order: what comes after is not trusted
    assert list(mf.parse(mf.HEADER + good + b'[["b",1,2,null]]\n')) == ["a", "c"]
    assert mf.parse(mf.HEADER + b'[["a",1,2,null],["a",1,3,null]]\n') == {"a": mf.Entry(1, 2, None)}
    assert mf.parse(b"not json") == {} and mf.parse(b'{"version": 9}\n') == {}


@pytest.mark.anyio
async def test_a_version_one_manifest_still_spares_hashing_and_is_rewritten(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", TRICKY)
    remote = LocalStorage(tmp_path / "bucket")
    await upload_tree(src, remote, manifest=(remote, MANIFEST))
    stored = (tmp_path / "bucket" / MANIFEST)
    old = {k: {"size": e.size, "mtime_ns": e.mtime_ns, "md5": e.md5}
           for k, e in mf.parse(stored.read_bytes()).items()}
    import json
    stored.write_text(json.dumps({"version": 1, "files": old}))
    for path in (tmp_path / "bucket").rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            os.utime(path, ns=(1, 1))  # no mtime to go by: only the manifest tells
    again = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (again.sent, again.unchanged) == (0, len(TRICKY))
    assert stored.read_bytes().startswith(mf.HEADER)

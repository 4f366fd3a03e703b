"""A listing read as ranges at once: every key exactly once, whatever the bounds say."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from tpi_core.storage.sync import upload_tree
from tpi_core.sync import listing as lst
from tpi_core.sync.retry import RetryPolicy
from tpi_core.testing.memory import FlakyStorage, MemoryStorage

pytestmark = pytest.mark.anyio

MANIFEST = ".tpi/manifest.json"


def keys_of(listing) -> list[str]:
    with listing:
        return [key for key, _obj in listing]


async def filled(count: int, prefix: str = "") -> MemoryStorage:
    storage = MemoryStorage()
    for i in range(count):
        await storage.write(f"{prefix}k{i:05d}", b"x")
    return storage


@pytest.mark.parametrize("seed", range(12))
async def test_any_bounds_at_any_moment_give_every_key_once(seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(lst, "LIST_RANGES", rng.choice([1, 2, 8]))
    storage = await filled(2500)
    real = sorted(k for k in storage.objects)
    # bounds from a stale manifest: some keys gone since, some never there, before the first
    # key and after the last
    stale = rng.sample(real, 40) + [f"k{i:05d}x" for i in rng.sample(range(3000), 20)] + [
        "", "a", "zzz"]
    bounds = sorted(set(stale))
    pauses = rng.randrange(0, 8)  # the first range reads this many pages before the split

    async def late() -> list[str]:
        for _ in range(pauses):
            await anyio.sleep(0)
        return bounds

    storage.calls.clear()
    listed = keys_of(await lst.list_remote(storage, "", RetryPolicy(), bounds=late))
    assert listed == real
    assert storage.calls["list"] > 1 or pauses >= 3  # ranges, unless the first read it all


async def test_a_prefix_and_the_accept_filter_hold_in_every_range() -> None:
    storage = await filled(1200, "in/")
    for i in range(300):
        await storage.write(f"out/k{i:05d}", b"y")

    async def bounds() -> list[str]:
        return lst.every_page(iter(sorted(storage.objects)), "in/")

    lst_ = await lst.list_remote(storage, "in/", RetryPolicy(), accept=lambda k: k[-1] != "7",
                                 bounds=bounds)
    assert keys_of(lst_) == sorted(k for k in storage.objects
                                   if k.startswith("in/") and k[-1] != "7")


async def test_a_failed_range_retries_the_whole_listing() -> None:
    inner = await filled(5000)
    flaky = FlakyStorage(inner, rate=0.3, seed=4, methods=("list",))

    async def bounds() -> list[str]:
        return lst.every_page(iter(sorted(inner.objects)), "")

    listed = keys_of(await lst.list_remote(flaky, "", RetryPolicy(attempts=30, base=0),
                                           bounds=bounds))
    assert listed == sorted(inner.objects) and flaky.failures > 0


class PagedStorage(MemoryStorage):
    """Each page of 1,000 keys of a listing costs a round trip, as over a network."""

    async def list(self, prefix: str = "", *, start_after: str = ""):
        count = 0
        async for info in super().list(prefix, start_after=start_after):
            if count % 1000 == 0:
                await anyio.sleep(0.1)
            count += 1
            yield info


async def test_a_resync_lists_in_ranges_split_by_the_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3500):
        (src / f"d{i // 500}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i // 500}" / f"f{i:04d}").write_bytes(b"%d" % i)
    remote = PagedStorage()
    first = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert first.sent == 3500 and remote.calls["list"] == 1  # no manifest yet: one range
    remote.calls.clear()
    again = await upload_tree(src, remote, manifest=(remote, MANIFEST))
    assert (again.sent, again.unchanged) == (0, 3500)
    assert remote.calls["list"] == 4  # the first range, then one per 990 keys after it
    assert "upload" not in remote.calls and "write" not in remote.calls
    (src / "d6" / "f3499").unlink()
    (src / "d9").mkdir()
    (src / "d9" / "new").write_bytes(b"n")
    await remote.write("zz-other-writer", b"o")
    mirrored = await upload_tree(src, remote, manifest=(remote, MANIFEST), delete=True)
    assert (mirrored.sent, mirrored.deleted) == (1, 2)
    assert sorted(remote.objects) == sorted(
        [f"d{i // 500}/f{i:04d}" for i in range(3499)] + ["d9/new", MANIFEST])


async def test_a_storage_without_start_after_is_listed_once(tmp_path: Path) -> None:
    storage = await filled(2500)
    storage.LISTS_AFTER = False  # a third-party storage that lists in no promised order

    async def bounds() -> list[str]:
        raise AssertionError("bounds are not asked for")

    listed = keys_of(await lst.list_remote(storage, "", RetryPolicy(), bounds=bounds))
    assert listed == sorted(storage.objects) and storage.calls["list"] == 1

"""Sync through a proxy that fails a quarter of requests: every byte still arrives right.

The fault proxy (tpi_core/testing/faultproxy.py) sits between S3Storage and moto and answers 503
SlowDown, 500 InternalError, resets connections before answering, or cuts answers in the
middle. The sync engine retries whole objects; S3Storage retries single parts.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tpi_core.testing.faultproxy import KINDS, FaultProxy
from tpi_aws.storage import S3Storage
from tpi_core.storage.sync import RetryPolicy, download_tree, upload_tree

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
MiB = 1 << 20
PATIENT = RetryPolicy(attempts=12, base=0.01, cap=0.2)





@pytest.fixture
def proxy(moto_server) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.url, seed=11) as proxy:
        yield proxy


@pytest.fixture
async def storage(bucket, proxy) -> AsyncIterator[S3Storage]:
    async with S3Storage.from_url(f"s3://{bucket}/task/data", endpoint_url=proxy.url) as storage:
        yield storage


def make_tree(root: Path) -> dict[str, str]:
    """Many small files in nested folders and one file of three parts; key -> md5."""
    rng = random.Random(5)
    for index in range(60):
        path = root / f"d{index % 4}" / f"s{index % 3}" / f"f{index:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(0, 20_000)))
    (root / "big.bin").write_bytes(os.urandom(2 * 8 * MiB + 54321))
    return tree_hashes(root)


def tree_hashes(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
            for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize("big_upload", ["one streamed PUT", "in parts"])
async def test_sync_through_faults_ends_with_every_byte_right(storage, proxy, tmp_path,
                                                              big_upload, monkeypatch):
    if big_upload == "in parts":
        monkeypatch.setattr("tpi_aws.storage.STREAM_MAX", 8 * MiB)
    source, target = tmp_path / "source", tmp_path / "target"
    expected = make_tree(source)
    proxy.rate = 0.25
    await upload_tree(source, storage, jobs=8, retry=PATIENT)
    faults_up = proxy.stats

    proxy.rate = 0.0  # check what S3 holds with a clean line
    stored = {info.key async for info in storage.list()}
    assert stored == set(expected)
    for key in stored:
        if key != "big.bin":
            assert hashlib.md5(await storage.read(key)).hexdigest() == expected[key], key

    proxy.clear()
    proxy.rate = 0.25
    await download_tree(storage, target, jobs=8, retry=PATIENT)
    faults_down = proxy.stats

    assert tree_hashes(target) == expected
    for stats in (faults_up, faults_down):
        assert all(stats[kind] > 0 for kind in KINDS), stats
        assert sum(stats[k] for k in KINDS) >= 0.15 * sum(stats.values()), stats


async def test_failed_parts_and_ranges_are_retried_without_restarting_the_file(
        storage, proxy, tmp_path, in_parts, in_ranges):
    data = os.urandom(3 * 8 * MiB + 1)  # four parts; the download: 8 MiB, then three ranges
    (tmp_path / "big").write_bytes(data)
    proxy.rate, proxy.kinds, proxy.when = 1.0, ("reset", "cut", "slowdown"), first_try_fails()
    await storage.upload("big", tmp_path / "big")  # no retry around it: parts retry alone
    await storage.download("big", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert sum(proxy.stats[kind] for kind in proxy.kinds) == 4 + 3, proxy.stats
    assert sum(1 for m, t, _o in proxy.log if m == "POST" and "?uploads" in t) == 1


async def test_a_lost_answer_to_complete_multipart_upload_is_recognised(storage, proxy,
                                                                     tmp_path, in_parts):
    data = os.urandom(8 * MiB + 1)
    (tmp_path / "big").write_bytes(data)
    proxy.rate, proxy.kinds = 1.0, ("cut",)  # moto completes it, the answer never arrives
    proxy.when = once(lambda method, target, _h: method == "POST" and "uploadId=" in target)
    await storage.upload("big", tmp_path / "big")
    completes = [o for m, t, o in proxy.log if m == "POST" and "uploadId=" in t]
    assert completes[0] == "cut" and len(completes) >= 2
    proxy.rate = 0.0
    await storage.download("big", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def once(predicate):
    """A fault selector true for the first request ``predicate`` accepts, and no other."""
    fired: list[bool] = []

    def when(method: str, target: str, headers: dict[str, str]) -> bool:
        if fired or not predicate(method, target, headers):
            return False
        fired.append(True)
        return True

    return when


def first_try_fails():
    """A fault selector: the first attempt at each part and each range fails, no other (not
    the request for an object's first 8 MiB: the caller retries whole objects)."""
    seen: set[tuple[str, str]] = set()

    def when(method: str, target: str, headers: dict[str, str]) -> bool:
        attempt = (target, headers.get("range", ""))
        ranged = "range" in headers and not headers["range"].startswith("bytes=0-")
        if ("partNumber=" not in target and not ranged) or attempt in seen:
            return False
        seen.add(attempt)
        return True

    return when


async def test_hostile_keys_are_skipped_and_nothing_lands_outside(s3, bucket, storage,
                                                                 tmp_path):
    for key in ("task/data/../x", "task/data//etc/tpi-hostile", "task/data/ok"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"planted")
    outside = Path("/etc/tpi-hostile")
    assert not outside.exists()
    destination = tmp_path / "inner" / "dest"
    result = await download_tree(storage, destination, retry=PATIENT)
    assert not outside.exists()
    # the safe key comes, each hostile one is named and left out
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [destination / "ok"]
    assert sorted(line.split(":")[0] for line in result.skipped) == ["../x", "/etc/tpi-hostile"]


async def test_a_name_that_is_not_utf8_is_skipped_and_the_rest_is_sent(s3, bucket, storage,
                                                                        tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.txt").write_text("ok\n")
    (source / os.fsdecode(b"caf\xe9.txt")).write_text("latin\n")  # valid on ext4
    result = await upload_tree(source, storage, retry=PATIENT)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="task/data/")["Contents"]]
    assert keys == ["task/data/good.txt"] and result.sent == 1
    assert result.skipped == ["caf\\xe9.txt: the name is not valid UTF-8, which a storage key "
                              "must be"]


async def test_a_part_that_keeps_failing_fails_the_file_plainly_and_the_sync_retries_it(
        storage, proxy, tmp_path):
    """A 250 MB file goes up in parts; part 2 gets 503 (SlowDown) more often than a part
    is retried. The error must come out as itself, not inside an ExceptionGroup, so that the
    sync retries the file (an ExceptionGroup was not retried, and the CLI showed it raw)."""
    from tpi_core.transport.ranges import PART_ATTEMPTS

    source = tmp_path / "source"
    source.mkdir()
    data = os.urandom(1 << 20) * 250  # 250 MiB: over the single-PUT limit, so in parts
    (source / "big.bin").write_bytes(data)
    faults = {"left": PART_ATTEMPTS}

    def part_two(method: str, target: str, _headers: dict[str, str]) -> bool:
        if method == "PUT" and "partNumber=2&" in target + "&" and faults["left"] > 0:
            faults["left"] -= 1
            return True
        return False

    proxy.rate, proxy.kinds, proxy.when = 1.0, ("slowdown",), part_two
    result = await upload_tree(source, storage, jobs=4,
                               retry=RetryPolicy(attempts=3, base=0.01, cap=0.1))
    assert faults["left"] == 0 and proxy.stats["slowdown"] == PART_ATTEMPTS
    assert result.sent == 1
    uploads = sum(1 for m, t, _o in proxy.log if m == "POST" and "?uploads" in t)
    assert uploads == 2  # the file was tried again after its part gave up
    proxy.rate = 0.0
    await storage.download("big.bin", tmp_path / "back")
    assert hashlib.md5((tmp_path / "back").read_bytes()).digest() == \
        hashlib.md5(data).digest()

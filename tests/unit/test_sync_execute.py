"""The executor: retries, the concurrency bound, bounded memory, errors raised as they are."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import anyio
import pytest

from tpi_core.errors import PermissionDenied, TransientError
from tpi_core.storage.sync import download_tree, upload_tree
from tpi_core.sync.execute import BATCH, LARGE, LARGE_JOBS, SyncRun
from tpi_core.sync.plan import Send, Unchanged
from tpi_core.sync.retry import RetryPolicy, retrying
from tpi_core.sync.walk import LocalFile
from tpi_core.testing.memory import FlakyStorage, MemoryStorage
from tpi_core.testing.progress import Tally

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=12, base=0.001, cap=0.002)



def make_files(root: Path, count: int, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {f"d{i % 7}/f{i}.bin": rng.randbytes(rng.choice([0, 10, 4096, 70_000]))
             for i in range(count)}
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


async def test_flaky_storage_still_ends_with_every_byte_right(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src", 300)
    memory = MemoryStorage()
    flaky = FlakyStorage(memory, rate=0.3, seed=7)
    tally = Tally()
    result = await upload_tree(tmp_path / "src", flaky, manifest=(flaky, "m.json"), jobs=8,
                               retry=FAST, progress=tally, delete=True)
    assert {k: v for k, v in memory.objects.items() if k != "m.json"} == files
    assert result.sent == 300 and flaky.failures > 50
    assert tally.bytes == result.bytes_sent == sum(map(len, files.values()))  # no double count

    down = Tally()
    result = await download_tree(flaky, tmp_path / "dst", jobs=8, retry=FAST, progress=down)
    got = {p.relative_to(tmp_path / "dst").as_posix(): p.read_bytes()
           for p in (tmp_path / "dst").rglob("*") if p.is_file()}
    assert got == {**files, "m.json": memory.objects["m.json"]}
    assert down.bytes == result.bytes_sent and down.files == result.sent == 301


async def test_retries_give_up_after_the_policy_attempts() -> None:
    calls = []

    async def always_fails(_moved) -> None:
        calls.append(time.monotonic())
        raise TransientError("503")

    with pytest.raises(TransientError):
        await retrying(RetryPolicy(attempts=4, base=0.0, cap=0.0), always_fails)
    assert len(calls) == 4


async def test_non_transient_errors_are_not_retried() -> None:
    calls = []

    async def denied(_moved) -> None:
        calls.append(1)
        raise PermissionDenied("s3:PutObject")

    with pytest.raises(PermissionDenied):
        await retrying(FAST, denied)
    assert calls == [1]


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base=0.1, cap=1.0)
    delays = [max(policy.delay(n) for _ in range(200)) for n in range(8)]
    assert delays[0] <= 0.1 and 0.3 < delays[2] <= 0.4 and all(d <= 1.0 for d in delays)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


class Gauge(MemoryStorage):
    """Counts uploads and downloads in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.peak = 0

    async def _measure(self, method, *args):
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await anyio.sleep(0.01)
            return await method(*args)
        finally:
            self.now -= 1

    async def upload(self, key, path, progress=None):
        return await self._measure(super().upload, key, path, progress)

    async def download(self, key, path, progress=None):
        return await self._measure(super().download, key, path, progress)


@pytest.mark.parametrize("jobs", [1, 3, 16])
async def test_concurrency_bound_is_respected(tmp_path: Path, jobs: int) -> None:
    make_files(tmp_path / "src", 60)
    storage = Gauge()
    await upload_tree(tmp_path / "src", storage, jobs=jobs)
    assert storage.peak == jobs
    storage.peak = 0
    await download_tree(storage, tmp_path / "dst", jobs=jobs)
    assert storage.peak == jobs


class Run(SyncRun):
    """Counts how far planning ran ahead of finished transfers."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pulled = self.finished = self.ahead = 0

    def plan(self, count: int):
        for index in range(count):
            self.pulled += 1
            self.ahead = max(self.ahead, self.pulled - self.finished)
            yield Send(LocalFile(f"f{index}", "/dev/null", 1, 0))

    async def transfer(self, action) -> None:
        await anyio.sleep(0)
        self.finished += 1
        self.done(1)


async def test_planning_never_runs_far_ahead_of_transfers() -> None:
    run = Run(jobs=4, progress=None, retry=None)
    await run.run(run.plan(20_000))
    assert run.result.sent == 20_000
    assert run.ahead <= BATCH + 2 * 4 + 16  # a batch, the stream, the workers: not 20,000


class Lanes(SyncRun):
    """Large transfers wait until every small one is done; counts what runs at once."""

    def __init__(self, small: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.small_left, self.all_small_done = small, anyio.Event()
        self.busy = {"large": 0, "all": 0}
        self.peak = {"large": 0, "all": 0}

    async def transfer(self, action) -> None:
        kind = "large" if action.file.size > LARGE else "small"
        for name in ("all", kind) if kind == "large" else ("all",):
            self.busy[name] += 1
            self.peak[name] = max(self.peak[name], self.busy[name])
        try:
            if kind == "large":
                await self.all_small_done.wait()
            await anyio.sleep(0.001)
        finally:
            for name in ("all", kind) if kind == "large" else ("all",):
                self.busy[name] -= 1
        if kind == "small":
            self.small_left -= 1
            if not self.small_left:
                self.all_small_done.set()
        self.done(action.file.size)


@pytest.mark.parametrize("jobs", [2, 8, 64])
async def test_waiting_large_files_never_hold_up_small_ones(jobs: int) -> None:
    """More large files than jobs, each waiting for the small ones queued behind them: with
    one lane every worker would hold a large file and wait forever."""
    files = [LocalFile(f"large{i}", "/dev/null", LARGE + 1, 0) for i in range(jobs + 40)]
    files += [LocalFile(f"small{i}", "/dev/null", 10, 0) for i in range(300)]
    run = Lanes(small=300, jobs=jobs, progress=None, retry=None)
    with anyio.fail_after(20):
        await run.run(Send(f) for f in files)
    assert run.result.sent == len(files)
    assert run.peak["large"] == min(LARGE_JOBS, jobs // 2)
    assert run.peak["all"] <= jobs


class Counted(Run):
    """Counts the workers started."""

    workers = 0

    async def _work(self, receive, slots) -> None:
        Counted.workers += 1
        await super()._work(receive, slots)


@pytest.mark.parametrize(("files", "sizes", "workers"), [
    (0, (1,), 0),  # a no-change sync starts none
    (3, (1,), 3),
    (500, (1,), 64),
    (500, (1, LARGE + 1), 64 + LARGE_JOBS),
])
async def test_workers_start_as_work_comes(files: int, sizes: tuple[int, ...],
                                          workers: int) -> None:
    Counted.workers = 0
    run = Counted(jobs=64, progress=None, retry=None)
    plan = [Unchanged(f"u{i}") for i in range(10)]
    plan += [Send(LocalFile(f"f{i}", "/dev/null", sizes[i % len(sizes)], 0))
             for i in range(files)]
    await run.run(action for action in plan)
    assert (run.result.sent, run.result.unchanged) == (files, 10)
    assert Counted.workers == workers


async def test_first_error_is_raised_as_is_and_stops_the_rest() -> None:
    class Failing(Run):
        async def transfer(self, action) -> None:
            if action.file.key == "f50":
                raise PermissionDenied("no write access")
            await anyio.sleep(0.001)
            self.finished += 1

    run = Failing(jobs=4, progress=None, retry=None)
    with pytest.raises(PermissionDenied):  # not an ExceptionGroup
        await run.run(run.plan(100_000))
    assert run.pulled < 5_000


async def test_planner_errors_surface_too() -> None:
    def broken_plan():
        yield Unchanged("a")
        raise OSError("disk gone")

    run = Run(jobs=2, progress=None, retry=None)
    with pytest.raises(OSError, match="disk gone"):
        await run.run(broken_plan())


async def test_failed_upload_still_records_what_was_sent(tmp_path: Path) -> None:
    make_files(tmp_path / "src", 40)
    memory = MemoryStorage()
    flaky = FlakyStorage(memory, rate=0.5, seed=3, methods=["upload"])
    with pytest.raises(TransientError):
        await upload_tree(tmp_path / "src", flaky, manifest=(memory, "m.json"), jobs=4,
                          retry=RetryPolicy(attempts=2, base=0.0, cap=0.0))
    sent = len(memory.objects) - 1
    assert 0 < sent < 40
    memory.calls.clear()
    resumed = await upload_tree(tmp_path / "src", memory, manifest=(memory, "m.json"))
    assert resumed.unchanged == sent and resumed.sent == 40 - sent


async def test_ten_thousand_files_resync_needs_one_listing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(50):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(200):
            (src / f"d{d}" / f"f{f}").write_bytes(b"x" * (f % 13))
    remote = MemoryStorage()
    first = await upload_tree(src, remote, manifest=(remote, ".tpi/manifest.json"), jobs=32)
    assert first.sent == 10_000
    remote.calls.clear()
    again = await upload_tree(src, remote, manifest=(remote, ".tpi/manifest.json"))
    assert again.unchanged == 10_000 and again.sent == 0
    assert remote.calls == {"list": 1, "download": 1}  # speed: benchmarks/, not a timed assert
    os.utime(src / "d3" / "f7", ns=(1, 1))
    (src / "d3" / "f7").write_bytes(b"changed!")
    remote.calls.clear()
    third = await upload_tree(src, remote, manifest=(remote, ".tpi/manifest.json"))
    assert third.sent == 1 and remote.calls["upload"] == 2  # the file and the manifest

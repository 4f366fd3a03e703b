"""The gs:// storage on fake-gcs-server (127.0.0.1): the whole storage contract, plus what
is GCS's own (its URLs, a missing bucket, md5 from x-goog-hash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest
from tpi_gcp.storage import RESUMABLE_ENV, GCSProtocol, GCSStorage

from tpi_core.errors import ResourceNotFound, UsageError
from tpi_core.testing.contract import StorageContract
from tpi_core.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


def make_bucket(url: str) -> str:
    name = f"tpi-{uuid.uuid4().hex[:16]}"
    request = urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return name


class TestGCSStorage(StorageContract):
    @pytest.fixture
    async def storage(self, gcs_server, monkeypatch) -> AsyncIterator[GCSStorage]:  # noqa: F811
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)  # storages opened by URL
        bucket = make_bucket(gcs_server.url)
        async with GCSStorage(bucket, "task/data", endpoint_url=gcs_server.url) as storage:
            yield storage


class TestGCSStorageResumable(TestGCSStorage):
    """The contract again with every streamed upload (above 1 MiB) as a resumable session."""

    @pytest.fixture(autouse=True)
    def resumable(self, monkeypatch):
        monkeypatch.setenv(RESUMABLE_ENV, "0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_missing_bucket_is_a_missing_resource(gcs_server):  # noqa: F811
    async with GCSStorage("tpi-no-such-bucket", endpoint_url=gcs_server.url) as storage:
        with pytest.raises(ResourceNotFound, match="list gs://tpi-no-such-bucket"):
            [info async for info in storage.list()]


@pytest.mark.anyio
async def test_the_emulator_is_found_as_the_google_sdks_find_it(gcs_server, tmp_path,  # noqa: F811
                                                                monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    bucket = make_bucket(gcs_server.url)
    (tmp_path / "big.bin").write_bytes(b"x" * (3 << 20))  # streamed, above 1 MiB
    async with GCSStorage.from_url(f"gs://{bucket}/p") as storage:
        digest = await storage.upload("big.bin", tmp_path / "big.bin")
        [info] = [info async for info in storage.list()]
        assert (info.key, info.size, info.etag) == ("big.bin", 3 << 20, digest)
        await storage.download("big.bin", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == (tmp_path / "big.bin").read_bytes()


@pytest.mark.anyio
async def test_a_listing_starts_after_a_key_in_key_order(gcs_server):  # noqa: F811
    bucket = make_bucket(gcs_server.url)
    async with GCSStorage(bucket, "p", endpoint_url=gcs_server.url) as storage:
        assert GCSStorage.LISTS_AFTER
        for key in ["b/2", "a", "b/1", "c", "b/10"]:
            await storage.write(key, key.encode())
        assert [i.key async for i in storage.list()] == ["a", "b/1", "b/10", "b/2", "c"]
        assert [i.key async for i in storage.list(start_after="b/1")] == ["b/10", "b/2", "c"]
        assert [i.key async for i in storage.list("b/", start_after="b/10")] == ["b/2"]


def test_urls_and_protocol():
    assert GCSStorage.from_url("gs://b/x/y").url == "gs://b/x/y"
    with pytest.raises(UsageError):
        GCSStorage.from_url("s3://b/x")
    protocol = GCSProtocol("b")
    assert protocol.locate("a/b c.txt") == ("/storage/v1/b/b/o/a%2Fb%20c.txt", "alt=media")
    assert protocol.locate("", {"uploadType": "media", "name": "k"}) == (
        "/upload/storage/v1/b/b/o", "uploadType=media&name=k")
    assert protocol.md5_of({"x-goog-hash": "crc32c=yZRlqg==,md5=XrY7u+Ae7tCTyyK7j1rNww=="}) \
        == "5eb63bbbe01eeed093cb22bb8f5acdc3"
    assert protocol.pinned("17") == {"x-goog-if-generation-match": "17"}


# the tpi command ------------------------------------------------------------------------


def _tpi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **env})


def test_tpi_sync_to_gcs_and_back_then_nothing_written(gcs_server, tmp_path):  # noqa: F811
    """Three listing pages and a resumable upload; the no-change re-sync writes nothing."""
    bucket = make_bucket(gcs_server.url)
    source = tmp_path / "src"
    for index in range(2100):
        path = source / f"d{index % 7}" / f"f{index:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {index}\n")
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    with FaultProxy(gcs_server.url) as proxy:
        env = {"STORAGE_EMULATOR_HOST": proxy.url, RESUMABLE_ENV: str(1 << 20)}
        first = _tpi("sync", "--json", str(source), f"gs://{bucket}/w", env=env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["sent"] == 2101
        assert any("uploadType=resumable" in target for _, target, _ in proxy.log)
        proxy.log.clear()
        again = _tpi("sync", "--json", str(source), f"gs://{bucket}/w", env=env)
        assert again.returncode == 0 and json.loads(again.stdout)["sent"] == 0, again.stdout
        assert {method for method, _, _ in proxy.log} == {"GET"}, proxy.log
        (source / "d0" / "f00000.txt").write_text("changed\n")
        changed = _tpi("sync", "--json", str(source), f"gs://{bucket}/w", env=env)
        assert json.loads(changed.stdout)["sent"] == 1, changed.stdout
        back = _tpi("sync", f"gs://{bucket}/w", str(tmp_path / "back"), env=env)
        assert back.returncode == 0, back.stderr
    for path in source.rglob("*"):
        if path.is_file():
            copy = tmp_path / "back" / path.relative_to(source)
            assert copy.read_bytes() == path.read_bytes(), path


def test_tpi_sync_to_a_missing_bucket_is_one_line(gcs_server, tmp_path):  # noqa: F811
    (tmp_path / "f").write_text("x")
    done = _tpi("sync", str(tmp_path), "gs://tpi-no-such-bucket/p",
                env={"STORAGE_EMULATOR_HOST": gcs_server.url})
    assert done.returncode == 1 and done.stderr.startswith("tpi: error: "), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1

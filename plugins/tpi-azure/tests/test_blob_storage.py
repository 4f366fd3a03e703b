"""The az:// storage on Azurite (127.0.0.1): the whole storage contract, plus what is Azure's
own (accounts from a connection string, a missing container, blocks above the streamed
limit, Shared Key against the SDK's own signature) and ``tpi sync`` through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from tpi_azure import storage as blob
from tpi_azure.account import Account, find_account, parse_connection_string, shared_key
from tpi_azure.storage import BlobStorage

from tpi_core.errors import ResourceNotFound, UsageError
from tpi_core.testing.contract import StorageContract
from tpi_core.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


async def new_container() -> str:
    """A new container in the account of the environment's connection string."""
    name = f"tpi-{uuid.uuid4().hex[:16]}"
    async with BlobStorage(name) as storage:
        await storage.create_container()
        await storage.create_container()  # twice: no error
    return name


class TestBlobStorage(StorageContract):
    @pytest.fixture
    async def storage(self, azurite_env) -> AsyncIterator[BlobStorage]:
        async with BlobStorage(await new_container(), "task/data") as storage:
            yield storage


class TestBlobStorageInBlocks(TestBlobStorage):
    """The contract again with every streamed upload (above 1 MiB) in blocks."""

    @pytest.fixture(autouse=True)
    def blocks(self, monkeypatch):
        monkeypatch.setattr(blob, "STREAM_MAX", 1 << 20)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_missing_container_is_a_missing_resource(azurite_env):
    async with BlobStorage("tpi-no-such-container") as storage:
        with pytest.raises(ResourceNotFound, match="list az://tpi-no-such-container"):
            [info async for info in storage.list()]


@pytest.mark.anyio
async def test_a_large_blob_in_blocks_keeps_the_files_md5(azurite_env, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(blob, "STREAM_MAX", 1 << 20)
    container = await new_container()
    (tmp_path / "big.bin").write_bytes(os.urandom((17 << 20) + 5))  # 3 blocks of 8 MiB+
    async with BlobStorage.from_url(f"az://{container}/p") as storage:
        digest = await storage.upload("big.bin", tmp_path / "big.bin")
        [info] = [info async for info in storage.list()]
        assert (info.key, info.size, info.etag) == ("big.bin", (17 << 20) + 5, digest)
        await storage.download("big.bin", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == (tmp_path / "big.bin").read_bytes()


def test_connection_strings_and_accounts():
    dev = parse_connection_string("UseDevelopmentStorage=true")
    assert (dev.name, dev.endpoint) == ("devstoreaccount1",
                                        "http://127.0.0.1:10000/devstoreaccount1")
    real = parse_connection_string(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;"
        "EndpointSuffix=core.windows.net")
    assert (real.name, real.endpoint, real.key) == (
        "acct", "https://acct.blob.core.windows.net", "a2V5")
    assert "a2V5" not in repr(real)
    sas = parse_connection_string("BlobEndpoint=https://x.blob.core.windows.net/;"
                                  "SharedAccessSignature=sv=2025-11-05&sig=abc")
    assert (sas.name, sas.sas, sas.key) == ("x", "sv=2025-11-05&sig=abc", "")
    assert find_account("mine", {}).endpoint == "https://mine.blob.core.windows.net"
    with pytest.raises(UsageError, match="AZURE_STORAGE_CONNECTION_STRING"):
        find_account("", {})
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_connection_string("garbage")


def test_shared_key_is_the_sdks_signature():
    """The signature of a request with a query, a range and x-ms- headers, against
    azure-storage-blob's own Shared Key policy (which sends ranges as x-ms-range; a Range
    header is signed as the service documents it, and Azurite checks that in the contract's
    ranged downloads)."""
    from azure.core.pipeline import PipelineRequest, PipelineContext
    from azure.core.rest import HttpRequest
    from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

    account = Account("acct", "https://acct.blob.core.windows.net",
                      "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
                      "K1SZFPTOtr/KBHBeksoGMGw==")
    path, query = "/c%20x/a%2Fb/k%20y.bin", "comp=block&blockid=MDAwMDAwMDE%3D&prefix=p%20q"
    headers = {"x-ms-date": "Sun, 06 Dec 2026 12:00:00 GMT", "x-ms-version": "2025-11-05",
               "Content-Length": "12", "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww==",
               "x-ms-range": "bytes=0-11", "If-Match": '"0x8D"', "x-ms-blob-type": "BlockBlob"}
    request = HttpRequest("PUT", f"https://acct.blob.core.windows.net{path}?{query}",
                          headers=dict(headers))
    policy = SharedKeyCredentialPolicy(account.name, account.key)
    pipeline = PipelineRequest(request, PipelineContext(None))
    policy.on_request(pipeline)
    assert shared_key(account, "PUT", path, query, headers) == \
        request.headers["Authorization"]


# the tpi command ------------------------------------------------------------------------


def _tpi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **env})


def test_tpi_sync_to_azure_and_back_then_nothing_written(azurite_env, azurite_server,
                                                         tmp_path):
    """Two listing pages and blocks; the no-change re-sync writes nothing."""
    container = anyio.run(new_container)
    source = tmp_path / "src"
    for index in range(5100):
        path = source / f"d{index % 7}" / f"f{index:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {index}\n")
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    with FaultProxy(azurite_server.url) as proxy:
        text = f"UseDevelopmentStorage=true;BlobEndpoint={proxy.url}/devstoreaccount1"
        env = {"AZURE_STORAGE_CONNECTION_STRING": text}
        first = _tpi("sync", "--json", str(source), f"az://{container}/w", env=env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["sent"] == 5101
        proxy.log.clear()
        again = _tpi("sync", "--json", str(source), f"az://{container}/w", env=env)
        assert again.returncode == 0 and json.loads(again.stdout)["sent"] == 0, again.stdout
        assert {method for method, _, _ in proxy.log} == {"GET"}, proxy.log
        (source / "d0" / "f00000.txt").write_text("changed\n")
        changed = _tpi("sync", "--json", str(source), f"az://{container}/w", env=env)
        assert json.loads(changed.stdout)["sent"] == 1, changed.stdout
        back = _tpi("sync", f"az://{container}/w", str(tmp_path / "back"), env=env)
        assert back.returncode == 0, back.stderr
    for path in source.rglob("*"):
        if path.is_file():
            copy = tmp_path / "back" / path.relative_to(source)
            assert copy.read_bytes() == path.read_bytes(), path


def test_tpi_sync_to_a_missing_container_is_one_line(azurite_env, tmp_path):
    (tmp_path / "f").write_text("x")
    done = _tpi("sync", str(tmp_path), "az://tpi-no-such-container/p", env={})
    assert done.returncode == 1 and done.stderr.startswith("tpi: error: "), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1

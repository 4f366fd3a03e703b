"""The layers above the network seam on :class:`~tpi_core.transport.mock.MockNetwork`:
framing, reuse, errors mapped once, proxies, and a storage protocol that is not S3's."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

import anyio
import pytest

from tpi_core.errors import (
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    TpiError,
    TransientError,
)
from tpi_core.transport import download
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.exceptions import ConnectError, ConnectionLost, Timeout
from tpi_core.transport.hashing import base64_to_hex
from tpi_core.transport.mock import MockNetwork
from tpi_core.transport.pool import Pool
from tpi_core.transport.proxy import parse, proxy_for

pytestmark = pytest.mark.anyio


def ok(body: bytes = b"", head: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head, body)


async def get(pool: Pool) -> bytes:
    async with pool.request("GET", "/k", {}) as response:
        return await response.read()


async def test_a_kept_connection_is_reused_and_a_closed_one_replaced():
    network = MockNetwork([ok(b"a"), ok(b"b")], [ok(b"c")])
    pool = Pool("http://store.test", limit=2, network=network)
    assert [await get(pool), await get(pool), await get(pool)] == [b"a", b"b", b"c"]
    assert len(network.streams) == 2 and network.addresses[0] == ("store.test", 80)
    assert network.streams[0].written.startswith(b"GET /k HTTP/1.1\r\n")


async def test_a_reset_on_a_kept_connection_is_sent_again_once():
    reset = ConnectionLost("ConnectionResetError: reset by peer")
    network = MockNetwork([ok(b"a"), reset], [ok(b"b")])
    pool = Pool("http://store.test", limit=1, network=network)
    assert [await get(pool), await get(pool)] == [b"a", b"b"]


async def test_a_timeout_on_a_kept_connection_is_not_sent_again():
    network = MockNetwork([ok(b"a"), Timeout("TimeoutError: ")], [ok(b"never")])
    pool = Pool("http://store.test", limit=1, network=network)
    assert await get(pool) == b"a"
    with pytest.raises(Timeout):
        await get(pool)
    assert len(network.streams) == 1


async def test_chunked_body_cut_off_is_a_protocol_error_a_transient_one():
    network = MockNetwork([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"])
    pool = Pool("http://store.test", limit=1, network=network)
    with pytest.raises(TransientError, match="incomplete chunked read"):
        await get(pool)


async def test_https_through_a_proxy_opens_a_tunnel_then_tls(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://u:pw@proxy.test:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    network = MockNetwork([b"HTTP/1.1 200 Connection established\r\n\r\n", ok(b"x")])
    pool = Pool("https://store.test", limit=1, network=network,
                proxy=proxy_for("https://store.test"))
    assert await get(pool) == b"x"
    stream = network.streams[0]
    assert network.addresses == [("proxy.test", 3128)] and stream.tls
    assert stream.written.startswith(b"CONNECT store.test:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"u:pw") in stream.written


async def test_a_proxy_refusing_credentials_is_permission_denied():
    network = MockNetwork([b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"])
    pool = Pool("https://store.test", limit=1, network=network,
                proxy=parse("http://proxy.test:3128"))
    with pytest.raises(PermissionDenied, match="407"):
        await get(pool)


class GoogleLike:
    """A protocol shaped like GCS's JSON API: media downloads, x-goog-hash, JSON errors."""

    def locate(self, key: str, query: Mapping[str, str | int] | None = None
               ) -> tuple[str, str]:
        return f"/storage/v1/b/bucket/o/{key.replace('/', '%2F')}", "alt=media"

    async def sign(self, method: str, path: str, query: str,
                   headers: Mapping[str, str]) -> dict[str, str]:
        return {**headers, "Authorization": "Bearer token"}

    def error(self, status: int, reason: str, body: bytes, what: str) -> TpiError:
        return (ObjectNotFound if status == 404 else TpiError)(f"{what}: {status} {reason}")

    def md5_of(self, headers: Mapping[str, str]) -> str | None:
        # a header of its own: the layers must not assume S3's ETag (the real GCS parsing
        # of x-goog-hash is plugins/tpi-gcp's, tested there)
        value = headers.get("x-test-md5")
        return base64_to_hex(value) if value else None

    def version(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-goog-generation", "")

    def pinned(self, version: str) -> dict[str, str]:
        return {"x-goog-if-generation-match": version}


def goog_hash(data: bytes) -> bytes:
    return b"x-test-md5: " + base64.b64encode(hashlib.md5(data).digest())


async def test_another_storage_downloads_through_the_same_layers(tmp_path):
    body = b"hello from a bucket"
    network = MockNetwork([ok(body, goog_hash(body) + b"\r\n"),
                           b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"])
    endpoint = Endpoint("https://storage.test", GoogleLike(), pool=1, network=network)
    await download.fetch(endpoint, "dir/obj", tmp_path / "obj", None, anyio.CapacityLimiter(1))
    assert (tmp_path / "obj").read_bytes() == body
    sent = network.streams[0].written
    assert sent.startswith(b"GET /storage/v1/b/bucket/o/dir%2Fobj?alt=media HTTP/1.1\r\n")
    assert b"authorization: Bearer token" in sent and b"range: bytes=0-" in sent
    with pytest.raises(ObjectNotFound, match="download gone: 404"):
        await download.fetch(endpoint, "gone", tmp_path / "gone", None,
                             anyio.CapacityLimiter(1))


async def test_a_body_that_does_not_match_its_md5_is_refused(tmp_path):
    network = MockNetwork([ok(b"damaged", goog_hash(b"original") + b"\r\n")])
    endpoint = Endpoint("https://storage.test", GoogleLike(), pool=1, network=network)
    with pytest.raises(IntegrityError, match="does not match"):
        await download.fetch(endpoint, "k", tmp_path / "k", None, anyio.CapacityLimiter(1))


async def test_network_errors_name_what_was_done_and_the_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    endpoint = Endpoint("https://storage.test", GoogleLike(), pool=1, network=MockNetwork())
    with pytest.raises(ConnectError, match=r"^read k: ConnectionRefusedError: .*"
                                           r"\(through the proxy http://proxy.test:3128\)$"):
        async with endpoint.request("GET", "k", what="read k"):
            pass

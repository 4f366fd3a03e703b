"""The S3 fast path over TLS (certificates checked) and through an HTTP proxy.

moto speaks plain HTTP, so a small TLS relay on 127.0.0.1 (a certificate from a test CA
made by trustme) stands in front of it. The proxy here is as small: ``CONNECT`` tunnels
and absolute-form requests, with optional Basic credentials, and it records what it was
asked. The endpoint the storage is given is a port where nothing listens, which only the
proxy knows how to reach: a request that skipped the proxy would fail.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme
from tpi_aws.storage import S3Storage

from tpi_core.errors import PermissionDenied, StorageError, TransientError
from tpi_core.transport.proxy import proxy_for

MiB = 1 << 20
pytestmark = pytest.mark.anyio


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""
    def one_way(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=one_way, args=(b, a), daemon=True)
    other.start()
    one_way(a, b)
    other.join()
    a.close()
    b.close()


class _Server:
    """Accepts on 127.0.0.1 and hands each connection to ``handle`` on its own thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            conn.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class TlsRelay(_Server):
    """TLS on the outside, plain TCP to ``target`` on the inside."""

    def __init__(self, context: ssl.SSLContext, target: tuple[str, int]):
        self.context, self.target = context, target
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        outer = self.context.wrap_socket(conn, server_side=True)
        _pipe(outer, socket.create_connection(self.target))


class Proxy(_Server):
    """An HTTP proxy: CONNECT tunnels and absolute-form requests, to the ``routes`` given
    (authority -> address), checking ``credentials`` (user, password) when set."""

    def __init__(self, routes: dict[str, tuple[str, int]],
                 credentials: tuple[str, str] | None = None):
        self.routes, self.credentials = routes, credentials
        self.asked: list[str] = []  # first request line of each connection
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(1 << 16)
            if not data:
                return conn.close()
            head += data
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        self.asked.append(f"{method} {target}")
        fields = {k.strip().lower(): v.strip()
                  for k, _, v in (line.partition(":") for line in lines[1:])}
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if fields.get("proxy-authorization") != expected:
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                return conn.close()
        authority = target if method == "CONNECT" else urlsplit(target).netloc
        if authority not in self.routes:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            return conn.close()
        upstream = socket.create_connection(self.routes[authority])
        if method == "CONNECT":
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream.sendall(head)  # absolute-form as it came: HTTP/1.1 servers take it
        _pipe(conn, upstream)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_moto(ca: trustme.CA, moto_server, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS relay to moto (its port) and the CA file that trusts it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    moto = urlsplit(moto_server.url)
    relay = TlsRelay(context, (moto.hostname, moto.port))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield relay.port, ca_file
    relay.close()


def _dead_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def _https_behind_proxy(monkeypatch, tls_moto, credentials: tuple[str, str],
                        userinfo: str) -> tuple[Proxy, str]:
    """An https endpoint that only the proxy reaches (it leads to the TLS relay), the
    proxy asking for ``credentials`` and the client giving ``userinfo``."""
    port, ca_file = tls_moto
    endpoint = f"127.0.0.1:{_dead_port()}"
    proxy = Proxy({endpoint: ("127.0.0.1", port)}, credentials=credentials)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://{endpoint}")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    monkeypatch.setenv("HTTPS_PROXY", f"http://{userinfo}@127.0.0.1:{proxy.port}")
    return proxy, endpoint


async def _round_trip(bucket: str, tmp_path: Path) -> None:
    """Small and large bodies both ways, a listing and a delete, all checked."""
    small, large = os.urandom(4096), os.urandom(10 * MiB + 3)  # large: the threaded path
    (tmp_path / "large.bin").write_bytes(large)
    async with S3Storage(bucket, "p") as store:
        await store.write("small.txt", small)
        assert await store.upload("large.bin", tmp_path / "large.bin") == \
            hashlib.md5(large).hexdigest()
        assert await store.read("small.txt") == small
        await store.download("large.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == large
        assert {i.key: i.size async for i in store.list()} == {
            "small.txt": len(small), "large.bin": len(large)}
        await store.delete(["small.txt"])
        assert [i.key async for i in store.list()] == ["large.bin"]


async def test_https_endpoint_with_its_ca_bundle(s3_env, bucket, tls_moto, monkeypatch,
                                                 tmp_path):
    port, ca_file = tls_moto
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    await _round_trip(bucket, tmp_path)


async def test_an_untrusted_certificate_fails_at_once(s3_env, bucket, tls_moto, monkeypatch):
    port, _ca_file = tls_moto  # the CA file is not given: the relay's certificate is unknown
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{port}")
    async with S3Storage(bucket) as store:
        with pytest.raises(StorageError, match="not trusted.*AWS_CA_BUNDLE") as caught:
            await store.write("k", b"never sent to an unverified server")
    assert not isinstance(caught.value, TransientError)  # not retried


async def test_https_through_a_connect_proxy(s3_env, bucket, tls_moto, monkeypatch,
                                             tmp_path, in_parts):
    proxy, endpoint = _https_behind_proxy(monkeypatch, tls_moto, ("user", "p@ss:word"),
                                          "user:p%40ss%3Aword")
    try:
        await _round_trip(bucket, tmp_path)  # the 10 MiB upload goes in parts (botocore)
    finally:
        proxy.close()
    assert proxy.asked and set(proxy.asked) == {f"CONNECT {endpoint}"}


async def test_http_through_a_proxy_with_absolute_targets(s3_env, bucket, moto_server,
                                                          monkeypatch, tmp_path):
    moto = urlsplit(moto_server.url)
    endpoint = f"127.0.0.1:{_dead_port()}"
    proxy = Proxy({endpoint: (moto.hostname, moto.port)})
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")
    monkeypatch.setenv("HTTP_PROXY", f"127.0.0.1:{proxy.port}")
    try:
        await _round_trip(bucket, tmp_path)
    finally:
        proxy.close()
    assert proxy.asked
    assert all(line.split()[1].startswith(f"http://{endpoint}/") for line in proxy.asked)


async def test_no_proxy_sends_straight_to_the_endpoint(s3_env, bucket, monkeypatch, tmp_path):
    proxy = Proxy({})
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    try:
        await _round_trip(bucket, tmp_path)
    finally:
        proxy.close()
    assert proxy.asked == []


async def test_refused_proxy_credentials_are_not_shown(s3_env, bucket, tls_moto, monkeypatch):
    proxy, endpoint = _https_behind_proxy(monkeypatch, tls_moto, ("user", "right"),
                                          "user:wrong-secret")
    try:
        async with S3Storage(bucket) as store:
            with pytest.raises(PermissionDenied, match="407") as caught:
                await store.read("k")
    finally:
        proxy.close()
    assert "wrong-secret" not in str(caught.value)
    assert "wrong-secret" not in repr(proxy_for(f"https://{endpoint}"))


async def test_an_unreachable_proxy_is_named_without_its_credentials(s3_env, bucket,
                                                                     monkeypatch):
    dead = _dead_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://user:secret-word@127.0.0.1:{dead}")
    async with S3Storage(bucket) as store:
        with pytest.raises(TransientError, match=f"through the proxy http://127.0.0.1:{dead}") \
                as caught:
            await store.read("k")
    assert "secret-word" not in str(caught.value)

"""Resumable uploads of large objects, by GCS's documented protocol, on a scripted network:
a session is opened, the file goes in one PUT, and after a failure the session is asked what
it committed (``Content-Range: bytes */SIZE``, answered 308 with ``Range``) and only the rest
is sent. fake-gcs-server cannot play this part: it answers such a status request by
finishing the object with what it has. The happy path on fake-gcs-server itself is in
``test_gcs_storage.py``."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from tpi_gcp import storage as gcs
from tpi_gcp.storage import GCSStorage, SessionGone

from tpi_core.errors import IntegrityError
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.exceptions import ConnectionLost
from tpi_core.transport.mock import MockNetwork

pytestmark = pytest.mark.anyio

SIZE = 3 << 20
SESSION = ("http://gcs.test/upload/storage/v1/b/bk/o?uploadType=resumable&name=p%2Fbig.bin"
           "&upload_id=u-1")


def answer(status: str, body: bytes = b"", head: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(), len(body), head, body)


def stored(data: bytes) -> bytes:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    return answer("200 OK", json.dumps({"md5Hash": md5}).encode())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    return path


async def upload(network: MockNetwork, path, monkeypatch) -> str:
    monkeypatch.setenv(gcs.RESUMABLE_ENV, str(1 << 20))
    monkeypatch.setattr(gcs.anyio, "sleep", _no_wait)
    async with GCSStorage("bk", "p", endpoint_url="http://gcs.test") as storage:
        storage._endpoint = Endpoint("http://gcs.test", storage._endpoint.protocol, pool=4,
                                     network=network)
        return await storage.upload("big.bin", path)


async def _no_wait(seconds: float) -> None:
    return None


def head_and_body(written: bytearray) -> tuple[str, bytes]:
    head, _, body = bytes(written).partition(b"\r\n\r\n")
    return head.decode(), body


async def test_a_cut_upload_resumes_from_what_gcs_committed(big, monkeypatch):
    data = big.read_bytes()
    committed = (1 << 20) - 1
    network = MockNetwork(
        [answer("200 OK", head=f"Location: {SESSION}\r\n".encode())],
        [ConnectionLost("ConnectionResetError: reset by peer")],
        [answer("308 Resume Incomplete", head=f"Range: bytes=0-{committed}\r\n".encode())],
        [stored(data)])
    assert await upload(network, big, monkeypatch) == hashlib.md5(data).hexdigest()
    opened, first, asked, rest = (head_and_body(s.written) for s in network.streams)
    assert opened[0].startswith("POST /upload/storage/v1/b/bk/o?uploadType=resumable&name=p%2F"
                                "big.bin") and f"x-upload-content-length: {SIZE}" in opened[0]
    assert first[0].startswith("PUT /upload/storage/v1/b/bk/o?uploadType=resumable")
    assert "upload_id=u-1" in first[0] and f"bytes 0-{SIZE - 1}/{SIZE}" in first[0]
    assert f"content-range: bytes */{SIZE}" in asked[0] and asked[1] == b""
    assert f"content-range: bytes {committed + 1}-{SIZE - 1}/{SIZE}" in rest[0]
    assert rest[1] == data[committed + 1:]  # only the rest went again


async def test_a_session_found_complete_after_a_cut_is_not_sent_again(big, monkeypatch):
    data = big.read_bytes()
    network = MockNetwork(
        [answer("200 OK", head=f"Location: {SESSION}\r\n".encode())],
        [ConnectionLost("ConnectionResetError: reset by peer")],
        [stored(data)])
    assert await upload(network, big, monkeypatch) == hashlib.md5(data).hexdigest()
    assert len(network.streams) == 3


async def test_a_forgotten_session_fails_the_file_for_the_sync_to_send_again(big, monkeypatch):
    network = MockNetwork(
        [answer("200 OK", head=f"Location: {SESSION}\r\n".encode())],
        [ConnectionLost("ConnectionResetError: reset by peer")],
        [answer("410 Gone", b'{"error": {"code": 410, "message": "session expired"}}')])
    with pytest.raises(SessionGone, match="resumable session is gone.*session expired"):
        await upload(network, big, monkeypatch)


async def test_what_gcs_stored_is_checked_against_the_whole_file(big, monkeypatch):
    network = MockNetwork([answer("200 OK", head=f"Location: {SESSION}\r\n".encode())],
                          [stored(b"something else")])
    with pytest.raises(IntegrityError, match="stored md5"):
        await upload(network, big, monkeypatch)

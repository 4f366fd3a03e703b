"""The storage server on its own: token, health, objects both ways (plain and chunked
bodies), the listing stream, keep-alive, imports a bare pod has, signals, refusal to start."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tpi_k8s.server import MARK_HEADER, TOKEN_HEADER, main, serve

AUTH = {TOKEN_HEADER: "tok"}
BIG = 3 << 20


class Reply:
    """An answer read whole: status, headers, body."""

    def __init__(self, response: http.client.HTTPResponse):
        self.status, self.headers, self.body = response.status, response.headers, response.read()

    def json(self):
        return json.loads(self.body)


class Client:
    """One keep-alive connection to the server under test."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def __call__(self, method: str, path: str, query: dict | None = None, body=None,
                 headers: dict | None = None) -> Reply:
        target = f"{path}?{urlencode(query)}" if query else path
        self.connection.request(method, target, body=body, headers=headers or {})
        return Reply(self.connection.getresponse())


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def port(root) -> Iterator[int]:
    server = serve(root, "tok", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client(port) -> Iterator[Client]:
    client = Client(port)
    yield client
    client.connection.close()


def test_health_needs_no_token_everything_else_does(client):
    reply = client("GET", "/v1/health")
    assert (reply.status, reply.body, reply.headers[MARK_HEADER]) == (200, b"ok", "1")
    reply = client("GET", "/v1/list")
    assert reply.status == 401 and reply.headers[MARK_HEADER] == "1"
    assert reply.json()["error"] == "unauthorized"
    assert client("GET", "/v1/list", headers={TOKEN_HEADER: "wrong"}).status == 401


def test_put_list_get_delete(client, root):
    for key in ("a/1.txt", "a/2.txt", "b.txt"):
        assert client("PUT", "/v1/object", {"key": key}, key.encode(), AUTH).status == 204
    reply = client("GET", "/v1/list", {"prefix": "a/"}, headers=AUTH)
    lines = [json.loads(line) for line in reply.body.splitlines()]
    assert sorted((d["key"], d["size"]) for d in lines) == [("a/1.txt", 7), ("a/2.txt", 7)]
    assert client("GET", "/v1/object", {"key": "b.txt"}, headers=AUTH).body == b"b.txt"
    reply = client("POST", "/v1/delete", body=json.dumps({"keys": ["b.txt", "nope"]}),
                   headers=AUTH)
    assert reply.status == 204 and reply.headers[MARK_HEADER] == "1"
    reply = client("GET", "/v1/object", {"key": "b.txt"}, headers=AUTH)
    assert reply.status == 404 and reply.json()["error"] == "not_found"
    assert reply.headers[MARK_HEADER] == "1"
    assert client("GET", "/v1/list", {"prefix": "../"}, headers=AUTH).status == 400
    assert sorted(p.name for p in (root / "a").iterdir()) == ["1.txt", "2.txt"]


def test_unsafe_keys_and_bad_requests(client, root, tmp_path):
    for key in ("../x", "/etc/passwd", "a/../../b", ""):
        reply = client("PUT", "/v1/object", {"key": key}, b"x", AUTH)
        assert reply.status == 400 and reply.json()["error"] == "unsafe", key
    (tmp_path / "outside").mkdir()
    root.mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    reply = client("PUT", "/v1/object", {"key": "link/planted"}, b"x", AUTH)
    assert reply.json()["error"] == "unsafe" and not list((tmp_path / "outside").iterdir())
    for body in (b"not json", b"[1]", b'{"keys": "a"}', b'{"keys": [1]}'):
        reply = client("POST", "/v1/delete", body=body, headers=AUTH)
        assert reply.status == 400 and reply.json()["error"] == "bad_request", body
    assert client("POST", "/v1/delete", body=b"{}", headers=AUTH).status == 204
    assert client("GET", "/v1/nothing", headers=AUTH).status == 404
    reply = client("DELETE", "/v1/object", {"key": "k"}, headers=AUTH)
    assert reply.status == 405 and reply.headers[MARK_HEADER] == "1"


def test_a_chunked_put_streams_to_disk(client, root):
    data = os.urandom(BIG)
    pieces = (data[i:i + 100_003] for i in range(0, len(data), 100_003))
    reply = client("PUT", "/v1/object", {"key": "big/file.bin"}, pieces, AUTH)
    assert reply.status == 204
    assert (root / "big" / "file.bin").read_bytes() == data
    assert os.listdir(root / "big") == ["file.bin"]  # no temporary file left


def test_a_broken_chunked_body_is_refused(port, root):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"PUT /v1/object?key=k HTTP/1.1\r\nHost: x\r\nX-Tpi-Token: tok\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"bad_request" in answer
    assert not (root / "k").exists() and os.listdir(root) == []


def test_a_large_get_has_its_length(client, root):
    data = os.urandom(BIG + 7)
    root.mkdir()
    (root / "big.bin").write_bytes(data)
    reply = client("GET", "/v1/object", {"key": "big.bin"}, headers=AUTH)
    assert reply.status == 200 and reply.headers["Content-Length"] == str(len(data))
    assert reply.body == data
    reply = client("HEAD", "/v1/object", {"key": "big.bin"}, headers=AUTH)
    assert reply.headers["Content-Length"] == str(len(data)) and reply.body == b""


def test_a_long_listing_streams(client, root):
    for index in range(2500):
        folder = root / f"d{index % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"k{index}").write_bytes(b"x" * (index % 5))
    (root / "d0" / ".tpi-tmp-1-2-k0").write_bytes(b"half written")
    reply = client("GET", "/v1/list", headers=AUTH)
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    docs = [json.loads(line) for line in reply.body.splitlines()]
    assert sorted(d["key"] for d in docs) == sorted(f"d{i % 7}/k{i}" for i in range(2500))
    assert all(d["size"] == int(d["key"].rpartition("k")[2]) % 5 for d in docs)
    reply = client("GET", "/v1/list", {"prefix": "d3/k1"}, headers=AUTH)
    assert all(json.loads(line)["key"].startswith("d3/k1") for line in reply.body.splitlines())


def test_requests_share_one_connection(client):
    assert client("PUT", "/v1/object", {"key": "k"}, b"first", AUTH).status == 204
    sock = client.connection.sock
    assert client("GET", "/v1/object", {"key": "k"}, headers=AUTH).body == b"first"
    assert client("GET", "/v1/list", headers=AUTH).status == 200  # chunked, then more
    reply = client("PUT", "/v1/object", {"key": "k"}, b"x" * 100_000, {TOKEN_HEADER: "bad"})
    assert reply.status == 401  # its body is read, not taken for the next request
    assert client("GET", "/v1/object", {"key": "k"}, headers=AUTH).body == b"first"
    assert client.connection.sock is sock


def test_the_server_imports_and_serves_without_the_sdk_packages(tmp_path):
    refused = ["aiohttp", "kubernetes_asyncio", "yaml", "click", "rich"]
    code = f"""
import sys
REFUSED = {refused!r}
assert not [m for m in sys.modules if m.partition(".")[0] in REFUSED]

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ImportError(f"{{name}} is not installed in the pod")
        return None

sys.meta_path.insert(0, Refuse())
import http.client, threading
import tpi_k8s.server

server = tpi_k8s.server.serve(sys.argv[1], "tok", "127.0.0.1", 0)
threading.Thread(target=server.serve_forever, daemon=True).start()
http = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
for method, target, body, status in [("PUT", "/v1/object?key=a/b", b"v", 204),
                                     ("GET", "/v1/list", None, 200),
                                     ("GET", "/v1/object?key=a/b", None, 200),
                                     ("POST", "/v1/delete", b'{{"keys": ["a/b"]}}', 204)]:
    http.request(method, target, body=body, headers={{"X-Tpi-Token": "tok"}})
    reply = http.getresponse()
    reply.read()
    assert reply.status == status, (method, target, reply.status)
assert not [m for m in sys.modules if m.partition(".")[0] in REFUSED]
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_main_serves_until_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "TPI_STORAGE_TOKEN": "tok"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tpi_k8s.server", "--root", str(tmp_path / "claim"),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        limit = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                client = Client(port)
                try:
                    reply = client("GET", "/v1/health")
                    assert client("PUT", "/v1/object", {"key": "k"}, b"v", AUTH).status == 204
                finally:
                    client.connection.close()
                break
            assert process.poll() is None and time.monotonic() < limit
            time.sleep(0.05)
        assert (reply.status, reply.body) == (200, b"ok")
        assert (tmp_path / "claim" / "k").read_bytes() == b"v"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert out == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_the_server_refuses_to_start_without_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TPI_STORAGE_TOKEN", raising=False)
    assert main(["--root", str(tmp_path)]) == 2
    assert "TPI_STORAGE_TOKEN" in capsys.readouterr().err

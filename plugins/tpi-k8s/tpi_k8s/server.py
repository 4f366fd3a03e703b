"""The storage server: a task's claim as an object store, reached through the pod proxy.

``python -m tpi_k8s.server --root DIR --port 8080`` serves the files under ``DIR`` (the
claim at the task's sub-path) to :class:`tpi_k8s.storage.K8sStorage`, which reaches it
through the API server (``/api/v1/namespaces/NS/pods/POD:8080/proxy/...``), so the workdir
travels with the user's Kubernetes credentials and no port is published. Every request but
the health check carries the task's token (``X-Tpi-Token``, from ``$TPI_STORAGE_TOKEN``):
the pod network is shared by every workload of the cluster.

    GET  /v1/health            readiness (no token)
    GET  /v1/list?prefix=P     one JSON line per object under P, streamed
    GET  /v1/object?key=K      the object's bytes
    PUT  /v1/object?key=K      create or replace (written to a temporary file, then renamed)
    POST /v1/delete            {"keys": [...]}; missing keys are fine

Keys are checked as the core checks them (no ``..``, no absolute key), and no request may
leave the root through a symlink planted on the claim.

The pod runs a plain Python image with tpi and anyio only, so the server stands on the
standard library's threading HTTP server (a thread per connection, HTTP/1.1 keep-alive);
request bodies may come with ``Content-Length`` or chunked, and stream to disk.
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import os
import re
import signal
import socketserver
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

import anyio

from tpi_core.errors import UnsafePathError
from tpi_core.storage import cut_name
from tpi_core.storage.local import LocalStorage, checked_key
from tpi_k8s.wire import CHUNK, MARK_HEADER, TOKEN_HEADER

_TMP_MARK = ".tpi-tmp-"
_TEMP_IDS = itertools.count()
_HEALTH = "/v1/health"
_JSON_LIMIT = 16 * CHUNK
"""The largest delete request read (a batch of keys, not an object)."""
_DRAIN_LIMIT = 16 * CHUNK
"""How much of an unread body is read and dropped to keep its connection; past it, the
connection closes."""
_LINE_LIMIT = 4096
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_IDLE = 300.0
"""Seconds a connection may stay silent before its thread lets it go."""
_ROUTES = {
    _HEALTH: {"GET": "_health"},
    "/v1/list": {"GET": "_list"},
    "/v1/object": {"GET": "_get", "PUT": "_put"},
    "/v1/delete": {"POST": "_delete"},
}
"""Path -> method -> the :class:`Handler` method answering it (HEAD is answered as GET)."""


class BadRequest(Exception):
    """A request the server cannot read: broken framing, or a body that is not as expected."""


class Body:
    """A request's body as it arrives: ``Content-Length`` bytes, or the chunked transfer
    coding decoded; never more than one read's worth in memory."""

    def __init__(self, stream: BinaryIO, length: int | None):
        self._stream = stream
        self._chunked = length is None
        self._left = length or 0
        self.done = length == 0

    @classmethod
    def of(cls, headers: Any, stream: BinaryIO) -> Body:
        """The body the request's headers announce (none when they announce none)."""
        coding = headers.get("Transfer-Encoding")
        if coding is not None:
            if coding.replace(" ", "").lower().split(",")[-1] != "chunked":
                raise BadRequest(f"unsupported transfer coding {coding!r}")
            return cls(stream, None)
        length = headers.get("Content-Length")
        if length is None:
            return cls(stream, 0)
        if not length.strip().isdigit():
            raise BadRequest(f"bad Content-Length {length!r}")
        return cls(stream, int(length))

    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes of the body; b"" at its end."""
        if self.done:
            return b""
        if self._chunked and not self._left:
            self._left = self._chunk_size()
            if not self._left:
                self._skip_trailers()
                self.done = True
                return b""
        data = self._stream.read(min(size, self._left))
        if not data:
            raise ConnectionResetError("the request body ended early")
        self._left -= len(data)
        if not self._left:
            if not self._chunked:
                self.done = True
            elif self._stream.read(2) != b"\r\n":
                raise BadRequest("a chunk does not end with CRLF")
        return data

    def drain(self, limit: int = _DRAIN_LIMIT) -> bool:
        """Read and drop the rest of the body, up to ``limit`` bytes; whether it all went."""
        while limit > 0 and not self.done:
            limit -= len(self.read(min(CHUNK, limit)))
        return self.done

    def _line(self) -> bytes:
        line = self._stream.readline(_LINE_LIMIT + 1)
        if not line:
            raise ConnectionResetError("the request body ended early")
        if len(line) > _LINE_LIMIT or not line.endswith(b"\n"):
            raise BadRequest("a chunk header line is too long")
        return line.rstrip(b"\r\n")

    def _chunk_size(self) -> int:
        size = self._line().split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size):
            raise BadRequest(f"bad chunk size {size[:32]!r}")
        return int(size, 16)

    def _skip_trailers(self) -> None:
        for _ in range(100):
            if not self._line():
                return
        raise BadRequest("too many trailer fields")


class StorageServer(ThreadingHTTPServer):
    """The server of one root and one token; :meth:`serve_forever` serves it."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], root: Path, token: str):
        self.root = Path(root).resolve()
        self.token = token
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup of :class:`~http.server.HTTPServer`."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class Handler(BaseHTTPRequestHandler):
    """One connection's requests, in turn (see the module docstring for the routes)."""

    protocol_version = "HTTP/1.1"
    server_version = "tpi-storage"
    timeout = _IDLE
    server: StorageServer

    def do_GET(self) -> None:
        """Every method goes through one dispatch: token, route, errors as JSON."""
        self._dispatch()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def send_response(self, code: int, message: str | None = None) -> None:
        """Every answer carries :data:`MARK_HEADER`: a client tells ours from the proxy's."""
        self._started = True
        super().send_response(code, message)
        self.send_header(MARK_HEADER, "1")

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """A request http.server cannot parse, or a method no route has, as our JSON error."""
        self.close_connection = True
        self._reply(code, _error("bad_request" if code < 500 else "not_implemented",
                                 message or explain or self.responses.get(code, ("",))[0]),
                    "application/json")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log (errors are still logged)."""

    def _dispatch(self) -> None:
        self._started = False
        url = urlsplit(self.path)
        self.query = dict(reversed(parse_qsl(url.query, keep_blank_values=True)))
        self.body = Body(self.rfile, 0)
        try:
            self.body = Body.of(self.headers, self.rfile)
        except BadRequest as exc:
            self._unreadable(exc)
            return
        try:
            self._route(url.path)()
        except UnsafePathError as exc:
            self._fail(400, "unsafe", str(exc))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._fail(404, "not_found", self.query.get("key", ""))
        except BadRequest as exc:
            self._unreadable(exc)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug answers 500, the server stays up
            self.log_error("%s", traceback.format_exc().rstrip())
            self._fail(500, "internal", f"{type(exc).__name__}: {exc}")
        else:
            self._finish_body()

    def _route(self, path: str) -> Callable[[], None]:
        if path != _HEALTH and not hmac.compare_digest(
                self.headers.get(TOKEN_HEADER, "").encode(), self.server.token.encode()):
            return lambda: self._fail(401, "unauthorized", "missing or wrong storage token")
        methods = _ROUTES.get(path)
        if methods is None:
            return lambda: self._fail(404, "not_found", f"no route {path}")
        name = methods.get("GET" if self.command == "HEAD" else self.command)
        if name is None:
            allowed = ", ".join(methods)
            return lambda: self._fail(405, "method_not_allowed", f"{path} takes {allowed}")
        return getattr(self, name)

    def _unreadable(self, exc: BadRequest) -> None:
        """Answer a request whose body cannot be read, and close: where the next request
        of the connection would start is unknown."""
        self.body = Body(self.rfile, 0)
        self.close_connection = True
        self._fail(400, "bad_request", str(exc))

    def _finish_body(self) -> None:
        """Read what is left of the request body: the next request of the connection starts
        after it, and a client still sending gets the answer rather than a reset connection.
        A body too long or broken closes the connection."""
        try:
            drained = self.body.drain()
        except (BadRequest, ConnectionError, TimeoutError):
            drained = False
        if not drained:
            self.close_connection = True

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _fail(self, status: int, code: str, message: str) -> None:
        """Answer an error, unless the answer has begun (then the connection is cut)."""
        if self._started:
            self.close_connection = True
            return
        self._finish_body()
        self._reply(status, _error(code, message), "application/json")

    def _health(self) -> None:
        self._reply(200, b"ok", "text/plain; charset=utf-8")

    def _list(self) -> None:
        root, prefix = self.server.root, self.query.get("prefix", "")
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if top:
            _inside(root, top + "/x")
        chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        write = self._write_chunk if chunked else self.wfile.write
        anyio.run(_stream_listing, LocalStorage(root), prefix, write)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _get(self) -> None:
        path = _inside(self.server.root, self.query.get("key", ""))
        if not path.is_file():
            raise FileNotFoundError(path)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            while size > 0:
                chunk = handle.read(min(CHUNK, size))
                if not chunk:
                    raise ConnectionAbortedError(f"{path} shrank while it was sent")
                self.wfile.write(chunk)
                size -= len(chunk)

    def _put(self) -> None:
        root, key = self.server.root, self.query.get("key", "")
        path = _inside(root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _inside(root, key)  # again, now that the parents exist
        temp = path.with_name(f"{_TMP_MARK}{os.getpid()}-{next(_TEMP_IDS)}-"
                              f"{cut_name(path.name)}")
        try:
            with temp.open("wb") as handle:
                while chunk := self.body.read(CHUNK):
                    handle.write(chunk)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        self._reply(204)

    def _delete(self) -> None:
        data = bytearray()
        while chunk := self.body.read(CHUNK):
            data += chunk
            if len(data) > _JSON_LIMIT:
                raise BadRequest("the delete request is too large")
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        keys = doc.get("keys", []) if isinstance(doc, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self._fail(400, "bad_request", 'expected {"keys": [...]}')
            return
        root = self.server.root
        for key in keys:
            _inside(root, key)
        anyio.run(LocalStorage(root).delete, keys)
        self._reply(204)


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def _inside(root: Path, key: str) -> Path:
    """The path of ``key`` under ``root``, refusing keys and symlinks that lead out."""
    path = root / checked_key(key)
    if not path.parent.resolve().is_relative_to(root) or path.is_symlink():
        raise UnsafePathError(f"storage key {key!r} leads out of the storage root")
    return path


async def _stream_listing(storage: LocalStorage, prefix: str,
                          write: Callable[[bytes], object]) -> None:
    """Write the listing's lines as the walk finds them, up to 64 KiB to a write."""
    pending = bytearray()
    async for info in storage.list(prefix):
        line = {"key": info.key, "size": info.size, "mtime": info.mtime}
        pending += json.dumps(line).encode() + b"\n"
        if len(pending) >= 1 << 16:
            write(bytes(pending))
            pending.clear()
    if pending:
        write(bytes(pending))


def serve(root: Path, token: str, host: str = "0.0.0.0", port: int = 8080) -> StorageServer:
    """A server bound to ``host:port`` (port 0: any free port, see ``server_address``) for
    ``root`` and ``token``; it serves once :meth:`~StorageServer.serve_forever` runs."""
    return StorageServer((host, port), root, token)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM (or SIGINT), then stop accepting and return 0."""
    parser = argparse.ArgumentParser(prog="python -m tpi_k8s.server",
                                     description="Serve a tpi task's claim to the pod proxy.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    token = os.environ.get("TPI_STORAGE_TOKEN", "")
    if not token:
        print("tpi storage server: TPI_STORAGE_TOKEN is not set", file=sys.stderr)
        return 2
    args.root.mkdir(parents=True, exist_ok=True)
    server = serve(args.root, token, args.host, args.port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=server.serve_forever, name="tpi-storage", daemon=True)
    worker.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

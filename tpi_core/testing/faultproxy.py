"""A fault-injecting HTTP reverse proxy on 127.0.0.1, in front of an emulator.

    with FaultProxy(moto.url, rate=0.25, seed=7) as proxy:
        ...                         # point the client at proxy.url
    proxy.stats["slowdown"], proxy.log

For a share ``rate`` of requests it injects one of ``kinds`` (picked at random):

    slowdown   503 with S3's SlowDown error body; the emulator never sees the request
    internal   500 InternalError; the emulator never sees the request
    reset      the connection is reset (RST) before any byte of a response
    cut        the emulator answers, the client gets half of the response, then a reset
    corrupt    one byte of the request body (or, for a request without one, of the response
               body) is flipped: for integrity checks, not in the default ``kinds``

``when(method, target, headers)`` (headers lower-cased) limits faults to some requests.
``latency`` seconds pass before each request goes on, as a round trip to a cloud would
(requests on different connections wait at the same time).
Requests pass through unchanged (Host included, so a server that checks signatures still
accepts them); each goes to the emulator on a fresh connection. ``log`` records every request
as ``(method, target, outcome)``, which the benchmark uses to count requests. The proxy runs
its own event loop in a thread, so it serves sync and async clients alike.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

KINDS = ("slowdown", "internal", "reset", "cut")
_ERRORS = {"slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
           "internal": (500, "Internal Server Error", "InternalError",
                        "We encountered an internal error. Please try again.")}
_LIMIT = 1 << 20
Selector = Callable[[str, str, dict[str, str]], bool]


class FaultProxy:
    """The proxy; ``rate`` and ``kinds`` may be changed while it runs."""

    def __init__(self, upstream: str, *, rate: float = 0.0, kinds: tuple[str, ...] = KINDS,
                 seed: int | None = None, when: Selector | None = None, latency: float = 0.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate, self.kinds, self.when = rate, kinds, when
        self.latency = latency
        self.log: list[tuple[str, str, str]] = []
        self.url = ""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> Counter:
        """Outcomes so far: ``forwarded`` and one count per fault kind."""
        with self._lock:
            return Counter(outcome for _m, _t, outcome in self.log)

    def clear(self) -> None:
        """Forget the log (counts start again from zero)."""
        with self._lock:
            self.log.clear()

    def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1; returns once it accepts connections."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="faultproxy")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; wait for the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_LIMIT)
        self.url = "http://127.0.0.1:%d" % server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopping.wait()

    def _pick(self, method: str, target: str, headers: dict[str, str]) -> str:
        eligible = self.when is None or self.when(method, target, headers)
        with self._lock:
            roll, choice = self._random.random(), self._random.choice(self.kinds)
            outcome = choice if eligible and roll < self.rate else "forwarded"
            self.log.append((method, target, outcome))
        return outcome

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await _read_request(reader, writer):
                method, target, headers, head, body = request
                outcome = self._pick(method, target, headers)
                if self.latency:
                    await asyncio.sleep(self.latency)
                if not await self._answer(outcome, method, head, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down; asyncio 3.11 logs a cancelled connection task as an error
        finally:
            writer.close()

    async def _answer(self, outcome: str, method: str, head: bytes, body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        """Reply to one request; False when the client connection is finished."""
        if outcome == "reset":
            _reset(writer)
            return False
        if outcome in _ERRORS:
            writer.write(_error_response(outcome, method))
            await writer.drain()
            return True
        corrupt_request = outcome == "corrupt" and bool(body)
        response, keep_alive = await self._forward(head + (_flip(body) if corrupt_request
                                                           else body))
        if outcome == "corrupt" and not corrupt_request:
            response = _flip_body(response)
        if outcome == "cut":
            writer.write(response[:len(response) // 2])
            await writer.drain()
            _reset(writer)
            return False
        writer.write(response)
        await writer.drain()
        return keep_alive

    async def _forward(self, raw: bytes) -> tuple[bytes, bool]:
        reader, writer = await asyncio.open_connection(*self.upstream, limit=_LIMIT)
        try:
            writer.write(raw)
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
        return _client_response(response)


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        ) -> tuple[str, str, dict[str, str], bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target = lines[0].split(" ")[:2]
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        lines = [line for line in lines if not line.lower().startswith("expect:")]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, target, headers, _with_close(lines), body


def _with_close(lines: list[str]) -> bytes:
    """The request head with ``Connection: close`` (one upstream connection per request)."""
    kept = [line for line in lines if line and not line.lower().startswith("connection:")]
    return ("\r\n".join(kept + ["Connection: close"]) + "\r\n\r\n").encode("latin-1")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    raw = b""
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0], 16)
        raw += line + await reader.readexactly(size + 2) if size else line
        if not size:
            break
    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
        raw += trailer
    return raw + b"\r\n"


def _client_response(response: bytes) -> tuple[bytes, bool]:
    """The upstream response for the client; keep-alive when its length is known."""
    head, sep, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    lowered = head.lower()
    keep_alive = b"\r\ncontent-length:" in lowered or b"chunked" in lowered
    lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    return b"\r\n".join(lines) + sep + body, keep_alive


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def _flip_body(response: bytes) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    return head + sep + _flip(body) if body else response


def _error_response(kind: str, method: str) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
    return head if method == "HEAD" else head + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed server or a load balancer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

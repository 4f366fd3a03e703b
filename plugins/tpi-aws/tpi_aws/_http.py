"""A lean HTTP/1.1 client for the S3 fast path: h11 on asyncio streams, a pool per origin.

Why not aiohttp, which botocore's async flavour brings anyway: importing it costs about
110 ms (it builds two TLS contexts at import), a third of a whole no-change ``tpi sync``,
and its generic machinery adds CPU to each of the thousands of small requests a tree of
small files makes. Here h11 writes every request head (validating names and values) and
parses every response head and any chunked or close-delimited body; a body framed by
Content-Length (every object body S3 sends) is read straight from the stream, without h11's
buffer copies (they cost 0.2 s per 200 MB). A request body is bytes, or a
:class:`Stream` that can be produced again.

The pool keeps at most ``limit`` connections busy, reuses idle ones newest first, gives up
those idle for more than ``keepalive`` seconds (local servers drop them after 5 s), and
sends a request again, once, on a new connection when a kept one turns out to be closed
before any answer came (requests here are idempotent: GET, PUT, HEAD, DELETE).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

CHUNK = 256 << 10
"""Bytes read from a socket at a time, and the stream's buffer limit (reading pauses at
twice this): bodies on the event loop are at most 8 MiB, and with 64 of them in flight a
larger buffer only holds memory (large bodies go on threads, see _bulk.py)."""
_ONE_WRITE = 64 << 10
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True)
class Stream:
    """A request body of ``length`` bytes that ``open()`` produces, again on each call."""

    length: int
    open: Callable[[], AsyncIterator[bytes]]


class ConnectionLost(Exception):
    """The connection ended before a complete answer (a transient network failure)."""


class BodyMismatch(Exception):
    """A Stream gave more or fewer bytes than it announced (its file changed meanwhile)."""


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case; repeated ones joined by ``, ``."""

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self._map: dict[str, str] = {}
        for name, value in raw:  # h11 gives names in lower case
            key, text = name.decode("latin-1"), value.decode("latin-1")
            self._map[key] = f"{self._map[key]}, {text}" if key in self._map else text

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.idle_since = 0.0
        self.protocol = h11.Connection(h11.CLIENT)

    def usable(self, now: float, keepalive: float) -> bool:
        # bytes or EOF that came while idle (a server's 408 before it closes) answer no one
        # (StreamReader has no public "anything buffered?"; _buffer is there since 3.4)
        return (now - self.idle_since < keepalive and not self.reader._buffer
                and not self.reader.at_eof() and not self.writer.is_closing())

    async def read(self, limit: int) -> bytes:
        async with asyncio.timeout(self.timeout):
            return await self.reader.read(limit)

    async def write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > _ONE_WRITE:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()


class Response:
    """Status, headers and the body, read by the caller while the request is open."""

    def __init__(self, connection: _Connection, head: h11.Response, method: str):
        self._conn = connection
        self.method = method
        self.status = head.status_code
        self.reason = head.reason.decode("latin-1")
        self.headers = Headers(head.headers)
        length = self.headers.get("content-length")
        chunked = "transfer-encoding" in self.headers
        self.content_length = int(length) if length is not None and not chunked else None
        self._keep = head.http_version == b"1.1" and "close" not in self.headers.get(
            "connection", "").lower()
        if method == "HEAD" or self.status in _NO_BODY_STATUS:
            self._left: int | None = 0
        else:
            self._left = self.content_length  # None: h11 frames the body (chunked, close)
        self._pending = b""
        self._done = self._left == 0

    @property
    def reusable(self) -> bool:
        return self._done and self._keep

    async def read_chunk(self, limit: int = CHUNK) -> bytes:
        """The next piece of the body, at most ``limit`` bytes; ``b""`` at its end."""
        if self._done:
            return b""
        if self._left is not None:
            data = await self._conn.read(min(limit, self._left))
            if not data:
                raise ConnectionLost(f"body ended {self._left} bytes short")
            self._left -= len(data)
            self._done = self._left == 0
            return data
        if not self._pending:
            self._pending = await self._next_framed()
        data, self._pending = self._pending[:limit], self._pending[limit:]
        return data

    async def _next_framed(self) -> bytes:
        protocol = self._conn.protocol
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await self._conn.read(CHUNK))
            elif isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                self._keep = self._keep and protocol.their_state is h11.DONE and not (
                    protocol.trailing_data[0])
                return b""
            else:
                raise ConnectionLost(f"unexpected {type(event).__name__} in a body")

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        if self._left:
            try:
                async with asyncio.timeout(self._conn.timeout + self._left / (1 << 20)):
                    data = await self._conn.reader.readexactly(self._left)
            except asyncio.IncompleteReadError as exc:
                raise ConnectionLost(f"body ended {self._left - len(exc.partial)} bytes "
                                     "short") from exc
            self._left, self._done = 0, True
            return data
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def readexactly(self, count: int) -> bytes:
        """Exactly ``count`` bytes of the body (ConnectionLost if it is shorter)."""
        parts, wanted = [], count
        while wanted:
            chunk = await self.read_chunk(wanted)
            if not chunk:
                raise ConnectionLost(f"body ended {wanted} bytes short")
            parts.append(chunk)
            wanted -= len(chunk)
        return b"".join(parts)


class Pool:
    """Connections to one origin (``scheme://host[:port]``), at most ``limit`` in use."""

    def __init__(self, origin: str, *, limit: int, ca_bundle: str | None = None,
                 keepalive: float = 4.0, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, user_agent: str = "tpi"):
        parts = urlsplit(origin)
        self._tls = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or (443 if self._tls else 80))
        self._host = parts.netloc.encode()
        self._ca_bundle = ca_bundle
        self._context: ssl.SSLContext | None = None  # made on first use: ~20 ms
        self._keepalive, self._connect_timeout = keepalive, connect_timeout
        self._read_timeout = read_timeout
        self._agent = user_agent.encode()
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    @asynccontextmanager
    async def request(self, method: str, target: str, headers: Mapping[str, str],
                      body: bytes | Stream | None = None) -> AsyncIterator[Response]:
        """Send a request; yield the response, whose body must be read inside the block."""
        async with self._slots:
            response = await self._exchange(method, target, headers, body)
            connection = response._conn
            self._busy.add(connection)
            try:
                yield response
            finally:
                self._busy.discard(connection)
                if response.reusable:
                    connection.protocol = h11.Connection(h11.CLIENT)
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                else:
                    connection.close()

    async def _exchange(self, method: str, target: str, headers: Mapping[str, str],
                        body: bytes | Stream | None) -> Response:
        while True:
            connection, kept = self._take(), True
            if connection is None:
                connection, kept = await self._connect(), False
            try:
                await self._send(connection, method, target, headers, body)
                return await self._head(connection, method)
            except BaseException as exc:
                connection.close()
                # a kept connection found closed; not a slow server (TimeoutError is an
                # OSError) nor a body that changed
                retry = isinstance(exc, (OSError, asyncio.IncompleteReadError, ConnectionLost,
                                         h11.RemoteProtocolError)) and not isinstance(
                                             exc, TimeoutError)
                if not kept or not retry:
                    raise
                for stale in self._idle:  # a server that closed one likely closed them all
                    stale.close()
                self._idle.clear()

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now, self._keepalive):
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        context = None
        if self._tls:
            if self._context is None:
                self._context = ssl.create_default_context(cafile=self._ca_bundle)
            context = self._context
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                *self._address, ssl=context, limit=CHUNK,
                server_hostname=self._address[0] if context else None)
        return _Connection(reader, writer, self._read_timeout)

    async def _send(self, connection: _Connection, method: str, target: str,
                    headers: Mapping[str, str], body: bytes | Stream | None) -> None:
        length = 0 if body is None else body.length if isinstance(body, Stream) else len(body)
        fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        names = {name for name, _ in fields}
        fields += [(name, value) for name, value in ((b"host", self._host),
                                                     (b"user-agent", self._agent))
                   if name not in names]
        if body is not None or method in ("PUT", "POST"):
            fields.append((b"content-length", str(length).encode()))
        head = connection.protocol.send(h11.Request(method=method.encode(),
                                                    target=target.encode(), headers=fields))
        assert head is not None
        if isinstance(body, bytes) and len(body) <= _ONE_WRITE:
            await connection.write(head + body)
        else:
            await connection.write(head)
            if isinstance(body, bytes):
                await connection.write(memoryview(body))
            elif body is not None:
                await _send_stream(connection, body)
        async with asyncio.timeout(connection.timeout):
            await connection.writer.drain()

    async def _head(self, connection: _Connection, method: str) -> Response:
        protocol = connection.protocol
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(connection.timeout):
                    # up to the end of the head only: the body is read without h11
                    try:
                        data = await connection.reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError as exc:
                        data = exc.partial  # h11 reports the cut-off answer
                    except asyncio.LimitOverrunError as exc:
                        raise ConnectionLost("response head too large") from exc
                if not data:
                    raise ConnectionLost("the server closed the connection without an answer")
                protocol.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Response):
                return Response(connection, event, method)
            else:
                raise ConnectionLost("the server closed the connection")

    async def aclose(self) -> None:
        """Close every connection; requests still in flight fail."""
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()


async def _send_stream(connection: _Connection, body: Stream) -> None:
    sent = 0
    async with aclosing(body.open()) as chunks:
        async for chunk in chunks:
            sent += len(chunk)
            if sent > body.length:
                raise BodyMismatch(f"body longer than the {body.length} bytes announced")
            await connection.write(chunk)
    if sent != body.length:
        raise BodyMismatch(f"body of {sent} bytes, {body.length} announced")

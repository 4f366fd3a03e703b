"""What the fast path's pool reads: a connection, and a response on it.

A response's head is parsed by h11; a body framed by Content-Length is read straight from
the stream (h11's buffer copies cost 0.2 s per 200 MB), any other framing through h11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

import h11

CHUNK = 256 << 10
"""Bytes read from a socket at a time, and the stream's buffer limit (reading pauses at
twice this): bodies on the event loop are at most 8 MiB, and with 64 of them in flight a
larger buffer only holds memory (large bodies go on threads, see _bulk.py)."""
ONE_WRITE = 64 << 10
"""Bytes a connection buffers before it waits for the socket to drain."""
_NO_BODY_STATUS = frozenset({204, 304})


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


class HttpConnection:
    """One connection of a pool: its streams, its h11 state, and when it went idle."""

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
        if self.writer.transport.get_write_buffer_size() > ONE_WRITE:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()


class Response:
    """Status, headers and the body, read by the caller while the request is open."""

    def __init__(self, connection: HttpConnection, head: h11.Response, method: str):
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

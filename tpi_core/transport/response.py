"""What the pool reads: a connection, and a response on it.

A response's head is parsed by h11; a body framed by Content-Length is read straight from
the stream (h11's buffer copies cost a large body real CPU time), any other framing through h11.
h11's errors become :class:`~.exceptions.ProtocolError` here, where h11 is driven.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import h11

from tpi_core.transport.exceptions import ConnectionLost, ProtocolError, map_exceptions
from tpi_core.transport.network import CHUNK, NetworkStream

H11_ERRORS = map_exceptions({h11.ProtocolError: ProtocolError})
_NO_BODY_STATUS = frozenset({204, 304})


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
    """One connection of a pool: its stream, its h11 state, and when it went idle."""

    def __init__(self, stream: NetworkStream):
        self.stream = stream
        self.idle_since = 0.0
        self.protocol = h11.Connection(h11.CLIENT)

    def usable(self, now: float, keepalive: float) -> bool:
        """Young enough, and nothing came while idle (see NetworkStream.is_reusable)."""
        return now - self.idle_since < keepalive and self.stream.is_reusable()

    def close(self) -> None:
        self.stream.abort()


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
        """True once the body was read to its end on a connection that stays open."""
        return self._done and self._keep

    async def read_chunk(self, limit: int = CHUNK) -> bytes:
        """The next piece of the body, at most ``limit`` bytes; ``b""`` at its end."""
        if self._done:
            return b""
        if self._left is not None:
            data = await self._conn.stream.read(min(limit, self._left))
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
            with H11_ERRORS:
                event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await self._conn.stream.read(CHUNK))
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
            stream = self._conn.stream
            data = await stream.readexactly(self._left, stream.timeout + self._left / (1 << 20))
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

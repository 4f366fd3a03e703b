"""The network seam: byte streams to a host, behind a small interface (httpcore's backends).

:class:`NetworkStream` is all the HTTP layers above see of a connection;
:class:`AsyncioNetwork` opens real ones and :class:`~.mock.MockNetwork` scripted ones for
tests. Every failure leaves here already mapped into :mod:`.exceptions` (a reset is
ConnectionLost, a stall Timeout, a refusal ConnectError), and every operation carries the
stream's timeout.

Why asyncio and not anyio streams here: the S3 fast path reads a response head with one
``readuntil`` and a body of up to 8 MiB with one ``readexactly`` on the StreamReader's
buffer, which keeps a small request cheap (benchmarks/README.md). anyio's socket streams
hand back at most 64 KiB per ``receive`` and its buffered stream copies again into its own
buffer; the layers above are written against this interface, so another backend can be put here once
it is measured to keep that pace. ``asyncio.timeout`` is used for the same reason (no
cancel scope per read). The reader is a :class:`asyncio.StreamReader` whose ``feed_data``
counts what arrived, so "was anything sent while this connection was idle?" is answered
without reaching into its private buffer.
"""

from __future__ import annotations

import asyncio
import ssl
from abc import ABC, abstractmethod

from tpi_core.transport.exceptions import (
    CONNECT_ERRORS,
    SOCKET_ERRORS,
    ConnectionLost,
    map_exceptions,
)

CHUNK = 256 << 10
"""Bytes read from a socket at a time, and the stream's buffer limit (reading pauses at
twice this): bodies on the event loop are at most 8 MiB, and with 64 of them in flight a
larger buffer only holds memory (large bodies go on threads, see :mod:`.bulk`)."""
ONE_WRITE = 64 << 10
"""Bytes a stream buffers before a write waits for the socket to drain."""
_SOCKET = map_exceptions(SOCKET_ERRORS)
_CONNECT = map_exceptions(CONNECT_ERRORS)


class NetworkStream(ABC):
    """One open connection: buffered reads, writes, TLS upgrade; ``timeout`` bounds each
    operation (raising :class:`~.exceptions.Timeout`)."""

    timeout: float

    @abstractmethod
    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes as soon as some are there; ``b""`` at the end."""

    @abstractmethod
    async def readexactly(self, count: int, timeout: float | None = None) -> bytes:
        """Exactly ``count`` bytes (ConnectionLost, saying how many were missing, if the
        stream ends first); ``timeout`` overrides the stream's for this one read."""

    @abstractmethod
    async def readuntil(self, separator: bytes) -> bytes:
        """Bytes up to and including ``separator``, or what was left when the stream
        ended (maybe nothing); ConnectionLost when no separator comes within the buffer."""

    @abstractmethod
    async def write(self, data: bytes | memoryview) -> None:
        """Buffer ``data``, waiting for the socket only when much is buffered."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until what was written has gone to the socket."""

    @abstractmethod
    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Speak TLS from here on (inside a proxy's CONNECT tunnel)."""

    @abstractmethod
    def is_reusable(self) -> bool:
        """True when nothing arrived that no one read and neither side has closed: a
        kept connection that got bytes while idle (a server's 408) answers no one."""

    @abstractmethod
    def abort(self) -> None:
        """Close at once, dropping anything unsent."""


class NetworkBackend(ABC):
    """Opens streams; the one place a connection is made."""

    @abstractmethod
    async def connect(self, host: str, port: int, *, timeout: float, read_timeout: float,
                      tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> NetworkStream:
        """A stream to ``host:port`` (TLS when ``tls`` is given) made within ``timeout``,
        each later operation bounded by ``read_timeout``."""


class _CountingReader(asyncio.StreamReader):
    """A StreamReader that counts the bytes fed to it (see AsyncioStream.is_reusable)."""

    received = 0

    def feed_data(self, data: bytes) -> None:
        self.received += len(data)
        super().feed_data(data)


class AsyncioStream(NetworkStream):
    """A connection on asyncio's streams."""

    def __init__(self, reader: _CountingReader, writer: asyncio.StreamWriter, timeout: float):
        self._reader, self._writer, self.timeout = reader, writer, timeout
        self._taken = 0  # bytes handed to callers; received - taken are unread

    async def read(self, limit: int) -> bytes:
        with _SOCKET:
            async with asyncio.timeout(self.timeout):
                data = await self._reader.read(limit)
        self._taken += len(data)
        return data

    async def readexactly(self, count: int, timeout: float | None = None) -> bytes:
        try:
            with _SOCKET:
                async with asyncio.timeout(self.timeout if timeout is None else timeout):
                    data = await self._reader.readexactly(count)
        except ConnectionLost as exc:
            partial = getattr(exc.__cause__, "partial", b"")
            self._taken += len(partial)
            raise ConnectionLost(f"body ended {count - len(partial)} bytes short") from exc
        self._taken += count
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        try:
            with _SOCKET:
                async with asyncio.timeout(self.timeout):
                    data = await self._reader.readuntil(separator)
        except asyncio.LimitOverrunError as exc:
            raise ConnectionLost("answer head too large") from exc
        except ConnectionLost as exc:
            if not isinstance(exc.__cause__, asyncio.IncompleteReadError):
                raise
            data = exc.__cause__.partial  # the caller tells a cut-off answer
        self._taken += len(data)
        return data

    async def write(self, data: bytes | memoryview) -> None:
        with _SOCKET:
            self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > ONE_WRITE:
            await self.flush()

    async def flush(self) -> None:
        with _SOCKET:
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        with _CONNECT:
            async with asyncio.timeout(self.timeout):
                await self._writer.start_tls(context, server_hostname=server_hostname)

    def is_reusable(self) -> bool:
        return (self._reader.received == self._taken and not self._reader.at_eof()
                and not self._writer.is_closing())

    def abort(self) -> None:
        self._writer.transport.abort()


class AsyncioNetwork(NetworkBackend):
    """Real TCP (and TLS) connections on the running asyncio loop."""

    async def connect(self, host: str, port: int, *, timeout: float, read_timeout: float,
                      tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> NetworkStream:
        loop = asyncio.get_running_loop()
        reader = _CountingReader(limit=CHUNK, loop=loop)
        with _CONNECT:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port,
                    ssl=tls, server_hostname=server_hostname if tls else None)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return AsyncioStream(reader, writer, read_timeout)

"""A scripted network for tests (httpcore's ``MockBackend``): no sockets, no loop tricks.

Each connection the code under test opens takes the next script: the byte strings the
"server" sends, one per read, then the end of the stream. What the client writes is kept
in :attr:`MockStream.written`. A script item that is an exception is raised by the read
that reaches it, as the real seam would raise it (already a transport error).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from tpi_core.transport.exceptions import ConnectError, ConnectionLost
from tpi_core.transport.network import NetworkBackend, NetworkStream

Script = Sequence[bytes | BaseException]


class MockStream(NetworkStream):
    """A connection whose incoming bytes are a script."""

    def __init__(self, script: Script, timeout: float = 1.0):
        self._script, self.timeout = list(script), timeout
        self._buffer = bytearray()
        self.written = bytearray()
        self.aborted = self.tls = False

    def _fill(self) -> bool:
        if not self._script:
            return False
        item = self._script.pop(0)
        if isinstance(item, BaseException):
            raise item
        self._buffer += item
        return True

    async def read(self, limit: int) -> bytes:
        if not self._buffer:
            self._fill()
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data

    async def readexactly(self, count: int, timeout: float | None = None) -> bytes:
        while len(self._buffer) < count:
            if not self._fill():
                missing = count - len(self._buffer)
                self._buffer.clear()
                raise ConnectionLost(f"body ended {missing} bytes short")
        return await self.read(count)

    async def readuntil(self, separator: bytes) -> bytes:
        while (end := self._buffer.find(separator)) < 0:
            if not self._fill():
                return await self.read(len(self._buffer))
        return await self.read(end + len(separator))

    async def write(self, data: bytes | memoryview) -> None:
        if self.aborted:
            raise ConnectionLost("ConnectionResetError: written after abort")
        self.written += data

    async def flush(self) -> None:
        return None

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self.tls = True

    def is_reusable(self) -> bool:
        return not self._buffer and bool(self._script) and not self.aborted

    def abort(self) -> None:
        self.aborted = True


class MockNetwork(NetworkBackend):
    """Hands out one :class:`MockStream` per connect, each with the next script; a
    connect with no script left is refused."""

    def __init__(self, *scripts: Script):
        self._scripts = list(scripts)
        self.streams: list[MockStream] = []
        self.addresses: list[tuple[str, int]] = []

    async def connect(self, host: str, port: int, *, timeout: float, read_timeout: float,
                      tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> NetworkStream:
        self.addresses.append((host, port))
        if not self._scripts:
            raise ConnectError(f"ConnectionRefusedError: no script left for {host}:{port}")
        stream = MockStream(self._scripts.pop(0), read_timeout)
        stream.tls = tls is not None
        self.streams.append(stream)
        return stream

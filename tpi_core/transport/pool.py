"""A lean HTTP/1.1 client: h11 over the network seam, a pool of connections per origin.

Why not httpcore or aiohttp: httpcore's pool costs many times more per small request than
this one (its pool is quadratic in the requests waiting, encode/httpcore#1035), and
importing aiohttp (two TLS contexts built at import) costs a large share of a whole
no-change ``tpi sync``; the figures are in benchmarks/README.md. h11 writes every request head
(validating names and values) and parses every response head and any chunked or
close-delimited body; a body framed by Content-Length (every object body a storage sends) is
read straight from the stream (:mod:`.response`). A request body is bytes, or a
:class:`Stream` that can be produced again; a Stream is read one chunk ahead of the socket
by a second task, so a file's next chunk is read and hashed on a thread while this one is
sent.

Through a proxy (:mod:`.proxy`, from the environment), an https origin is reached in a
CONNECT tunnel and a plain http one with absolute request targets.

The pool keeps at most ``limit`` connections busy, reuses idle ones newest first, gives up
those idle for more than ``keepalive`` seconds (local servers drop them after 5 s), and
sends a request again, once, on a new connection when a kept one turns out to be closed
before any answer came (requests here are idempotent: GET, PUT, HEAD, DELETE).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import h11
from anyio.abc import ObjectSendStream

from tpi_core.concurrent import task_group
from tpi_core.transport.exceptions import BodyMismatch, ConnectionLost, NetworkError, Timeout
from tpi_core.transport.network import AsyncioNetwork, NetworkBackend, NetworkStream
from tpi_core.transport.proxy import Proxy, forwarding, open_tunnel
from tpi_core.transport.response import H11_ERRORS, HttpConnection, Response

ONE_WRITE = 64 << 10
"""Request bodies up to this size go out in the same write as their head."""


@dataclass(frozen=True)
class Stream:
    """A request body of ``length`` bytes that ``open()`` produces, again on each call."""

    length: int
    open: Callable[[], AsyncIterator[bytes]]


class Pool:
    """Connections to one origin (``scheme://host[:port]``), at most ``limit`` in use."""

    def __init__(self, origin: str, *, limit: int, ca_bundle: str | None = None,
                 keepalive: float = 4.0, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, user_agent: str = "tpi",
                 proxy: Proxy | None = None, network: NetworkBackend | None = None):
        parts = urlsplit(origin)
        self._tls = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port or (443 if self._tls else 80))
        self._host = parts.netloc.encode()
        # through a proxy: https in a CONNECT tunnel, http with absolute targets
        self._proxy = proxy
        self._absolute, fields = forwarding(origin, proxy)
        self._proxy_fields = [(k.lower().encode(), v.encode()) for k, v in fields.items()]
        self._ca_bundle = ca_bundle
        self._context: ssl.SSLContext | None = None  # made on first use: not cheap
        self._keepalive, self._connect_timeout = keepalive, connect_timeout
        self._read_timeout = read_timeout
        self._agent = user_agent.encode()
        self._network = network or AsyncioNetwork()
        # fast_acquire: no trip through the event loop when a slot is free
        self._slots = anyio.Semaphore(limit, fast_acquire=True)
        self._idle: list[HttpConnection] = []
        self._busy: set[HttpConnection] = set()

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
                # a kept connection found closed; not a slow server nor a body that changed
                if not kept or not isinstance(exc, NetworkError) or isinstance(exc, Timeout):
                    raise
                for stale in self._idle:  # a server that closed one likely closed them all
                    stale.close()
                self._idle.clear()

    def _take(self) -> HttpConnection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable(now, self._keepalive):
                return connection
            connection.close()
        return None

    async def _connect(self) -> HttpConnection:
        context = None
        if self._tls:
            if self._context is None:
                self._context = ssl.create_default_context(cafile=self._ca_bundle)
            context = self._context
        if self._proxy is None:
            stream = await self._network.connect(
                *self._address, timeout=self._connect_timeout, read_timeout=self._read_timeout,
                tls=context, server_hostname=self._address[0])
        else:
            stream = await self._through_proxy(self._proxy, context)
        return HttpConnection(stream)

    async def _through_proxy(self, proxy: Proxy, context: ssl.SSLContext | None
                             ) -> NetworkStream:
        stream = await self._network.connect(proxy.host, proxy.port,
                                             timeout=self._connect_timeout,
                                             read_timeout=self._read_timeout)
        if context is None:
            return stream
        try:
            host, port = self._address
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 literal
            await open_tunnel(stream, authority, proxy)
            await stream.start_tls(context, server_hostname=host)
        except BaseException:
            stream.abort()
            raise
        return stream

    async def _send(self, connection: HttpConnection, method: str, target: str,
                    headers: Mapping[str, str], body: bytes | Stream | None) -> None:
        length = 0 if body is None else body.length if isinstance(body, Stream) else len(body)
        fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        names = {name for name, _ in fields}
        fields += [(name, value) for name, value in ((b"host", self._host),
                                                     (b"user-agent", self._agent))
                   if name not in names]
        fields += self._proxy_fields
        if (body is not None or method in ("PUT", "POST")) and b"content-length" not in names:
            fields.append((b"content-length", str(length).encode()))  # unless signed already
        with H11_ERRORS:
            head = connection.protocol.send(h11.Request(
                method=method.encode(), target=(self._absolute + target).encode(),
                headers=fields))
        assert head is not None
        stream = connection.stream
        if isinstance(body, bytes) and len(body) <= ONE_WRITE:
            await stream.write(head + body)
        else:
            await stream.write(head)
            if isinstance(body, bytes):
                await stream.write(memoryview(body))
            elif body is not None:
                await _send_stream(stream, body)
        await stream.flush()

    async def _head(self, connection: HttpConnection, method: str) -> Response:
        protocol = connection.protocol
        while True:
            with H11_ERRORS:
                event = protocol.next_event()
            if event is h11.NEED_DATA:
                # up to the end of the head only: the body is read without h11
                data = await connection.stream.readuntil(b"\r\n\r\n")
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


async def _send_stream(stream: NetworkStream, body: Stream) -> None:
    """Send a Stream body, its next chunk produced by a second task meanwhile."""
    sender, receiver = anyio.create_memory_object_stream[bytes](1)
    sent = 0
    async with task_group() as group:
        group.start_soon(_produce, body, sender)
        async with receiver:
            async for chunk in receiver:
                sent += len(chunk)
                if sent > body.length:
                    raise BodyMismatch(f"body longer than the {body.length} bytes announced")
                await stream.write(chunk)
    if sent != body.length:
        raise BodyMismatch(f"body of {sent} bytes, {body.length} announced")


async def _produce(body: Stream, sender: ObjectSendStream[bytes]) -> None:
    async with sender, aclosing(body.open()) as chunks:
        async for chunk in chunks:
            await sender.send(chunk)

"""Large response bodies on worker threads: blocking ``http.client`` connections.

A body of many MiB costs the event loop more than its bytes: every socket read wakes it,
is copied into a stream buffer and out again, and then crosses to a thread to be written
and hashed. Here one worker thread reads the body with ``readinto`` into a few reused
buffers, writes each at its offset, and a second thread hashes them in order: recv, write
and md5 all release the GIL, so the transfer runs at what the server sends and the md5
costs no extra wall time: faster than the event loop for a large body (benchmarks/README.md).
Requests are signed on the event loop (credentials refresh there) and sent as given.
Network and HTTP errors are mapped here, at this second seam, into :mod:`.exceptions`, as
:mod:`.network` maps them for the event loop's connections.
"""

from __future__ import annotations

import http.client
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from tpi_core.transport.exceptions import (
    CONNECT_ERRORS,
    SOCKET_ERRORS,
    ProtocolError,
    Stopped,
    map_exceptions,
)
from tpi_core.transport.files import write_all
from tpi_core.transport.proxy import Proxy, forwarding

CHUNK = 1 << 20
KEEPALIVE = 4.0
"""Idle connections older than this are not reused (local servers close them after 5 s)."""
_RING = 4  # buffers per transfer: one filling, one writing, two waiting for the hasher
_PIPELINE_FROM = 8 << 20
"""Bodies from this size are hashed on a second thread; smaller ones by the reader."""


_CONNECTING = map_exceptions(CONNECT_ERRORS)
_READING = map_exceptions({HTTPException: ProtocolError, **SOCKET_ERRORS})


@dataclass
class Failed:
    """A response that was no success, read whole so the service's error can be told."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class BulkPool:
    """Idle blocking connections to one origin, shared by the worker threads."""

    def __init__(self, origin: str, *, ca_bundle: str | None = None, timeout: float = 60.0,
                 proxy: Proxy | None = None):
        parts = urlsplit(origin)
        self._tls = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._proxy = proxy
        self.prefix, self.headers = forwarding(origin, proxy)
        self._ca_bundle, self._timeout = ca_bundle, timeout
        self._context: ssl.SSLContext | None = None
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def take(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                since, connection = self._idle.pop()
                if time.monotonic() - since < KEEPALIVE:
                    return connection
                connection.close()  # the server has likely closed it already
            if self._tls and self._context is None:
                self._context = ssl.create_default_context(cafile=self._ca_bundle)
        proxy = self._proxy
        host, port = (proxy.host, proxy.port) if proxy else (self._host, self._port)
        if not self._tls:
            return http.client.HTTPConnection(host, port, timeout=self._timeout)
        connection = http.client.HTTPSConnection(host, port, timeout=self._timeout,
                                                 context=self._context)
        if proxy:
            connection.set_tunnel(self._host, self._port or 443, headers=proxy.headers())
        return connection

    def give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), connection))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _since, connection in idle:
            connection.close()


def fetch_into(pool: BulkPool, target: str, headers: Mapping[str, str], fd: int,
               offset: int, digest: Any, progress: Callable[[int], None] | None,
               stop: threading.Event, expect: tuple[int, ...] = (200,),
               ) -> Failed | tuple[int, Any]:
    """GET ``target`` and write its body into ``fd`` from ``offset``, hashing it into
    ``digest`` in order (None: nothing to check, so no hashing). Returns the bytes written
    and the response's headers, or the response when its status is not one of ``expect``;
    network trouble raises the transport's errors (:mod:`.exceptions`)."""
    connection = pool.take()
    try:
        with _CONNECTING:
            if connection.sock is None:
                connection.connect()
        with _READING:
            return _exchange(pool, connection, target, headers, fd, offset, digest,
                             progress, stop, expect)
    except BaseException:
        connection.close()
        raise


def _exchange(pool: BulkPool, connection: http.client.HTTPConnection, target: str,
              headers: Mapping[str, str], fd: int, offset: int, digest: Any,
              progress: Callable[[int], None] | None, stop: threading.Event,
              expect: tuple[int, ...]) -> Failed | tuple[int, Any]:
    connection.request("GET", pool.prefix + target, headers={**headers, **pool.headers})
    response = connection.getresponse()
    if response.status not in expect:
        failed = Failed(response.status, response.reason, dict(response.getheaders()),
                        response.read())
    else:
        written = _receive(response, fd, offset, digest, progress, stop)
    if response.will_close:
        connection.close()
    else:
        pool.give(connection)
    return failed if response.status not in expect else (written, response.headers)


def _receive(response: http.client.HTTPResponse, fd: int, offset: int, digest: Any,
             progress: Callable[[int], None] | None, stop: threading.Event) -> int:
    length = response.length  # None: chunked or until close
    pipelined = digest is not None and (length is None or length >= _PIPELINE_FROM)
    hasher = _Hasher(digest) if pipelined else None
    buffers = [bytearray(CHUNK) for _ in range(_RING if hasher else 1)]
    written, turn = 0, 0
    try:
        while not stop.is_set():
            view = memoryview(buffers[turn % len(buffers)])
            count = response.readinto(view)
            if not count:
                return written
            write_all(fd, view[:count], offset + written)
            if hasher:
                hasher.put(view[:count])
            elif digest is not None:
                digest.update(view[:count])
            written, turn = written + count, turn + 1
            if progress:
                progress(count)
        raise Stopped("download abandoned")
    finally:
        if hasher:
            hasher.finish()


class _Hasher:
    """Hashes buffers in the order they were read, on its own thread. At most two wait,
    so the reader never refills a buffer the hasher has not finished with."""

    def __init__(self, digest: Any):
        self._digest = digest
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=_RING - 2)
        self._thread = threading.Thread(target=self._run, name="tpi-md5", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._digest.update(data)

    def put(self, data: memoryview) -> None:
        self._queue.put(data)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

"""Large response bodies on worker threads: blocking ``http.client`` connections.

A body of many MiB costs the event loop more than its bytes: every socket read wakes it,
is copied into a stream buffer and out again, and then crosses to a thread to be written
and hashed. Here one worker thread reads the body with ``readinto`` into a few reused
buffers, writes each at its offset, and a second thread hashes them in order: recv, write
and md5 all release the GIL, so the transfer runs at what the server sends and the md5
costs no extra wall time (200 MB from a local server: 0.36 s here, 0.5 s on the loop).
Requests are signed on the event loop (credentials refresh there) and sent as given.
"""

from __future__ import annotations

import http.client
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from tpi_aws._proxy import Proxy, forwarding
from tpi_aws._stream import check_md5, write_all
from tpi_aws._transfer import is_md5_etag
from tpi_aws._wire import Wire, network_error, service_error
from tpi_core.errors import TransientError
from tpi_core.storage import Progress

CHUNK = 1 << 20
KEEPALIVE = 4.0
"""Idle connections older than this are not reused (local servers close them after 5 s)."""
_RING = 4  # buffers per transfer: one filling, one writing, two waiting for the hasher
_PIPELINE_FROM = 8 << 20
"""Bodies from this size are hashed on a second thread; smaller ones by the reader."""


@dataclass
class Failed:
    """A response that was no success, read whole so the service's error can be told."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class Stopped(Exception):
    """The transfer was abandoned by its caller (cancelled)."""


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
    network trouble raises (OSError, http.client.HTTPException)."""
    connection = pool.take()
    try:
        connection.request("GET", pool.prefix + target, headers={**headers, **pool.headers})
        response = connection.getresponse()
        if response.status not in expect:
            failed = Failed(response.status, response.reason, dict(response.getheaders()),
                            response.read())
        else:
            written = _receive(response, fd, offset, digest, progress, stop)
    except BaseException:
        connection.close()
        raise
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


async def fetch_rest(wire: Wire, full: str, path: Path, written: int, total: int, etag: str,
                     digest: Any, progress: Progress | None) -> None:
    """Fetch the rest of an object whose first ``written`` bytes are in ``path`` (hashed
    into ``digest``; none for a whole object) from one stream read on a worker thread,
    pinned by If-Match to ``etag``; when the answer shows the ETag is an md5, the whole is
    checked against it. ``digest`` None: the ETag is known to be no md5 (a multipart
    upload's), and nothing is hashed."""
    what = f"download {full}"
    target, headers = await wire.prepare("GET", full, headers={
        "Range": f"bytes={written}-", "If-Match": f'"{etag}"'})
    stop = threading.Event()

    def fetch() -> Failed | tuple[int, Any]:
        fd = os.open(path, os.O_WRONLY)
        try:
            return fetch_into(wire.bulk, target, headers, fd, written, digest, progress,
                              stop, expect=(206,) if written else (200, 206))
        finally:
            os.close(fd)

    try:
        got = await anyio.to_thread.run_sync(fetch, abandon_on_cancel=True)
    except (OSError, HTTPException, Stopped) as exc:
        raise network_error(what, wire.origin, exc, wire.proxy) from exc
    finally:
        stop.set()  # a cancelled caller: the thread stops at its next read
    if isinstance(got, Failed):
        if got.status < 300:
            raise TransientError(f"{what}: range ignored (HTTP {got.status})")
        raise service_error(got.status, got.reason, got.body, what)
    count, headers = got
    if written + count != total:
        raise TransientError(f"{what}: {written + count} of {total} bytes")
    if digest is not None and is_md5_etag(etag, headers):
        check_md5(what, digest.hexdigest(), etag)

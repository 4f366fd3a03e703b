"""Requests to one origin for one storage: the pool, the threaded reader, the protocol.

An :class:`Endpoint` sends every request of a storage. It locates and signs it through the
storage's :class:`~.protocol.ObjectProtocol`, sends it on its :class:`~.pool.Pool` (small
bodies, listings) and hands large bodies to :class:`~.bulk.BulkPool` threads. An answer
that is no success becomes the protocol's error; a transport error is raised again with
what was being done and through which proxy (its class kept).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Container, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tpi_core.errors import IntegrityError, TpiError
from tpi_core.transport.exceptions import BodyMismatch, NetworkError, UntrustedCertificate
from tpi_core.transport.network import NetworkBackend
from tpi_core.transport.pool import Pool, Stream
from tpi_core.transport.protocol import ObjectProtocol
from tpi_core.transport.proxy import Proxy, proxy_for
from tpi_core.transport.response import Response

if TYPE_CHECKING:
    from tpi_core.transport.bulk import BulkPool

KEEPALIVE = 4.0
"""Local servers (node's default is 5 s) drop idle connections sooner than clouds do
(about 20 s); reusing one they already closed costs a failed request, so give them up
first."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_base(url: str) -> tuple[str, str, str]:
    """``(origin, host, path)`` of a bucket's or container's base URL; the host without the
    scheme's default port, as a Host header and a signature carry it."""
    parts = urlsplit(url.rstrip("/"))
    port = parts.port if parts.port != _DEFAULT_PORTS.get(parts.scheme) else None
    host = f"{parts.hostname}:{port}" if port else f"{parts.hostname}"
    return f"{parts.scheme}://{host}", host, parts.path


class Endpoint:
    """Signed requests to the objects of one bucket or container, on one pool."""

    def __init__(self, origin: str, protocol: ObjectProtocol, *, pool: int,
                 ca_bundle: str | None = None, ca_hint: str = "",
                 network: NetworkBackend | None = None):
        self.origin, self.protocol = origin, protocol
        self.proxy: Proxy | None = proxy_for(origin)
        self._http = Pool(origin, limit=max(pool, 1), ca_bundle=ca_bundle,
                          keepalive=KEEPALIVE, proxy=self.proxy, network=network)
        self._ca_bundle, self._ca_hint = ca_bundle, ca_hint
        self._bulk: BulkPool | None = None

    @asynccontextmanager
    async def request(self, method: str, key: str, *, what: str,
                      query: Mapping[str, str | int] | None = None,
                      headers: Mapping[str, str] | None = None,
                      data: bytes | Stream | None = None,
                      accept: Container[int] = ()) -> AsyncIterator[Response]:
        """Send one signed request; yield the response once its status says success (or is
        one the caller ``accept``s).

        Every failure, while sending or while the caller reads the body, leaves as a tpi
        error: the service's through the protocol, the network's as the transport's.
        """
        target, signed = await self.prepare(method, key, query, headers)
        try:
            async with self._http.request(method, target, signed, data) as response:
                if response.status >= 300 and response.status not in accept:
                    body = await response.read() if method != "HEAD" else b""
                    raise self.protocol.error(response.status, response.reason, body, what)
                yield response
        except (NetworkError, BodyMismatch, UntrustedCertificate) as exc:
            raise self.failed(what, exc) from exc

    async def prepare(self, method: str, key: str,
                      query: Mapping[str, str | int] | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """The request target and signed headers of a request, to send now or on a thread."""
        path, query_string = self.protocol.locate(key, query)
        signed = await self.protocol.sign(method, path, query_string, headers or {})
        return path + (f"?{query_string}" if query_string else ""), signed

    def failed(self, what: str, exc: TpiError) -> TpiError:
        """A transport error again, saying what was being done and through which proxy;
        an untrusted certificate says how to trust it."""
        if isinstance(exc, UntrustedCertificate):
            hint = f"; {self._ca_hint}" if self._ca_hint else ""
            return UntrustedCertificate(f"{what}: the TLS certificate of {self.origin} is "
                                        f"not trusted ({exc}){hint}")
        through = f" (through the proxy {self.proxy.url})" if self.proxy else ""
        return type(exc)(f"{what}: {exc}{through}")

    def check_stored(self, what: str, headers: Mapping[str, str], digest: bytes) -> None:
        """Compare the md5 the service says it stored with what was sent (some servers,
        emulators among them, ignore Content-MD5); nothing when it names none."""
        stored = self.protocol.md5_of(headers)
        if stored is not None and stored != digest.hex():
            raise IntegrityError(f"{what}: stored md5 {stored} does not match md5 sent "
                                 f"{digest.hex()}")

    @property
    def bulk(self) -> BulkPool:
        """Blocking connections to the same origin, for large bodies on worker threads."""
        if self._bulk is None:
            from tpi_core.transport.bulk import BulkPool  # http.client: large bodies only

            self._bulk = BulkPool(self.origin, ca_bundle=self._ca_bundle, proxy=self.proxy)
        return self._bulk

    async def aclose(self) -> None:
        """Close the pools; safe to call twice."""
        await self._http.aclose()
        if self._bulk is not None:
            self._bulk.close()


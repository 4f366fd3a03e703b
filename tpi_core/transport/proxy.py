"""The HTTP proxy the environment names for an origin, as botocore, gsutil and curl find it.

``https_proxy``/``HTTPS_PROXY``, ``http_proxy``/``HTTP_PROXY`` and ``no_proxy``/``NO_PROXY``
are read by the standard library's own rules (``urllib.request``, which botocore uses too),
so the transport and a cloud's own SDK client always agree on whether a proxy is in the way.
Importing ``urllib.request`` is a visible part of a command's start, so it is imported only
when some ``*_proxy`` variable is set at all.

Only ``http://`` proxies are spoken to: an ``https://`` endpoint is reached through a
``CONNECT`` tunnel, a plain ``http://`` one with absolute request targets. Proxy
credentials (``http://user:password@host:port``) become a ``Proxy-Authorization`` header
and never appear in what :func:`shown` returns.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from tpi_core.errors import PermissionDenied, TransientError, UsageError
from tpi_core.transport.network import NetworkStream


@dataclass(frozen=True)
class Proxy:
    """Where to connect instead of the origin, and the header that authenticates there."""

    host: str
    port: int
    authorization: str | None = None  # "Basic ..." (a secret: never shown)

    def __repr__(self) -> str:
        return f"Proxy({self.host}:{self.port})"

    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def forwarding(origin: str, proxy: Proxy | None) -> tuple[str, dict[str, str]]:
    """For a plain http ``origin`` reached through ``proxy``: the prefix that makes request
    targets absolute, and the headers every request carries for the proxy. Nothing for an
    https origin (it goes through a CONNECT tunnel) or without a proxy."""
    parts = urlsplit(origin)
    if proxy is None or parts.scheme != "http":
        return "", {}
    return f"http://{parts.netloc}", proxy.headers()


def proxy_for(origin: str) -> Proxy | None:
    """The proxy to reach ``origin`` (``scheme://host[:port]``) through, or None."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    import urllib.request

    parts = urlsplit(origin)
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(parts.scheme)
    if not url or urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return None
    return parse(url)


def parse(url: str) -> Proxy:
    """A proxy from its URL (``host:port`` alone means ``http://host:port``)."""
    parts = _split(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"proxy {shown(url)!r}: only http:// proxies are supported")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    try:
        port = parts.port or 80
    except ValueError:
        raise UsageError(f"proxy {shown(url)!r}: the port is not a number") from None
    return Proxy(parts.hostname, port, authorization)


def shown(url: str) -> str:
    """A proxy URL fit for messages: any user name and password left out."""
    parts = _split(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _split(url: str):
    return urlsplit(url if "://" in url else f"http://{url}")


async def open_tunnel(stream: NetworkStream, authority: str, proxy: Proxy) -> None:
    """Ask the proxy on this connection for a tunnel to ``authority`` (``host:port``)."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}",
             *(f"{name}: {value}" for name, value in proxy.headers().items())]
    await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await stream.flush()
    head = await stream.readuntil(b"\r\n\r\n")
    if not head.endswith(b"\r\n\r\n"):
        raise TransientError(f"proxy {proxy.url} closed the connection during CONNECT "
                             f"{authority}")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if 200 <= status < 300:
        return
    refused = f"proxy {proxy.url} refused CONNECT {authority}: {status_line[9:] or '?'}"
    if status in (403, 407):
        raise PermissionDenied(refused)
    raise TransientError(refused)

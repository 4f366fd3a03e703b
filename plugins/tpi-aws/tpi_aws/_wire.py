"""Signed S3 requests over one connection pool: the hot path of tpi's S3 storage.

botocore spends about a millisecond of CPU on every call (endpoint rules evaluated again for
each key, event hooks, response parsing): more than a local server needs to store a 4 KB
object, so a tree of small files went at half of rclone's speed, and parsing one page of a
listing took it 90 ms. Object bodies (PutObject, GetObject, UploadPart) and listings
(ListObjectsV2, parsed by ElementTree) therefore go through here, on the lean HTTP/1.1
client of :mod:`tpi_aws._http`: SigV4 with an unsigned payload (see _sigv4.py; integrity
comes from Content-MD5, which S3 checks, and from the ETags), credentials from the botocore
session, refreshed by botocore. Errors go through the same code table as botocore's
(:mod:`tpi_aws.errors`). Multipart control and batch deletes stay on the botocore client
(:mod:`tpi_aws._connection`).
"""

from __future__ import annotations

import asyncio
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Container, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_plus, urlsplit

import h11

from tpi_aws._proxy import Proxy, proxy_for
from tpi_aws._http import BodyMismatch, ConnectionLost, Pool, Response, Stream
from tpi_aws._sigv4 import Signer
from tpi_aws.errors import from_answer, translate
from tpi_core.errors import StorageError, TpiError, TransientError

if TYPE_CHECKING:
    from tpi_aws._bulk import BulkPool

_DEFAULT_PORTS = {"http": 80, "https": 443}
Listed = tuple[str, int, str, float]
# Local servers (node's default is 5 s) drop idle connections sooner than S3 does (about
# 20 s); reusing one they already closed costs a failed request, so give them up first.
_KEEPALIVE = 4.0


class Wire:
    """Signed requests to the objects of one bucket, all on one connection pool."""

    def __init__(self, bucket_url: str, region: str, credentials: Any, *, pool: int,
                 ca_bundle: str | None = None):
        parts = urlsplit(bucket_url.rstrip("/"))
        port = parts.port if parts.port != _DEFAULT_PORTS.get(parts.scheme) else None
        self.host = f"{parts.hostname}:{port}" if port else f"{parts.hostname}"
        self.origin, self._root = f"{parts.scheme}://{self.host}", parts.path
        self._region, self._credentials = region, credentials
        self._signer: tuple[Any, Signer] | None = None
        self.proxy = proxy_for(self.origin)
        self._http = Pool(self.origin, limit=max(pool, 1), ca_bundle=ca_bundle,
                          keepalive=_KEEPALIVE, proxy=self.proxy)
        self._ca_bundle = ca_bundle
        self._bulk: BulkPool | None = None

    def target(self, key: str, query: Mapping[str, str | int] | None = None) -> tuple[str, str]:
        """The encoded path of an object (quoted as botocore quotes keys) and the sorted,
        encoded query: both exactly as sent and as signed."""
        pairs = sorted((quote(k, safe="-_.~"), quote(str(v), safe="-_.~"))
                       for k, v in (query or {}).items())
        path = f"{self._root}/{quote(key, safe='/~')}" if key else self._root or "/"
        return path, "&".join(f"{k}={v}" for k, v in pairs)

    async def list_pages(self, prefix: str, what: str,
                         start_after: str = "") -> AsyncIterator[list[Listed]]:
        """ListObjectsV2 page by page: ``(key, size, etag without quotes, mtime)``, of the
        keys after ``start_after`` when given."""
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        if start_after:
            query["start-after"] = start_after
        while True:
            async with self.request("GET", "", query=query, what=what) as response:
                page, fields = _parse_listing(await response.read())
            yield page
            token = fields.get("NextContinuationToken")
            if fields.get("IsTruncated") != "true" or not token:
                return
            query["continuation-token"] = token

    @asynccontextmanager
    async def request(self, method: str, key: str, *, what: str,
                      query: Mapping[str, str | int] | None = None,
                      headers: Mapping[str, str] | None = None,
                      data: bytes | Stream | None = None,
                      accept: Container[int] = ()) -> AsyncIterator[Response]:
        """Send one signed request; yield the response once its status says success (or is
        one the caller ``accept``s).

        Every failure, while sending or while the caller reads the body, leaves as a tpi
        error: the service's code through the error table, network trouble as transient.
        """
        target, signed = await self.prepare(method, key, query, headers)
        try:
            async with self._http.request(method, target, signed, data) as response:
                if response.status >= 300 and response.status not in accept:
                    body = await response.read() if method != "HEAD" else b""
                    raise service_error(response.status, response.reason, body, what)
                yield response
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionLost, BodyMismatch,
                h11.ProtocolError, OSError) as exc:
            raise network_error(what, self.origin, exc, self.proxy) from exc

    async def prepare(self, method: str, key: str,
                      query: Mapping[str, str | int] | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """The request target and signed headers of a request, to send now or on a thread."""
        path, query_string = self.target(key, query)
        signed = (await self._current_signer()).sign(method, self.host, path, query_string,
                                                     headers or {})
        return path + (f"?{query_string}" if query_string else ""), signed

    @property
    def bulk(self) -> BulkPool:
        """Blocking connections to the same origin, for large bodies on worker threads."""
        if self._bulk is None:
            from tpi_aws._bulk import BulkPool  # http.client: 10 ms, only for large bodies

            self._bulk = BulkPool(self.origin, ca_bundle=self._ca_bundle, proxy=self.proxy)
        return self._bulk

    async def aclose(self) -> None:
        """Close the pools; safe to call twice."""
        await self._http.aclose()
        if self._bulk is not None:
            self._bulk.close()

    async def _current_signer(self) -> Signer:
        if self._credentials is None:
            from botocore.exceptions import NoCredentialsError

            raise translate(NoCredentialsError())
        frozen = await self._credentials.get_frozen_credentials()
        if self._signer is None or self._signer[0] != frozen:
            # refreshed credentials get a new signer; until then the same one is reused
            self._signer = (frozen, Signer(frozen.access_key, frozen.secret_key,
                                           frozen.token, self._region))
        return self._signer[1]


def _parse_listing(body: bytes) -> tuple[list[Listed], dict[str, str]]:
    """The objects of one ListObjectsV2 page and its other top-level fields. Children are
    walked once by local name: ``findtext("{*}...")`` per field cost 20 ms per 1,000 keys."""
    page: list[Listed] = []
    fields: dict[str, str] = {}
    for child in ET.fromstring(body):
        name = child.tag.rpartition("}")[2]
        if name == "Contents":
            page.append(_listed({c.tag.rpartition("}")[2]: c.text or "" for c in child}))
        else:
            fields[name] = child.text or ""
    return page, fields


def _listed(item: dict[str, str]) -> Listed:
    # keys come URL-encoded (encoding-type=url, as botocore asks): XML 1.0 cannot carry
    # every character a key may hold
    modified = datetime.fromisoformat(item.get("LastModified", "").replace("Z", "+00:00"))
    return (unquote_plus(item.get("Key", "")), int(item.get("Size", "0")),
            item.get("ETag", "").strip('"'), modified.timestamp())


def network_error(what: str, origin: str, exc: BaseException,
                  proxy: Proxy | None = None) -> TpiError:
    """Network trouble is transient and worth retrying, except a certificate that is not
    trusted: that fails at once, saying how to trust it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageError(f"{what}: the TLS certificate of {origin} is not trusted "
                            f"({exc.verify_message or exc}); AWS_CA_BUNDLE names a CA file "
                            "to trust")
    through = f" (through the proxy {proxy.url})" if proxy else ""
    return TransientError(f"{what}: {type(exc).__name__}: {exc}{through}")


def service_error(status: int, reason: str, body: bytes, what: str) -> Exception:
    """The tpi error for a failed answer, through the same code table as botocore's."""
    code, message = _error_fields(body)
    return from_answer(code or str(status), message or reason or "", status, what)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""

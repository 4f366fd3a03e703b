"""Signed S3 requests on the core's transport: the hot path of tpi's S3 storage.

botocore spends more CPU on every call (endpoint rules evaluated again for each key, event
hooks, response parsing) than a local server needs to store a small object, so a tree of
small files went at half of rclone's speed, and parsing a listing page was slow (figures in
benchmarks/README.md). Object bodies (PutObject, GetObject, UploadPart) and listings
(ListObjectsV2, parsed by ElementTree) therefore go through here, on the core's
:mod:`tpi_core.transport`: :class:`S3Protocol` is what S3 plugs into it (path-style or
virtual-host URLs, SigV4 with an unsigned payload (see _sigv4.py; integrity comes from
Content-MD5, which S3 checks, and from the ETags), credentials from the botocore session,
refreshed by botocore; error answers through the same code table as botocore's
(:mod:`tpi_aws.errors`)). Multipart control and batch deletes stay on the botocore client
(:mod:`tpi_aws._connection`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote_plus

from tpi_aws._session import Frozen
from tpi_aws._sigv4 import Signer
from tpi_aws.errors import from_answer, translate
from tpi_core.errors import TpiError
from tpi_core.transport.endpoint import Endpoint, split_base
from tpi_core.transport.protocol import ETagVersions

CA_HINT = "AWS_CA_BUNDLE names a CA file to trust"
Listed = tuple[str, int, str, float]


def is_md5_etag(etag: str, headers: Any) -> bool:
    """True when an ETag is the body's md5: single-part and not encrypted with KMS or SSE-C."""
    sse = headers.get("x-amz-server-side-encryption", "")
    customer = headers.get("x-amz-server-side-encryption-customer-algorithm")
    return len(etag) == 32 and "-" not in etag and not sse.startswith("aws:kms") and not customer


class S3Protocol(ETagVersions):
    """S3's part of a request (:class:`~tpi_core.transport.protocol.ObjectProtocol`)."""

    def __init__(self, host: str, root: str, region: str, credentials: Any):
        self.host, self._root = host, root
        self._region, self._credentials = region, credentials
        self._signer: tuple[Any, Signer] | None = None

    def locate(self, key: str, query: Mapping[str, str | int] | None = None
               ) -> tuple[str, str]:
        """The encoded path of an object (quoted as botocore quotes keys) and the sorted,
        encoded query: both exactly as sent and as signed."""
        pairs = sorted((quote(k, safe="-_.~"), quote(str(v), safe="-_.~"))
                       for k, v in (query or {}).items())
        path = f"{self._root}/{quote(key, safe='/~')}" if key else self._root or "/"
        return path, "&".join(f"{k}={v}" for k, v in pairs)

    async def sign(self, method: str, path: str, query: str,
                   headers: Mapping[str, str]) -> dict[str, str]:
        """SigV4 headers, by a signer kept until the credentials are refreshed."""
        return (await self._current_signer()).sign(method, self.host, path, query, headers)

    def error(self, status: int, reason: str, body: bytes, what: str) -> TpiError:
        """The tpi error for a failed answer, through the same code table as botocore's."""
        return service_error(status, reason, body, what)

    def md5_of(self, headers: Mapping[str, str]) -> str | None:
        """The ETag, when it is the body's md5."""
        etag = headers.get("ETag", "").strip('"')
        return etag if is_md5_etag(etag, headers) else None

    async def _current_signer(self) -> Signer:
        if self._credentials is None:
            from botocore.exceptions import NoCredentialsError

            raise translate(NoCredentialsError())
        frozen = self._credentials if isinstance(self._credentials, Frozen) \
            else await self._credentials.get_frozen_credentials()
        if self._signer is None or self._signer[0] != frozen:
            # refreshed credentials get a new signer; until then the same one is reused
            self._signer = (frozen, Signer(frozen.access_key, frozen.secret_key,
                                           frozen.token, self._region))
        return self._signer[1]


class Wire(Endpoint):
    """Signed requests to the objects of one bucket, and its listing."""

    def __init__(self, bucket_url: str, region: str, credentials: Any, *, pool: int,
                 ca_bundle: str | None = None):
        origin, host, root = split_base(bucket_url)
        super().__init__(origin, S3Protocol(host, root, region, credentials), pool=pool,
                         ca_bundle=ca_bundle, ca_hint=CA_HINT)

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


def _parse_listing(body: bytes) -> tuple[list[Listed], dict[str, str]]:
    """The objects of one ListObjectsV2 page and its other top-level fields. Children are
    walked once by local name: ``findtext("{*}...")`` per field was much slower."""
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


def service_error(status: int, reason: str, body: bytes, what: str) -> TpiError:
    """The tpi error for a failed answer, through the same code table as botocore's."""
    code, message = _error_fields(body)
    return from_answer(code or str(status), message or reason or "", status, what)


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""

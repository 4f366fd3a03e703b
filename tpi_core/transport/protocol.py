"""What a storage tells the transport about its service: how to address, sign and check.

A storage plugs into :class:`~.endpoint.Endpoint` with an object of this shape. S3's is
``tpi_aws._wire.S3Protocol``; a GCS one would locate ``/storage/v1/b/B/o/KEY?alt=media``
(uploads under ``/upload/storage/v1/...``), sign with an OAuth bearer token, parse the JSON
error body, read ``x-goog-hash: md5=`` and pin a version by its generation; an Azure
Blob one would locate ``/container/blob``, sign with Shared Key or a SAS, parse the XML
error and read ``Content-MD5`` (``x-ms-blob-content-md5`` for a range).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tpi_core.errors import TpiError


class ObjectProtocol(Protocol):
    """The service-specific part of requests to one bucket or container."""

    def locate(self, key: str, query: Mapping[str, str | int] | None = None
               ) -> tuple[str, str]:
        """The encoded path of an object (``""``: the bucket itself) and the encoded
        query, exactly as they are sent and signed."""
        ...

    async def sign(self, method: str, path: str, query: str,
                   headers: Mapping[str, str]) -> dict[str, str]:
        """The headers to send for a request: ``headers`` plus authentication."""
        ...

    def error(self, status: int, reason: str, body: bytes, what: str) -> TpiError:
        """The tpi error for an answer that is no success (``body`` read whole)."""
        ...

    def md5_of(self, headers: Mapping[str, str]) -> str | None:
        """The hex md5 of the whole object an answer's headers vouch for, when they carry
        one that can be verified (S3: a single-part ETag without KMS; GCS: x-goog-hash;
        Azure: Content-MD5); None when nothing can be checked."""
        ...

    def version(self, headers: Mapping[str, str]) -> str:
        """What identifies the object's current version in an answer (S3: its ETag)."""
        ...

    def pinned(self, version: str) -> dict[str, str]:
        """Headers that make a later request fail unless the object still has ``version``
        (S3 and Azure: If-Match), so ranges of one object never mix two versions."""
        ...


class ETagVersions:
    """:meth:`ObjectProtocol.version` and :meth:`ObjectProtocol.pinned` of a service whose
    objects carry an ETag and that honours If-Match (S3, Azure Blob)."""

    def version(self, headers: Mapping[str, str]) -> str:
        """The ETag, without quotes."""
        return headers.get("ETag", "").strip('"')

    def pinned(self, version: str) -> dict[str, str]:
        """If-Match: the service answers 412 once the object is another."""
        return {"If-Match": f'"{version}"'}

"""GCS storage: ``gs://bucket/prefix`` on the core's object-store transport.

Everything but what is GCS's own comes from :mod:`tpi_core.transport`: the pool, proxies,
file bodies, the first-part/rest/range downloads and their checks. GCS's part is
:class:`GCSProtocol` (the JSON API's URLs, a bearer token, its JSON errors, ``x-goog-hash``
and generations) and the listing. Uploads go in one request (``uploadType=media``), the
body streamed from the file above 1 MiB; the md5 GCS answers is compared with what was
sent. ``STORAGE_EMULATOR_HOST`` (as the Google SDKs read it) points at an emulator, which
is sent no credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlparse

import anyio

from tpi_core.concurrent import task_group
from tpi_core.errors import (
    ObjectNotFound,
    PermissionDenied,
    ResourceNotFound,
    StorageError,
    TpiError,
    TransientError,
    UsageError,
)
from tpi_core.storage import ObjectInfo, Progress, Storage, join
from tpi_core.storage.local import checked_key
from tpi_core.transport import download
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.files import MEMORY_MAX, file_chunks
from tpi_core.transport.hashing import base64_to_hex, md5_digest
from tpi_core.transport.pool import Stream

API = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
POOL = 64
"""Connections kept per bucket: the sync engine's jobs plus ranges of large objects."""
RANGE_SLOTS = 16
DELETES = 32
"""Deletes in flight at once (the JSON API deletes one object per request)."""
_ERRORS: dict[int, type[TpiError]] = {401: PermissionDenied, 403: PermissionDenied,
                                      404: ObjectNotFound, 408: TransientError,
                                      429: TransientError}


class GCSProtocol:
    """Requests to one bucket through the JSON API (see ``ObjectProtocol``)."""

    def __init__(self, bucket: str, authenticated: bool = True):
        self.bucket, self.authenticated = bucket, authenticated
        self._token: Any = None

    def locate(self, key: str, query: Mapping[str, str | int] | None = None
               ) -> tuple[str, str]:
        if query is not None and "uploadType" in query:  # a new object's body
            return f"/upload/storage/v1/b/{self.bucket}/o", urlencode(query)
        if not key:  # the bucket: listings
            return f"/storage/v1/b/{self.bucket}/o", urlencode(query or {})
        return (f"/storage/v1/b/{self.bucket}/o/{quote(key, safe='')}",
                urlencode(query if query is not None else {"alt": "media"}))

    async def sign(self, method: str, path: str, query: str,
                   headers: Mapping[str, str]) -> dict[str, str]:
        if not self.authenticated:  # an emulator
            return dict(headers)
        if self._token is None:
            self._token = _token()
        return {**headers, "Authorization": f"Bearer {await self._token.get()}"}

    async def aclose(self) -> None:
        """Close the token's session, if one was opened."""
        if self._token is not None:
            await self._token.close()

    def error(self, status: int, reason: str, body: bytes, what: str) -> TpiError:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body.decode("utf-8", "replace").strip() or reason
        kind = _ERRORS.get(status, TransientError if status >= 500 else StorageError)
        if kind is ObjectNotFound and what.startswith("list"):
            kind = ResourceNotFound  # the bucket itself
        return kind(f"{what}: {message} (HTTP {status})")

    def md5_of(self, headers: Mapping[str, str]) -> str | None:
        for part in headers.get("x-goog-hash", "").split(","):
            name, _, value = part.strip().partition("=")
            if name == "md5":
                return base64_to_hex(value)
        return None

    def version(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-goog-generation", "")

    def pinned(self, version: str) -> dict[str, str]:
        return {"x-goog-if-generation-match": version} if version else {}


class GCSStorage(Storage):
    """Objects under one prefix of a GCS bucket."""

    SCHEME = "gs"
    VERIFIES_MD5 = True  # bodies are checked against x-goog-hash by the transport
    UPLOAD_MD5 = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 _shared: tuple[Endpoint, anyio.CapacityLimiter] | None = None):
        self._endpoint: Endpoint
        if not bucket or "/" in bucket or any(c.isspace() for c in bucket):
            raise UsageError(f"invalid GCS bucket name {bucket!r}")
        self.bucket, self.prefix = bucket, join(prefix)
        self._owner = _shared is None
        if _shared is None:
            emulator = endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
            protocol = GCSProtocol(bucket, authenticated=not emulator)
            _shared = (Endpoint((emulator or API).rstrip("/"), protocol, pool=POOL),
                       anyio.CapacityLimiter(RANGE_SLOTS))
        self._endpoint, self._slots = _shared
        self._listed = download.Listed()

    @classmethod
    def from_url(cls, url: str, **options: str) -> GCSStorage:
        """``gs://bucket/prefix``; option ``endpoint_url`` (an emulator)."""
        parsed = urlparse(url)
        if parsed.scheme != "gs" or not parsed.netloc:
            raise UsageError(f"not a gs://bucket/prefix URL: {url!r}")
        unknown = sorted(set(options) - {"endpoint_url"})
        if unknown:
            raise UsageError(f"unknown GCS storage option(s) {', '.join(unknown)} "
                             "(allowed: endpoint_url)")
        return cls(parsed.netloc, parsed.path, **options)

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def child(self, prefix: str) -> GCSStorage:
        return GCSStorage(self.bucket, join(self.prefix, checked_key(prefix.strip("/"))),
                          _shared=(self._endpoint, self._slots))

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def list(self, prefix: str = "", *, start_after: str = ""
                   ) -> AsyncIterator[ObjectInfo]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        query = {"prefix": self._full(prefix) if self.prefix else prefix,
                 "fields": "items(name,size,md5Hash,generation,updated),nextPageToken"}
        if start_after:
            query["startOffset"] = self._full(start_after)
        while True:
            async with self._endpoint.request("GET", "", query=query,
                                              what=f"list {self.url}") as resp:
                page = json.loads(await resp.read())
            for item in page.get("items", ()):
                key, size = item["name"], int(item.get("size", 0))
                if not key[cut:] or key.endswith("/") or key == query.get("startOffset"):
                    continue
                md5 = base64_to_hex(item.get("md5Hash", ""))
                self._listed.saw(key, size, item.get("generation", ""), md5)
                updated = datetime.fromisoformat(item["updated"].replace("Z", "+00:00"))
                yield ObjectInfo(key[cut:], size, md5, updated.timestamp())
            if not page.get("nextPageToken"):
                return
            query["pageToken"] = page["nextPageToken"]

    async def read(self, key: str) -> bytes:
        full = self._full(checked_key(key))
        async with self._endpoint.request("GET", full, what=f"read {full}") as resp:
            data = await resp.read()
            expected = self._endpoint.protocol.md5_of(resp.headers)
        if expected is not None and expected != md5_digest(data).hex():
            raise TransientError(f"read {full}: the body does not match its md5")
        return data

    async def write(self, key: str, data: bytes) -> None:
        full = self._full(checked_key(key))
        self._listed.take(full)
        await self._put(full, data, md5_digest(data))

    async def _put(self, full: str, body: bytes | Stream, digest: Any) -> None:
        what = f"upload {full}"
        query = {"uploadType": "media", "name": full, "fields": "md5Hash"}
        async with self._endpoint.request("POST", "", query=query, data=body, what=what,
                                          headers={"Content-Type": "application/octet-stream"}
                                          ) as resp:
            stored = base64_to_hex(json.loads(await resp.read()).get("md5Hash", ""))
        sent = digest if isinstance(digest, bytes) else digest.digest()
        if stored is not None and stored != sent.hex():
            raise TransientError(f"{what}: stored md5 {stored} does not match md5 sent "
                                 f"{sent.hex()}")

    async def upload(self, key: str, path: Path, progress: Progress | None = None) -> str:
        full, path = self._full(checked_key(key)), Path(path)
        self._listed.take(full)
        size = (await anyio.Path(path).stat()).st_size
        if size <= MEMORY_MAX:
            data = await anyio.Path(path).read_bytes()
            digest = md5_digest(data)
            await self._put(full, data, digest)
            if progress:
                progress(len(data))
            return digest.hex()
        hashes: list[Any] = []

        def body() -> AsyncIterator[bytes]:  # hashed as it is sent; made again on a retry
            hashes.append(hashlib.md5(usedforsecurity=False))
            return file_chunks(path, size, hashes[-1], progress)

        await self._put(full, Stream(size, body), _Last(hashes))
        return hashes[-1].hexdigest()

    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        full = self._full(checked_key(key))
        await download.fetch(self._endpoint, full, Path(path), progress, self._slots,
                             self._listed.take(full))

    async def delete(self, keys: Iterable[str]) -> None:
        slots = anyio.Semaphore(DELETES)

        async def one(full: str) -> None:
            async with slots:
                try:
                    async with self._endpoint.request("DELETE", full, query={},
                                                      what=f"delete {full}") as resp:
                        await resp.read()
                except ObjectNotFound:
                    pass  # gone already: what a delete wants

        async with task_group() as group:
            for key in keys:
                self._listed.take(self._full(key))
                group.start_soon(one, self._full(key))

    async def aclose(self) -> None:
        if self._owner:
            await self._endpoint.aclose()
            await self._endpoint.protocol.aclose()


class _Last:
    """The digest of the last attempt of a streamed body (a retry streams it again)."""

    def __init__(self, hashes: list[Any]):
        self._hashes = hashes

    def digest(self) -> bytes:
        return self._hashes[-1].digest()


def _token() -> Any:
    """OAuth access tokens from Application Default Credentials (gcloud-aio-auth)."""
    from gcloud.aio.auth import Token  # the Google auth stack: only for a real bucket

    return Token(scopes=[SCOPE])

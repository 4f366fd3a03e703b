"""GCS storage: ``gs://bucket/prefix`` on the core's object-store base.

Everything but what is GCS's own comes from :class:`~tpi_core.storage.objects.ObjectStorage`
and :mod:`tpi_core.transport`: reads, uploads, downloads, their checks, the listing cache.
GCS's part is :class:`GCSProtocol` (the JSON API's URLs, a bearer token, its JSON errors,
``x-goog-hash`` and generations), the JSON listing, the upload request (``uploadType=media``,
its answer's ``md5Hash`` compared with what was sent) and deletes, one request each.
``STORAGE_EMULATOR_HOST`` (as the Google SDKs read it) points at an emulator, which is sent
no credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import anyio

from tpi_core.errors import (
    ObjectNotFound,
    PermissionDenied,
    ResourceNotFound,
    StorageError,
    TpiError,
    TransientError,
)
from tpi_core.storage import Progress
from tpi_core.storage.objects import Entry, ObjectStorage
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.exceptions import BodyMismatch
from tpi_core.transport.files import MiB, file_chunks
from tpi_core.transport.hashing import base64_to_hex
from tpi_core.transport.pool import Stream
from tpi_gcp import auth

API = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
POOL = 64
"""Connections kept per bucket: the sync engine's jobs plus ranges of large objects."""
RANGE_SLOTS = 16
RESUMABLE_ENV = "TPI_GCS_RESUMABLE_ABOVE"
RESUMABLE_ABOVE = 64 * MiB
"""Objects larger than this (bytes; ``TPI_GCS_RESUMABLE_ABOVE`` changes it) go through a
resumable upload session, so a failure part way resumes from what GCS committed instead of
sending the whole again; smaller ones go as one simple upload (one request)."""
RESUMES = 5
"""Times one session is resumed before the upload fails (the sync then retries the file)."""
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
            self._token = auth.token_source(SCOPE)
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


class GCSStorage(ObjectStorage):
    """Objects under one prefix of a GCS bucket; option ``endpoint_url`` (an emulator)."""

    SCHEME, KIND = "gs", "GCS"
    LISTS_AFTER = True  # the JSON API lists in key order, from startOffset on

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None):
        super().__init__(bucket, prefix)
        emulator = endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST")
        protocol = GCSProtocol(bucket, authenticated=not emulator)
        self._endpoint = Endpoint((emulator or API).rstrip("/"), protocol, pool=POOL)
        self._slots = anyio.CapacityLimiter(RANGE_SLOTS)
        self._resumable_above = int(os.environ.get(RESUMABLE_ENV) or RESUMABLE_ABOVE)

    async def _open(self) -> Endpoint:
        return self._endpoint

    async def _entries(self, prefix: str, start_after: str) -> AsyncIterator[Entry]:
        query = {"prefix": prefix,
                 "fields": "items(name,size,md5Hash,generation,updated),nextPageToken"}
        if start_after:
            query["startOffset"] = start_after
        while True:
            async with self._endpoint.request("GET", "", query=query,
                                              what=f"list {self.url}") as resp:
                page = json.loads(await resp.read())
            for item in page.get("items", ()):
                md5 = base64_to_hex(item.get("md5Hash", ""))
                updated = datetime.fromisoformat(item["updated"].replace("Z", "+00:00"))
                yield Entry(item["name"], int(item.get("size", 0)), md5,
                            item.get("generation", ""), md5, updated.timestamp())
            if not page.get("nextPageToken"):
                return
            query["pageToken"] = page["nextPageToken"]

    async def _send(self, full: str, body: bytes | Stream, md5: bytes | None) -> str | None:
        query = {"uploadType": "media", "name": full, "fields": "md5Hash"}
        async with self._endpoint.request("POST", "", query=query, data=body,
                                          what=f"upload {full}",
                                          headers={"Content-Type": "application/octet-stream"}
                                          ) as resp:
            return _stored_md5(await resp.read())

    def _in_parts(self, size: int) -> bool:
        return size > self._resumable_above

    async def _send_parts(self, full: str, path: Path, size: int,
                          progress: Progress | None) -> str | None:
        """A resumable upload: open a session, send the whole file in one PUT; after a
        failure, ask the session what it committed and send the rest (GCS's documented
        protocol: ``Content-Range: bytes */SIZE`` answers 308 with the committed ``Range``,
        or the object once it is complete)."""
        what = f"upload {full}"
        query = {"uploadType": "resumable", "name": full, "fields": "md5Hash"}
        async with self._endpoint.request(
                "POST", "", query=query, what=f"{what} (open a resumable session)",
                headers={"X-Upload-Content-Length": str(size),
                         "X-Upload-Content-Type": "application/octet-stream"}) as resp:
            await resp.read()
            session = _session_query(resp.headers.get("location", ""), what)
        state: int | str = 0  # the next byte to send; once complete, the md5 stored
        for resume in range(RESUMES + 1):
            try:
                if resume:
                    state = await self._session_state(session, size, what, resume)
                if isinstance(state, str):
                    return state or None
                return await self._send_rest(session, path, size, state, progress, what)
            except (BodyMismatch, SessionGone):
                raise  # the file changed, or GCS forgot the session: the sync sends it again
            except TransientError:
                if resume == RESUMES:
                    raise
            await anyio.sleep(min(0.25 * 2 ** resume, 5.0))
        raise AssertionError("unreachable")

    async def _send_rest(self, session: dict[str, str], path: Path, size: int, offset: int,
                         progress: Progress | None, what: str) -> str | None:
        body = Stream(size - offset, lambda: file_chunks(path, size, None, progress, offset))
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"bytes {offset}-{size - 1}/{size}"}
        async with self._endpoint.request("PUT", "", query=session, data=body, what=what,
                                          headers=headers) as resp:
            return _stored_md5(await resp.read())

    async def _session_state(self, session: dict[str, str], size: int, what: str,
                             resume: int) -> int | str:
        """Where a session stands: the next byte to send, or the md5 (hex, "" when none is
        named) of the object once complete."""
        try:
            async with self._endpoint.request(
                    "PUT", "", query=session, data=b"", accept=(308,),
                    what=f"{what} (resume {resume})",
                    headers={"Content-Range": f"bytes */{size}"}) as resp:
                body = await resp.read()
                if resp.status != 308:
                    return _stored_md5(body) or ""
                committed = resp.headers.get("range", "")
        except StorageError as exc:  # 404 or 410: the session expired or was cancelled
            raise SessionGone(f"{what}: the resumable session is gone ({exc})") from exc
        return int(committed.rpartition("-")[2]) + 1 if committed else 0

    async def _delete_batch(self, keys: list[str]) -> None:
        await self._delete_each(keys, at_once=DELETES)

    async def _close(self) -> None:
        await self._endpoint.aclose()
        await self._endpoint.protocol.aclose()


class SessionGone(TransientError):
    """A resumable session GCS no longer knows: the whole file is sent again."""


def _stored_md5(body: bytes) -> str | None:
    """The hex md5 an upload's answer (an object resource, ``fields=md5Hash``) names."""
    return base64_to_hex(json.loads(body or b"{}").get("md5Hash", ""))


def _session_query(location: str, what: str) -> dict[str, str]:
    """The query of a resumable session's URI (its path is the upload path itself)."""
    query = dict(parse_qsl(urlsplit(location).query))
    if "upload_id" not in query:
        raise StorageError(f"{what}: the service opened no resumable session "
                           f"(Location: {location[:200]!r})")
    return query

"""Azure Blob storage: ``az://container/prefix`` on the core's object-store base.

Reads, uploads, downloads and the listing cache come from
:class:`~tpi_core.storage.objects.ObjectStorage` and :mod:`tpi_core.transport`. Azure's part
is :class:`BlobProtocol` (``/container/blob`` under the account's endpoint, Shared Key, a SAS
or a bearer token, the XML error body, ``Content-MD5`` and ``x-ms-blob-content-md5``, If-Match
on the ETag), the List Blobs XML by marker, Put Blob (a file up to 1 MiB with its
Content-MD5, which the service checks; larger ones streamed, the md5 the service computed
compared with what was sent), Put Block and Put Block List above ``STREAM_MAX`` (blocks of
8 MiB or more, each with its Content-MD5, several at once; the whole file's md5 stored as
the blob's), and deletes, one request each. Which account and how it signs:
:mod:`tpi_azure.account`.

Every request with a body says its Content-Length itself: Shared Key signs it.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio

from tpi_azure.account import API_VERSION, Account, find_account, now, shared_key
from tpi_azure.auth import token_source
from tpi_core.concurrent import task_group
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
from tpi_core.sync.manifest import md5_file
from tpi_core.transport.endpoint import Endpoint
from tpi_core.transport.files import MiB
from tpi_core.transport.hashing import base64_to_hex, content_md5
from tpi_core.transport.pool import Stream
from tpi_core.transport.protocol import ETagVersions
from tpi_core.transport.ranges import part_size, retrying, upload_parts

STORAGE_RESOURCE = "https://storage.azure.com/"
POOL = 64
"""Connections kept per container: the sync engine's jobs plus ranges of large blobs."""
RANGE_SLOTS = 16
DELETES = 32
"""Deletes in flight at once (one request each)."""
STREAM_MAX = 200 * MiB
"""Files above MEMORY_MAX and up to this size go in one streamed Put Blob; larger ones in
blocks, several at once."""
PAGE = 5000
"""Blobs per listing page (the service's most)."""
_CODES: Mapping[str, type[TpiError]] = {
    "ContainerNotFound": ResourceNotFound,
    "BlobNotFound": ObjectNotFound,
    "AuthenticationFailed": PermissionDenied,
    "AuthorizationFailure": PermissionDenied,
    "AuthorizationPermissionMismatch": PermissionDenied,
    "InsufficientAccountPermissions": PermissionDenied,
    "ConditionNotMet": TransientError,  # replaced between ranged reads: fetched again
    "ServerBusy": TransientError,
    "OperationTimedOut": TransientError,
    "InternalError": TransientError,
}
_STATUSES: Mapping[int, type[TpiError]] = {401: PermissionDenied, 403: PermissionDenied,
                                          404: ObjectNotFound, 408: TransientError,
                                          412: TransientError, 429: TransientError}


class BlobProtocol(ETagVersions):
    """Requests to one container of an account (see ``ObjectProtocol``)."""

    def __init__(self, account: Account, container: str, base: str):
        self.account, self.container, self.base = account, container, base
        self._tokens: Any = None

    def locate(self, key: str, query: Mapping[str, str | int] | None = None
               ) -> tuple[str, str]:
        path = f"{self.base}/{self.container}" + (f"/{quote(key, safe='/')}" if key else "")
        parts = urlencode(query or {}, quote_via=quote)
        if self.account.sas:
            parts = "&".join(filter(None, [parts, self.account.sas]))
        return path, parts

    async def sign(self, method: str, path: str, query: str,
                   headers: Mapping[str, str]) -> dict[str, str]:
        signed = {**headers, "x-ms-date": now(), "x-ms-version": API_VERSION}
        if self.account.sas:
            return signed
        if self.account.key:
            signed["Authorization"] = shared_key(self.account, method, path, query, signed)
            return signed
        if self._tokens is None:
            self._tokens = token_source()
        signed["Authorization"] = f"Bearer {await self._tokens.get(STORAGE_RESOURCE)}"
        return signed

    async def aclose(self) -> None:
        """Close the token source, if one was made."""
        if self._tokens is not None:
            await self._tokens.close()

    def error(self, status: int, reason: str, body: bytes, what: str) -> TpiError:
        code, message = _error_of(body)
        kind = (_CODES.get(code) or _STATUSES.get(status)
                or (TransientError if status >= 500 else StorageError))
        if kind is ObjectNotFound and what.startswith("list"):
            kind = ResourceNotFound  # the container itself
        label = f"{code}: {message}" if code and message else code or message or reason
        return kind(f"{what}: {label} (HTTP {status})")

    def md5_of(self, headers: Mapping[str, str]) -> str | None:
        # a whole blob's Content-MD5; a range's (or Put Blob's answer's) x-ms-blob-content-md5
        return base64_to_hex(headers.get("x-ms-blob-content-md5")
                             or headers.get("Content-MD5") or "")


class BlobStorage(ObjectStorage):
    """Blobs under one prefix of an Azure Blob container. Options: ``account`` (else from
    the environment: :func:`tpi_azure.account.find_account`), ``endpoint_url`` (the account's
    blob endpoint, when it is not ``https://ACCOUNT.blob.core.windows.net``); ``key``, given
    by the backend (read from ARM), signs with the account's key and is never in the URL;
    ``absent`` says the account does not exist: every operation raises ResourceNotFound
    with it (what a task never applied reads as "no storage")."""

    SCHEME, KIND = "az", "Azure Blob"
    OPTIONS = URL_OPTIONS = ("account", "endpoint_url")

    def __init__(self, container: str, prefix: str = "", *, account: str = "",
                 endpoint_url: str | None = None, key: str = "", absent: str = ""):
        super().__init__(container, prefix)
        self._absent = absent
        self.account, self.endpoint_url = account, endpoint_url or ""
        found = find_account(account)
        if key:
            found = Account(found.name, found.endpoint, key)
        origin, base = _split(endpoint_url or found.endpoint)
        self._endpoint = Endpoint(origin, BlobProtocol(found, container, base), pool=POOL)
        self._slots = anyio.CapacityLimiter(RANGE_SLOTS)

    async def create_container(self) -> None:
        """Create the container; one that exists already is no error."""
        async with self._endpoint.request("PUT", "", query={"restype": "container"},
                                          headers={"Content-Length": "0"}, accept=(409,),
                                          what=f"create container {self.bucket}") as resp:
            await resp.read()

    async def exists_container(self) -> bool:
        """Whether the container exists (and may be read)."""
        if self._absent:
            return False
        try:
            async with self._endpoint.request("GET", "", query={"restype": "container"},
                                              what=f"read container {self.bucket}") as resp:
                await resp.read()
        except (ObjectNotFound, ResourceNotFound):
            return False
        return True

    async def top_prefixes(self) -> list[str]:
        """The first-level prefixes under this storage's prefix (one per task in tpi's
        container), without the trailing ``/``."""
        await self._open()
        base = f"{self.prefix}/" if self.prefix else ""
        query = {"restype": "container", "comp": "list", "prefix": base, "delimiter": "/",
                 "maxresults": PAGE}
        found: list[str] = []
        while True:
            async with self._endpoint.request("GET", "", query=query,
                                              what=f"list {self.url}") as resp:
                page = ET.fromstring(await resp.read())
            found += [_text(p, "Name")[len(base):].rstrip("/")
                      for p in page.iterfind("Blobs/BlobPrefix")]
            marker = _text(page, "NextMarker")
            if not marker:
                return found
            query["marker"] = marker

    async def _open(self) -> Endpoint:
        if self._absent:
            raise ResourceNotFound(self._absent)
        return self._endpoint

    async def _entries(self, prefix: str, start_after: str) -> AsyncIterator[Entry]:
        await self._open()
        query = {"restype": "container", "comp": "list", "prefix": prefix,
                 "maxresults": PAGE}
        while True:
            async with self._endpoint.request("GET", "", query=query,
                                              what=f"list {self.url}") as resp:
                page = ET.fromstring(await resp.read())
            for blob in page.iterfind("Blobs/Blob"):
                props = blob.find("Properties")
                md5 = base64_to_hex(_text(props, "Content-MD5"))
                etag = _text(props, "Etag").strip('"')
                mtime = parsedate_to_datetime(_text(props, "Last-Modified")).timestamp()
                yield Entry(_text(blob, "Name"), int(_text(props, "Content-Length") or 0),
                            md5 or etag or None, etag, md5, mtime)
            marker = _text(page, "NextMarker")
            if not marker:
                return
            query["marker"] = marker

    async def _send(self, full: str, body: bytes | Stream, md5: bytes | None) -> str | None:
        await self._open()
        length = body.length if isinstance(body, Stream) else len(body)
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Length": str(length),
                   "Content-Type": "application/octet-stream",
                   **(content_md5(md5) if md5 else {})}
        async with self._endpoint.request("PUT", full, data=body, headers=headers,
                                          what=f"upload {full}") as resp:
            await resp.read()
            return base64_to_hex(resp.headers.get("Content-MD5", ""))

    def _in_parts(self, size: int) -> bool:
        return size > STREAM_MAX

    async def _upload_parts(self, full: str, path: Path, size: int,
                            progress: Progress | None) -> str:
        """Blocks (each with its Content-MD5) several at once, then the block list, with the
        whole file's md5 as the blob's (hashed on another thread meanwhile)."""
        hashed: list[str] = []

        async def whole_md5() -> None:
            hashed.append(await anyio.to_thread.run_sync(md5_file, path))

        async def put(number: int, data: bytes, digest: bytes) -> str:
            block = base64.b64encode(f"{number:08d}".encode()).decode()
            what = f"upload block {number} of {full}"
            async with self._endpoint.request(
                    "PUT", full, query={"comp": "block", "blockid": block}, data=data,
                    headers={"Content-Length": str(len(data)), **content_md5(digest)},
                    what=what) as resp:
                await resp.read()
            return block

        async with task_group() as group:
            group.start_soon(whole_md5)
            blocks = await upload_parts(path, size, part_size(size), put, self._slots,
                                        progress)
        md5 = hashed[0]
        body = ("<?xml version='1.0' encoding='utf-8'?><BlockList>"
                + "".join(f"<Latest>{b}</Latest>" for b in blocks)
                + "</BlockList>").encode()
        headers = {"Content-Length": str(len(body)), "Content-Type": "application/xml",
                   "x-ms-blob-content-md5": base64.b64encode(bytes.fromhex(md5)).decode()}

        async def commit() -> None:
            async with self._endpoint.request("PUT", full, query={"comp": "blocklist"},
                                              data=body, headers=headers,
                                              what=f"commit blocks of {full}") as resp:
                await resp.read()

        await retrying(commit)
        return md5

    async def _delete_batch(self, keys: list[str]) -> None:
        await self._delete_each(keys, {"x-ms-delete-snapshots": "include"}, at_once=DELETES)

    async def _close(self) -> None:
        await self._endpoint.aclose()
        await self._endpoint.protocol.aclose()


def _split(endpoint: str) -> tuple[str, str]:
    """``scheme://host[:port]`` and the path before containers (Azurite's is the account)."""
    found = re.match(r"^(https?://[^/]+)(/.*)?$", endpoint.rstrip("/"))
    if not found:
        raise StorageError(f"Azure Blob endpoint {endpoint!r} is not an http(s) URL")
    return found.group(1), found.group(2) or ""


def _text(node: ET.Element | None, name: str) -> str:
    found = node.find(name) if node is not None else None
    return (found.text or "") if found is not None else ""


def _error_of(body: bytes) -> tuple[str, str]:
    """Code and first line of message of an XML error body (empty for a HEAD)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body.decode("utf-8", "replace").strip()[:200]
    return _text(root, "Code"), (_text(root, "Message").splitlines() or [""])[0]



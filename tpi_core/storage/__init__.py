"""Object storage: the interface every backend hands out, and how to find one by URL.

Keys are relative to the storage's root (a task prefix), use ``/`` as separator and never
start with ``/``. A backend's storage is registered under its URL scheme in the entry-point
group ``tpi.storage`` (``file``, ``s3``, ...), so the agent and ``tpi sync`` can open one from
a URL alone (:func:`tpi_core.registry.open_storage`).
"""

from __future__ import annotations

import os

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

from tpi_core.errors import UsageError

Progress = Callable[[int], None]
"""Called with the number of bytes just moved."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key relative to the storage root, size and checksum."""

    key: str
    size: int
    etag: str | None = None
    mtime: float | None = None


class Storage(ABC):
    """Object storage rooted at one prefix (a bucket path, a directory).

    Contract for implementations:

    - ``list`` streams: it yields page by page and never loads a whole listing.
    - ``write``, ``upload`` and ``delete`` are idempotent; deleting a missing key is fine.
    - ``read`` and ``download`` raise :class:`~tpi_core.errors.ObjectNotFound` for a missing
      key and :class:`~tpi_core.errors.TransientError` for anything worth retrying
      (throttling, 5xx, connection reset); callers own the retry policy.
    - ``download`` writes exactly the path it is given; atomic placement is the caller's.
    - Every public method may run concurrently with the others on the same instance.
    """

    SCHEME: ClassVar[str]
    VERIFIES_MD5: ClassVar[bool] = False
    """True when ``download`` itself checks the bytes against the object's md5 whenever the
    service gives one (raising IntegrityError), so callers need not hash the file again."""
    UPLOAD_MD5: ClassVar[bool] = False
    """True when ``upload`` returns the hex md5 of the bytes it sent (hashed while sending),
    so callers that keep hashes need not read the file a second time."""
    LISTS_AFTER: ClassVar[bool] = False
    """True when ``list`` lists in key order and takes ``start_after`` (only keys after it),
    served by the service: a sync then reads a large listing as several ranges at once."""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: str) -> Storage:
        """Open the storage a URL of this class's scheme names."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL that :meth:`from_url` opens to the same root."""

    @abstractmethod
    def child(self, prefix: str) -> Storage:
        """A storage rooted at ``prefix`` under this one."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, streamed, in no promised order
        (see ``LISTS_AFTER`` for storages that promise key order and take ``start_after``)."""

    @abstractmethod
    async def read(self, key: str) -> bytes:
        """The whole object (small objects: reports, manifests)."""

    @abstractmethod
    async def write(self, key: str, data: bytes) -> None:
        """Create or replace an object."""

    @abstractmethod
    async def upload(self, key: str, path: Path,
                     progress: Progress | None = None) -> str | None:
        """Copy a local file to ``key`` (multipart for large files where the service has it);
        with ``UPLOAD_MD5``, return the hex md5 of what was sent."""

    @abstractmethod
    async def download(self, key: str, path: Path, progress: Progress | None = None) -> None:
        """Copy ``key`` to the local file ``path`` (ranged and parallel where it helps)."""

    @abstractmethod
    async def delete(self, keys: Iterable[str]) -> None:
        """Delete the given keys; missing keys are not an error."""

    async def delete_prefix(self, prefix: str = "") -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        batch: list[str] = []
        count = 0
        async for info in self.list(prefix):
            batch.append(info.key)
            if len(batch) >= 1000:
                await self.delete(batch)
                count, batch = count + len(batch), []
        if batch:
            await self.delete(batch)
        return count + len(batch)

    async def exists(self, key: str) -> bool:
        """True when ``key`` exists (one request; the sync engine never calls this per file)."""
        async for info in self.list(key):
            if info.key == key:
                return True
        return False

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def cut_name(name: str, size: int = 180) -> str:
    """The first ``size`` bytes of a file name, for a temporary name built on it (file
    systems count bytes: 80 CJK characters are 240); a character cut in two stays bytes,
    as the operating system takes them."""
    return os.fsdecode(os.fsencode(name)[:size])


def split_url(url: str) -> tuple[str, str]:
    """``scheme://bucket/prefix?query`` -> ``("bucket", "prefix")``."""
    bucket, _, prefix = url.partition("://")[2].partition("?")[0].partition("/")
    return bucket, prefix.strip("/")


def bucket_url(url: str, scheme: str, kind: str, options: Mapping[str, str],
               allowed: Sequence[str], query: Sequence[str] = ()) -> tuple[str, str, dict]:
    """``scheme://bucket/prefix`` and a storage's keyword options -> bucket, prefix, options
    (``query`` names options the URL's query may carry; a keyword option wins). A wrong
    scheme, no bucket, an unknown option: a UsageError naming ``kind`` (``S3``)."""
    parsed = urlparse(url)
    found = {k: v[0] for k, v in parse_qs(parsed.query).items() if k in query}
    options = {**found, **options}
    if parsed.scheme != scheme or not parsed.netloc:
        raise UsageError(f"not a {scheme}://bucket/prefix URL: {url!r}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UsageError(f"unknown {kind} storage option(s) {', '.join(unknown)} "
                         f"(allowed: {', '.join(allowed)})")
    return parsed.netloc, parsed.path, options


def check_bucket(bucket: str, kind: str) -> None:
    """A UsageError for a bucket name that is empty or holds ``/`` or white space."""
    if not bucket or "/" in bucket or any(c.isspace() for c in bucket):
        raise UsageError(f"invalid {kind} bucket name {bucket!r}")


def join(*parts: str) -> str:
    """Join key parts with ``/``, dropping empty parts and stray separators."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))

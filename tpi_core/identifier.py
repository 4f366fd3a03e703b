"""Task ids: ``tpi-{name}-{salt}-{hash}``, a port of TPI's ``task/common/identifier.go``.

An id checks itself: ``hash`` is the first 8 base36 digits of sha256(name + salt), so
:func:`parse` tells a tpi id from any other string, and every resource of a task can be found
again from cloud names and tags alone. That is what lets tpi work without a server.

The algorithm and lengths are TPI's, so ids agree with TPI's for the same name and salt:
``deterministic("test", seed="test")`` is TPI's ``tpi-test-3z4xlzwq-3u0vweb4``.

    long   tpi-{name}-{salt}-{hash}   at most 50 characters; name is [a-z0-9-], at most 28
    short  {salt}{hash}               16 characters, for names clouds keep short (Azure)
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

MAX_LONG_LENGTH = 50
SHORT_LENGTH = 16
PART_LENGTH = SHORT_LENGTH // 2
NAME_LENGTH = MAX_LONG_LENGTH - SHORT_LENGTH - len("tpi---")
FALLBACK_NAME = "task"
"""The name part used when a name has no letter or digit at all (TPI would emit ``tpi--``)."""

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_PART = re.compile(r"[a-z0-9]{8}")
_LONG = re.compile(r"tpi-([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)-([a-z0-9]{8})-([a-z0-9]{8})")


def normalize(name: str, length: int = NAME_LENGTH) -> str:
    """``name`` lowercased, each run of other characters than ``[a-z0-9]`` made one ``-``,
    cut to ``length`` and stripped of ``-`` at both ends (``"Hello, World!"`` -> ``hello-world``).
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower())[:length].strip("-")


def _base36(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits)) or "0"


def digest(text: str) -> str:
    """The first 8 base36 digits of sha256(``text``), as TPI's ``hash``."""
    return _base36(hashlib.sha256(text.encode()).digest())[:PART_LENGTH]


@dataclass(frozen=True, slots=True)
class TaskId:
    """A task id: a readable name and a salt; the hash is derived, so it cannot be wrong.

    ``name`` is normalised on construction; ``salt`` must be 8 characters of ``[a-z0-9]``.
    """

    name: str
    salt: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize(self.name) or FALLBACK_NAME)
        if not isinstance(self.salt, str) or not _PART.fullmatch(self.salt):
            raise ValueError(f"a task id salt is 8 characters of [a-z0-9], got {self.salt!r}")

    @property
    def hash(self) -> str:
        """The checksum part: digest of name and salt."""
        return digest(self.name + self.salt)

    @property
    def long(self) -> str:
        """``tpi-{name}-{salt}-{hash}``: resource names, tags, the index."""
        return f"tpi-{self.name}-{self.salt}-{self.hash}"

    @property
    def short(self) -> str:
        """``{salt}{hash}``: 16 characters, for clouds that allow only short names."""
        return self.salt + self.hash

    def __str__(self) -> str:
        return self.long


def deterministic(name: str, seed: str) -> TaskId:
    """The id of ``name`` whose salt comes from ``seed``: the same inputs give the same id on
    every run and every machine, and the same name with another seed gives another id.
    """
    return TaskId(name, digest(seed))


def random_id(name: str = "") -> TaskId:
    """A new id with a random salt (an ad hoc task that nothing needs to find by name)."""
    return TaskId(name, "".join(secrets.choice(_ALPHABET) for _ in range(PART_LENGTH)))


def parse(text: str) -> TaskId:
    """The :class:`TaskId` whose long form is exactly ``text``.

    Raises ValueError for anything else: another shape, a name that is not normalised or too
    long, or a hash that does not match its name and salt (a tampered or mistyped id).
    """
    match = _LONG.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a tpi task id: {text!r}")
    task_id = TaskId(match[1], match[2])
    if task_id.long != text:
        raise ValueError(f"not a tpi task id (checksum or name does not match): {text!r}")
    return task_id


def is_task_id(text: str) -> bool:
    """True when ``text`` is a valid long task id."""
    try:
        parse(text)
    except ValueError:
        return False
    return True

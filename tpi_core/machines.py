"""The size and region alias vocabulary every backend shares (TPI's ``machine`` and
``region`` syntax), and the errors that name an unknown one with a "did you mean".

A size alias is ``SIZE[+GPU]``: a size of :data:`SIZES` and, for a GPU machine, an
accelerator of :data:`ACCELERATORS` (``m``, ``m+t4``, ``xl+h100``). A backend keeps its own
table from alias to what the alias means on its cloud (:class:`Aliases`); a name that is not
an alias is the backend's native spelling, which it checks itself.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Generic, TypeVar

from tpi_core.errors import UsageError

SIZES = ("s", "m", "l", "xl")
"""Machine sizes from small to extra large (TPI's)."""
ACCELERATORS = ("t4", "k80", "v100", "a10", "a10g", "l4", "a100", "h100")
"""GPU names a size alias may carry after ``+``."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SizeAlias:
    """A parsed size alias: ``m+t4`` is ``SizeAlias("m", "t4")``."""

    size: str
    gpu: str = ""

    def __str__(self) -> str:
        return f"{self.size}+{self.gpu}" if self.gpu else self.size


def parse_size(text: str) -> SizeAlias | None:
    """The size alias ``text`` spells (any case, spaces around), or None."""
    size, plus, gpu = normal(text).partition("+")
    if size not in SIZES or (plus and gpu not in ACCELERATORS):
        return None
    return SizeAlias(size, gpu)


def normal(text: str) -> str:
    """How aliases are compared: without surrounding spaces, lower case."""
    return text.strip().lower()


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Aliases(Generic[T]):
    """One backend's table of ``kind`` aliases (``size`` for the ``machine`` key, or
    ``region``) to what each means on its cloud, and how its native names are described."""

    key: str
    """The task key the aliases are for: ``machine`` or ``region``."""
    table: Mapping[str, T]
    native: str
    """What a native name is, after "nor": ``an EC2 instance type``."""
    details: Mapping[str, str] = field(default_factory=dict)
    """What each alias gives (``8 vCPU, 32 GiB, 1x T4``), for ``tpi machines``."""

    def __post_init__(self) -> None:
        if self.key == "machine":
            wrong = [a for a in self.table if parse_size(a) is None or str(parse_size(a)) != a]
            if wrong:
                raise ValueError(f"not size aliases (SIZE[+GPU]): {', '.join(wrong)}")

    @property
    def kind(self) -> str:
        """``size`` or ``region``: what the aliases name."""
        return "size" if self.key == "machine" else self.key

    def get(self, text: str) -> T | None:
        """What the alias ``text`` means here, or None when it is not one."""
        return self.table.get(normal(text))

    def unknown(self, text: str, candidates: Iterable[str] = (), hint: str = "") -> UsageError:
        """The error for ``text``, neither an alias nor native: the closest of the aliases
        and ``candidates`` (native names), the ``hint`` on the native syntax, the aliases."""
        close = did_you_mean(normal(text), [*self.table, *candidates])
        hint = f"; {hint}" if hint else ""
        return UsageError(f"{self.key} {text!r} is neither a {self.kind} alias nor "
                          f"{self.native}{close}{hint}; aliases: {', '.join(self.table)}")


@dataclass(frozen=True)
class Vocabulary:
    """A backend's size and region aliases, read from its data file (:func:`load`)."""

    sizes: Aliases[tuple[str, ...]]
    regions: Aliases[str]


def load(package: str, *, native_size: str, native_region: str,
         name: str = "machines.toml") -> Vocabulary:
    """The aliases of a backend package's data file::

        [sizes]            # alias = native names, the preferred first, and what it gives
        "m+t4" = { native = ["g4dn.xlarge", "g4dn.2xlarge"], detail = "4 vCPU, 16 GiB, 1x T4" }
        [regions]          # alias = native region
        us-east = "us-east-1"

    Tables as data: a new cloud writes its aliases, not code; ``tpi machines`` prints them."""
    data = tomllib.loads(resources.files(package).joinpath(name).read_text())
    sizes = {alias: tuple(row["native"]) for alias, row in data["sizes"].items()}
    details = {alias: row.get("detail", "") for alias, row in data["sizes"].items()}
    return Vocabulary(Aliases("machine", sizes, native_size, details),
                      Aliases("region", dict(data["regions"]), native_region))

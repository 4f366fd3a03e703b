"""Size, region and image aliases of AWS. The size and region tables are data
(``machines.toml``); native names pass through unchanged, checked against EC2's families.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

from tpi_core.errors import UsageError
from tpi_core.machines import did_you_mean, load, normal

VOCABULARY = load(__package__, native_size="an EC2 instance type", native_region="an AWS region")
SIZE_ALIASES, REGION_ALIASES = VOCABULARY.sizes, VOCABULARY.regions
SIZES, REGIONS = SIZE_ALIASES.table, REGION_ALIASES.table


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """A DescribeImages search: the newest image of ``owner`` whose name matches."""

    owner: str
    architecture: str
    name: str
    alias: str = field(default="", compare=False)
    """The image alias this query stands for (empty for ``owner:architecture:name``)."""

    def describe(self) -> str:
        """How errors name it: the alias, or the query as a tasks file writes it."""
        query = f"{self.owner}:{self.architecture}:{self.name}"
        return f"image alias {self.alias!r} ({query})" if self.alias else f"image {query!r}"


IMAGES = {
    "ubuntu": ImageQuery("099720109477", "x86_64",
                         "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*", "ubuntu"),
    "nvidia": ImageQuery("amazon", "x86_64",
                         "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *", "nvidia"),
}

SHAPE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
                   r"\.(?:nano|micro|small|medium|large|\d*xlarge|metal(?:-\d+xl)?)$")
"""``family.size`` as every EC2 type is spelled (``m7i.2xlarge``, ``u-6tb1.metal``)."""


@functools.cache
def families() -> dict[str, tuple[str, ...]]:
    """EC2 family -> the sizes it sells, smallest first: the data file
    ``instance_types.json`` (from botocore's EC2 model; where it comes from is in its
    ``about``), read on first use. A family newer than the file passes on :data:`SHAPE`."""
    text = resources.files(__package__).joinpath("instance_types.json").read_text()
    found: dict[str, tuple[str, ...]] = {}
    for names, sizes in json.loads(text)["families"]:
        found.update(dict.fromkeys(names, tuple(sizes)))
    return found


_NATIVE_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_TPI_IMAGE = re.compile(r"^(?:[^@]+@)?([^:]+):([^:]+):(.+)$")


def instance_types(machine: str) -> tuple[str, ...]:
    """The instance types of a size alias, or the native type alone: a size its family
    sells, or any well-formed type of a family newer than the table."""
    key = normal(machine)
    if key in SIZES:
        return SIZES[key]
    family, _, size = key.partition(".")
    sizes = families().get(family)
    if size in (sizes or ()) or (sizes is None and SHAPE.match(key)):
        return (key,)
    raise _unknown_type(machine, family, sizes)


def region(name: str) -> str:
    """The AWS region of a region alias, or the native region."""
    key = normal(name)
    if key in REGIONS:
        return REGIONS[key]
    if _NATIVE_REGION.match(key):
        return key
    raise REGION_ALIASES.unknown(name)


def image(spec: str) -> str | ImageQuery:
    """An AMI id as given, or the query that finds the image of an alias.

    TPI's ``user@owner:architecture:name-glob`` form is accepted too (``*`` = any).
    """
    key = spec.strip()
    if key.lower() in IMAGES:
        return IMAGES[key.lower()]
    if _AMI.match(key):
        return key
    found = _TPI_IMAGE.match(key)
    if found:
        return ImageQuery(*found.groups())
    raise UsageError(f"image {spec!r} is not an alias ({', '.join(IMAGES)}), an AMI id "
                     "(ami-...) or owner:architecture:name-pattern")


def _unknown_type(machine: str, family: str, sizes: tuple[str, ...] | None) -> UsageError:
    if sizes:  # a size the family does not sell, a typo most likely
        return UsageError(f"unknown EC2 instance type {machine!r}"
                          f"{did_you_mean(normal(machine), [f'{family}.{s}' for s in sizes])}; "
                          f"{family} sizes: {', '.join(sizes)}")
    native = [f"{f}.{s}" for f, known in families().items() for s in known]
    return SIZE_ALIASES.unknown(machine, native, "a type is family.size (e.g. m7i.2xlarge)")

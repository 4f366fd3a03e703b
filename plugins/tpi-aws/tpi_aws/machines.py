"""Size, region and image aliases of AWS (TPI's tables, brought up to date).

Each size alias lists several equivalent instance types, cheapest-first by convention: the
first is the launch template's type, and a spot group may use any of them, which spares
the capacity failures of TPI's single type. Native names pass through unchanged.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

from tpi_core.errors import UsageError
from tpi_core.machines import Aliases, did_you_mean, normal

SIZES: dict[str, tuple[str, ...]] = {
    "s": ("t3.micro", "t3a.micro", "t2.micro"),
    "m": ("m5.2xlarge", "m6i.2xlarge", "m6a.2xlarge", "m5a.2xlarge", "m7i.2xlarge"),
    "l": ("m5.8xlarge", "m6i.8xlarge", "m6a.8xlarge", "m5a.8xlarge", "m7i.8xlarge"),
    "xl": ("m5.16xlarge", "m6i.16xlarge", "m6a.16xlarge", "m5a.16xlarge", "m7i.16xlarge"),
    "m+t4": ("g4dn.xlarge", "g4dn.2xlarge"),
    "m+k80": ("p2.xlarge",),
    "l+k80": ("p2.8xlarge",),
    "xl+k80": ("p2.16xlarge",),
    # TPI maps m+v100 to p3.xlarge, which does not exist: P3 starts at p3.2xlarge
    "m+v100": ("p3.2xlarge",),
    "l+v100": ("p3.8xlarge",),
    "xl+v100": ("p3.16xlarge", "p3dn.24xlarge"),
    "m+a10g": ("g5.xlarge", "g5.2xlarge"),
    "l+a10g": ("g5.12xlarge", "g5.24xlarge"),
    "xl+a10g": ("g5.48xlarge",),
    "m+l4": ("g6.xlarge", "g6.2xlarge"),
    "l+l4": ("g6.12xlarge", "g6.24xlarge"),
    "xl+l4": ("g6.48xlarge",),
    "xl+a100": ("p4d.24xlarge", "p4de.24xlarge"),
    "xl+h100": ("p5.48xlarge",),
}

DETAILS = {
    "s": "1-2 vCPU, 1 GiB", "m": "8 vCPU, 32 GiB", "l": "32 vCPU, 128 GiB",
    "xl": "64 vCPU, 256 GiB", "m+t4": "4 vCPU, 16 GiB, 1x T4",
    "m+k80": "4 vCPU, 61 GiB, 1x K80 (retired hardware)",
    "l+k80": "32 vCPU, 488 GiB, 8x K80 (retired hardware)",
    "xl+k80": "64 vCPU, 732 GiB, 16x K80 (retired hardware)",
    "m+v100": "8 vCPU, 61 GiB, 1x V100", "l+v100": "32 vCPU, 244 GiB, 4x V100",
    "xl+v100": "64 vCPU, 488 GiB, 8x V100", "m+a10g": "4 vCPU, 16 GiB, 1x A10G",
    "l+a10g": "48 vCPU, 192 GiB, 4x A10G", "xl+a10g": "192 vCPU, 768 GiB, 8x A10G",
    "m+l4": "4 vCPU, 16 GiB, 1x L4", "l+l4": "48 vCPU, 192 GiB, 4x L4",
    "xl+l4": "192 vCPU, 768 GiB, 8x L4", "xl+a100": "96 vCPU, 1152 GiB, 8x A100",
    "xl+h100": "192 vCPU, 2048 GiB, 8x H100",
}

REGIONS = {"us-east": "us-east-1", "us-west": "us-west-1",
           "eu-north": "eu-north-1", "eu-west": "eu-west-1"}

SIZE_ALIASES = Aliases("machine", SIZES, "an EC2 instance type")
REGION_ALIASES = Aliases("region", REGIONS, "an AWS region")


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

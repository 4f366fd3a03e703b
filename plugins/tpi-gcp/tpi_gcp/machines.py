"""Size, region and image aliases of GCP. The size and region tables are data
(``machines.toml``); native names pass through: ``MACHINE_TYPE[+ACCELERATOR*COUNT]``
(TPI's syntax), a region (``us-central1``) and an image URL, family or name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tpi_core.errors import UsageError
from tpi_core.machines import load, normal

VOCABULARY = load(__package__, native_size="a machine type (MACHINE[+ACCELERATOR*COUNT])",
                  native_region="a GCP region")
SIZE_ALIASES, REGION_ALIASES = VOCABULARY.sizes, VOCABULARY.regions

IMAGES = {
    "ubuntu": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
    "nvidia": "projects/deeplearning-platform-release/global/images/family/"
              "common-cu124-ubuntu-2204-py310",
}
"""The current Ubuntu LTS, and a Deep Learning VM image with NVIDIA's driver and CUDA."""

_MACHINE = re.compile(r"^([a-z][a-z0-9]*(?:-[a-z0-9]+)+)(?:\+([a-z0-9-]+)\*(\d+))?$")
_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")
_IMAGE = re.compile(r"^(?:projects/[a-z][-a-z0-9]*/global/images/(?:family/)?[a-z][-a-z0-9]*"
                    r"|[a-z][-a-z0-9]*/[a-z][-a-z0-9]*)$")
_GPU_FAMILIES = ("g2-", "a2-", "a3-")
"""Families whose GPUs come with the machine type (no accelerator to ask for)."""


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine type and the GPUs attached to it."""

    type: str
    accelerator: str = ""
    count: int = 0

    @property
    def gpus(self) -> bool:
        """Whether the machine has GPUs (attached, or built into its family)."""
        return bool(self.count) or self.type.startswith(_GPU_FAMILIES)


def machine(spec: str) -> Machine:
    """The machine of a size alias or of TPI's native syntax."""
    native = SIZE_ALIASES.get(spec)
    text = native[0] if native else normal(spec)
    found = _MACHINE.match(text)
    if not found:
        raise SIZE_ALIASES.unknown(spec, hint="a machine type is e.g. n2-standard-8, with GPUs "
                                              "n1-standard-8+nvidia-tesla-t4*1")
    kind, accelerator, count = found.groups()
    if accelerator and int(count) < 1:
        raise UsageError(f"machine {spec!r}: the accelerator count must be 1 or more")
    return Machine(kind, accelerator or "", int(count or 0))


def region(name: str) -> str:
    """The GCP region of a region alias, a region, or a zone's region."""
    key = normal(name)
    if key in REGION_ALIASES.table:
        return REGION_ALIASES.table[key]
    if _REGION.match(key):
        return key
    if found := _ZONE.match(key):
        return found.group(1)
    raise REGION_ALIASES.unknown(name, hint="a region is e.g. us-central1")


def image(spec: str) -> str:
    """The image (or image family) URL of an alias or of a native name: ``project/family``,
    or a ``projects/P/global/images/...`` path."""
    key = spec.strip()
    if key.lower() in IMAGES:
        return IMAGES[key.lower()]
    if not _IMAGE.match(key):
        raise UsageError(f"image {spec!r} is not an alias ({', '.join(IMAGES)}), "
                         "PROJECT/FAMILY or projects/P/global/images/[family/]NAME")
    if key.startswith("projects/"):
        return key
    project, family = key.split("/")
    return f"projects/{project}/global/images/family/{family}"

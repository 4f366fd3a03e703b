"""Size, region and image aliases of Azure. The size and region tables are data
(``machines.toml``); native names pass through: a VM size (``Standard_D8s_v5``), a location
(``westeurope``) and a Marketplace image URN (``PUBLISHER:OFFER:SKU:VERSION``) or the ARM id
of an image or gallery image version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tpi_core.errors import UsageError
from tpi_core.machines import load, normal

VOCABULARY = load(__package__, native_size="a VM size (Standard_...)",
                  native_region="an Azure location")
SIZE_ALIASES, REGION_ALIASES = VOCABULARY.sizes, VOCABULARY.regions

IMAGES = {
    "ubuntu": "Canonical:ubuntu-24_04-lts:server:latest",
    "nvidia": "microsoft-dsvm:ubuntu-hpc:2204:latest",
}
"""The current Ubuntu LTS, and the Ubuntu HPC image with NVIDIA's driver, CUDA and
InfiniBand (the Data Science VM's offer; TPI's ``ubuntu-2004`` DSVM is retired)."""

_SIZE = re.compile(r"^Standard_[A-Za-z0-9_]+$", re.I)
_LOCATION = re.compile(r"^[a-z]+[a-z0-9]*$")
_URN = re.compile(r"^[\w.-]+:[\w.-]+:[\w.-]+:[\w.-]+$")
_IMAGE_ID = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                       r"Microsoft\.Compute/(?:images|galleries)/.+$", re.I)
_GPU = re.compile(r"^Standard_N", re.I)


@dataclass(frozen=True, slots=True)
class Image:
    """A Marketplace image (``publisher``, ``offer``, ``sku``, ``version``) or an image id."""

    publisher: str = ""
    offer: str = ""
    sku: str = ""
    version: str = "latest"
    id: str = ""

    def reference(self) -> dict[str, str]:
        """The scale set's ``imageReference``."""
        if self.id:
            return {"id": self.id}
        return {"publisher": self.publisher, "offer": self.offer, "sku": self.sku,
                "version": self.version}


def size(spec: str) -> str:
    """The VM size of a size alias or a native size (``Standard_...``, any case)."""
    native = SIZE_ALIASES.get(spec)
    if native:
        return native[0]
    text = spec.strip()
    if not _SIZE.match(text):
        raise SIZE_ALIASES.unknown(spec, hint="a VM size is e.g. Standard_D8s_v5")
    return "Standard_" + text[len("Standard_"):]


def gpus(vm_size: str) -> bool:
    """Whether a size is of a GPU family (N-series)."""
    return bool(_GPU.match(vm_size))


def region(name: str) -> str:
    """The Azure location of a region alias or a location (``westeurope``)."""
    key = normal(name)
    if key in REGION_ALIASES.table:
        return REGION_ALIASES.table[key]
    compact = key.replace(" ", "")
    if _LOCATION.match(compact):
        return compact
    raise REGION_ALIASES.unknown(name, hint="a location is e.g. westeurope")


def image(spec: str) -> Image:
    """The image of an alias, a URN ``PUBLISHER:OFFER:SKU:VERSION`` (TPI's ``user@`` prefix
    is accepted and dropped: tpi logs in no one) or an image id."""
    key = spec.strip()
    key = IMAGES.get(key.lower(), key)
    if "@" in key and not key.startswith("/"):
        key = key.split("@", 1)[1]
    if "#" in key:
        raise UsageError(f"image {spec!r}: marketplace plans (#PLAN) are not supported; "
                         "name an image without a purchase plan")
    if _IMAGE_ID.match(key):
        return Image(id=key)
    if _URN.match(key):
        return Image(*key.split(":"))
    raise UsageError(f"image {spec!r} is not an alias ({', '.join(IMAGES)}), "
                     "PUBLISHER:OFFER:SKU:VERSION or an image's ARM id")

"""Sizes, node selectors, images and service accounts of Kubernetes tasks (TPI's syntax).

``machine`` is an alias or ``{cpu}-{memMB}[+{accelerator}*{count}]`` (``8-32000``,
``4-16000+nvidia*1``). The numbers become both requests and limits, so a task gets the
machine it asked for or stays visibly unschedulable (TPI sets limits only, and its pods land
on nodes too small for them). A GPU count is an ``nvidia.com/gpu`` resource; a named
accelerator other than the generic ``nvidia`` also selects nodes labelled
``accelerator=<name>`` (TPI's label).

``region`` is TPI's comma-separated ``key=value`` node selector; a value with no ``=`` (the
default ``us-west``) selects no node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tpi_core.errors import UsageError
from tpi_core.machines import Aliases, normal

SIZES: dict[str, str] = {
    "s": "1-1000", "m": "8-32000", "l": "32-128000", "xl": "64-256000",
    "m+t4": "4-16000+nvidia*1",
    "m+k80": "4-64000+nvidia*1", "l+k80": "32-512000+nvidia*8", "xl+k80": "64-768000+nvidia*16",
    "m+v100": "8-64000+nvidia*1", "l+v100": "32-256000+nvidia*4", "xl+v100": "64-512000+nvidia*8",
    "m+a10g": "4-16000+nvidia*1", "l+a10g": "48-192000+nvidia*4",
    "xl+a10g": "192-768000+nvidia*8", "m+l4": "4-16000+nvidia*1", "l+l4": "48-192000+nvidia*4",
    "xl+l4": "192-768000+nvidia*8", "xl+a100": "96-1152000+nvidia*8",
    "xl+h100": "192-2048000+nvidia*8",
}
"""TPI's K8s table (its GPU aliases all collapse to the generic ``nvidia``), plus the newer
GPU aliases of the AWS backend with the same shapes."""

SIZE_ALIASES = Aliases("machine", SIZES, "{cpu}-{memMB}[+{accelerator}*{count}]")

IMAGES = {"ubuntu": "ubuntu:24.04", "nvidia": "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"}
GENERIC_ACCELERATOR = "nvidia"
GPU_RESOURCE = "nvidia.com/gpu"
ACCELERATOR_LABEL = "accelerator"

_MACHINE = re.compile(r"^(\d+(?:\.\d+)?|\d+m)-(\d+)(?:\+([a-z0-9](?:[a-z0-9._-]*[a-z0-9])?)"
                      r"\*(\d+))?$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(?::[\w.-]+)?(?:@sha256:[0-9a-f]{64})?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^(?:[a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME_PART}$")
_LABEL_VALUE = re.compile(rf"^(?:{_NAME_PART})?$")


@dataclass(frozen=True, slots=True)
class Size:
    """What a machine string asks for."""

    cpu: str
    memory_mb: int
    accelerator: str = ""
    gpus: int = 0

    def resources(self, disk_size: int = -1) -> dict:
        """The container's ``resources``: requests equal to limits (``ephemeral-storage``
        is a limit only: the workdir copy lives there)."""
        wanted = {"cpu": self.cpu, "memory": f"{self.memory_mb}M"}
        if self.gpus:
            wanted[GPU_RESOURCE] = str(self.gpus)
        limits = dict(wanted)
        if disk_size > 0:
            limits["ephemeral-storage"] = f"{disk_size}G"
        return {"requests": wanted, "limits": limits}

    def node_selector(self) -> dict[str, str]:
        """``accelerator=<name>`` for a named accelerator; nothing for the generic one."""
        if self.accelerator and self.accelerator != GENERIC_ACCELERATOR:
            return {ACCELERATOR_LABEL: self.accelerator}
        return {}


def size(machine: str) -> Size:
    """The size of an alias or of ``{cpu}-{memMB}[+{accelerator}*{count}]``."""
    key = normal(machine)
    found = _MACHINE.match(SIZES.get(key, key))
    if not found:
        raise SIZE_ALIASES.unknown(machine)
    cpu, memory, accelerator, count = found.groups()
    if float(cpu.rstrip("m")) <= 0 or int(memory) <= 0 or (count is not None and int(count) < 1):
        raise UsageError(f"machine {machine!r}: cpu, memory and accelerator count must be > 0")
    return Size(cpu, int(memory), accelerator or "", int(count or 0))


def node_selector(region: str) -> dict[str, str]:
    """TPI's ``region``: ``key=value[,key=value...]``; no ``=`` at all selects no node."""
    if "=" not in region:
        return {}
    selector: dict[str, str] = {}
    for item in (part.strip() for part in region.split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UsageError(f"region {region!r}: {item!r} is not a node label key=value "
                             "(on Kubernetes, region is a comma-separated node selector)")
        selector[key] = value
    return selector


def image(spec: str) -> str:
    """The container image of an alias, or the image reference as given."""
    key = spec.strip()
    if key.lower() in IMAGES:
        return IMAGES[key.lower()]
    if not _IMAGE.match(key) or len(key) > 512:
        raise UsageError(f"image {spec!r} is neither an alias ({', '.join(IMAGES)}) nor a "
                         "container image reference (registry/name:tag)")
    return key


def object_name(name: str, what: str) -> str:
    """``name`` when it can name a Kubernetes object (a DNS subdomain)."""
    if not _DNS_SUBDOMAIN.match(name):
        raise UsageError(f"{what} {name!r} is not a Kubernetes object name "
                         "(lowercase letters, digits, '-' and '.')")
    return name


def service_account(name: str) -> str:
    """TPI's ``permission_set`` on Kubernetes: the name of a ServiceAccount (or "")."""
    return object_name(name, "permission_set") if name else ""


def is_label_key(key: str) -> bool:
    """True when ``key`` may be a label or annotation key."""
    return bool(_LABEL_KEY.match(key))


def is_label_value(value: str) -> bool:
    """True when ``value`` may be a label value (annotations take anything)."""
    return bool(_LABEL_VALUE.match(value))


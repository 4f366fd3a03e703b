"""Backends and storages found through entry points, imported on first use.

Names come from package metadata alone (``importlib.metadata``), so listing them imports no
cloud SDK. A backend is imported only when a task names it; a missing one raises an error
that says what to install, and a broken third-party plugin is reported without stopping the
others (fsspec's registry, hatchling's plugin manager).

``TPI_PLUGINS=aws,local`` limits which backends load; ``TPI_TRACE_PLUGINS=1`` prints each
load to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from tpi_core.backend import Backend
from tpi_core.errors import BackendNotInstalled, PluginError
from tpi_core.storage import Storage

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

BACKEND_GROUP = "tpi.backends"
STORAGE_GROUP = "tpi.storage"

ALIASES = {"az": "azure", "kubernetes": "k8s"}
"""Other spellings a tasks file may use for a backend name."""

FIRST_PARTY = {"aws": "aws", "k8s": "k8s", "gcp": "gcp", "azure": "azure", "s3": "aws",
               "gs": "gcp", "az": "azure"}
"""Backend or storage scheme -> the extra of the ``tpi`` distribution that installs it (a
test checks that each is declared)."""

PLANNED: dict[str, str] = {}
"""Backend -> the first-party plugin that will provide it, not published yet: no extra to
suggest (none today: every first-party backend is published)."""

KNOWN = {
    (BACKEND_GROUP, "local"): "tpi_core.backends.local:LocalBackend",
    (BACKEND_GROUP, "aws"): "tpi_aws.backend:AWSBackend",
    (BACKEND_GROUP, "k8s"): "tpi_k8s.backend:K8sBackend",
    (BACKEND_GROUP, "gcp"): "tpi_gcp.backend:GCPBackend",
    (BACKEND_GROUP, "azure"): "tpi_azure.backend:AzureBackend",
    (STORAGE_GROUP, "file"): "tpi_core.storage.local:LocalStorage",
    (STORAGE_GROUP, "s3"): "tpi_aws.storage:S3Storage",
    (STORAGE_GROUP, "k8s"): "tpi_k8s.storage:K8sStorage",
    (STORAGE_GROUP, "gs"): "tpi_gcp.storage:GCSStorage",
    (STORAGE_GROUP, "az"): "tpi_azure.storage:BlobStorage",
}
"""The first-party entry points, as their pyproject files declare them (a test checks).

Loading one of these imports its module straight away when it is importable: reading the
metadata of every installed distribution (and importing ``importlib.metadata``, which pulls
in the ``email`` package) is a large part of every command's start (benchmarks/README.md).
Every other name, and a
first-party package that is not installed, goes through the entry points.
"""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One entry point: its name, where it points, and which distribution ships it."""

    name: str
    value: str
    distribution: str
    version: str


def canonical(name: str) -> str:
    """The registry name for a backend spelling (``az`` -> ``azure``)."""
    name = name.strip().lower()
    return ALIASES.get(name, name)


def _allowed(name: str) -> bool:
    only = os.environ.get("TPI_PLUGINS")
    if not only:
        return True
    return name in {canonical(n) for n in only.split(",") if n.strip()}


def entry_points(group: str) -> list[EntryPoint]:
    """The installed entry points of ``group`` (imports ``importlib.metadata`` on first use)."""
    from importlib.metadata import entry_points as installed

    return list(installed(group=group))


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        # the first distribution that claims a name wins; duplicates are reported by plugins()
        found.setdefault(ep.name, ep)
    return found


def plugins(group: str = BACKEND_GROUP) -> list[PluginInfo]:
    """Every installed plugin of ``group`` (metadata only, nothing imported)."""
    rows = []
    for ep in entry_points(group=group):
        dist = ep.dist
        rows.append(PluginInfo(ep.name, ep.value, dist.name if dist else "?",
                               dist.version if dist else "?"))
    return sorted(rows, key=lambda r: r.name)


_registered: dict[str, type] = {}


def register_backend(name: str, cls: type | None) -> None:
    """Register (or with None, unregister) a backend class in this process only.

    For tests and embedding; published backends use the entry point.
    """
    if cls is None:
        _registered.pop(name, None)
    else:
        _registered[name] = cls


def backend_names() -> list[str]:
    """Names of the installed, allowed backends."""
    return sorted(n for n in {*_entry_points(BACKEND_GROUP), *_registered} if _allowed(n))


def install_hint(name: str, group: str = BACKEND_GROUP) -> str:
    """What to run to get a backend or storage scheme that is not installed."""
    extra = FIRST_PARTY.get(name)
    if extra:
        source = _source()
        if source:
            return f"pip install '{source}[{extra}]'"
        # the name tpi on PyPI is another project's: never point at it
        return (f"pip install '<tpi source folder>[{extra}]' (or its plugins/tpi-{extra}); "
                "the 'tpi' on PyPI is another project")
    hint = f"install a package that provides the {name!r} entry point in {group!r}"
    if name in PLANNED:
        return f"the first-party {PLANNED[name]} plugin is not published yet; {hint}"
    return hint


def backend_class(name: str) -> type:
    """The Backend subclass registered as ``name``, imported now."""
    name = canonical(name)
    if name in _registered and _allowed(name):
        return _registered[name]
    known = _known(BACKEND_GROUP, name)
    if known is not None and _allowed(name):
        return _load(name, known, Backend)
    eps = _entry_points(BACKEND_GROUP)
    if name not in eps or not _allowed(name):
        known = ", ".join(backend_names()) or "none"
        raise BackendNotInstalled(
            f"backend {name!r} is not installed (installed: {known}); {install_hint(name)}")
    return _load(name, eps[name].value, Backend)


def storage_class(scheme: str) -> type:
    """The Storage subclass registered for a URL scheme, imported now."""
    known = _known(STORAGE_GROUP, scheme)
    if known is not None:
        return _load(scheme, known, Storage, STORAGE_GROUP)
    eps = _entry_points(STORAGE_GROUP)
    if scheme not in eps:
        raise BackendNotInstalled(
            f"no storage for {scheme}:// URLs is installed; "
            f"{install_hint(scheme, STORAGE_GROUP)}")
    return _load(scheme, eps[scheme].value, Storage, STORAGE_GROUP)


def open_storage(url: str, **options: str) -> Storage:
    """Open a storage from its URL through the ``tpi.storage`` entry points.

    A plain path (no scheme) is a local directory.
    """
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "file" and "://" not in url:
        url = Path(url).resolve().as_uri()
    return storage_class(scheme).from_url(url, **options)


def _known(group: str, name: str) -> str | None:
    """The first-party entry point for ``name`` when its package can be imported."""
    value = KNOWN.get((group, name))
    if value is None or importlib.util.find_spec(value.split(".", 1)[0]) is None:
        return None
    return value


def _load(name: str, value: str, base: type, group: str = BACKEND_GROUP) -> type:
    """Import ``module:attr`` (an entry point's value) and check it subclasses ``base``."""
    if os.environ.get("TPI_TRACE_PLUGINS"):
        print(f"tpi: loading plugin {name!r} from {value}", file=sys.stderr)
    module, _, attr = value.partition(":")
    try:
        cls = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            cls = getattr(cls, part)
    except ImportError as exc:
        raise BackendNotInstalled(
            f"plugin {name!r} ({value}) cannot be imported: {exc}; {install_hint(name, group)}"
        ) from exc
    except Exception as exc:
        raise PluginError(f"plugin {name!r} ({value}) is broken: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"plugin {name!r} ({value}) is not a {base.__name__} subclass")
    return cls


def clear_cache() -> None:
    """Forget what was read from metadata (tests that install plugins on the fly)."""
    _entry_points.cache_clear()


def _source() -> str:
    """The folder tpi was installed from, when pip recorded one (an editable or local
    install): the place its plugins are installed from too."""
    import json  # start-up cost: only an install hint reads the metadata
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        direct = json.loads(metadata.distribution("tpi").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        return ""
    url = urlparse(direct.get("url", ""))
    return unquote(url.path) if url.scheme == "file" and "dir_info" in direct else ""

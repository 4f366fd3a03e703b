"""The agent bundle: what a task's machines install, made from what the CLI runs.

A bundle holds a wheel of each tpi distribution the machine needs (the core and the cloud's
plugin), built from the installed package's own files, and ``requirements.txt``: every
third-party distribution they need, pinned to the version installed beside the CLI. Nothing
is installed on a machine by a name an index resolves: the tpi wheels are installed by file
and the index only serves the pinned third-party versions (on PyPI the name ``tpi`` is
another project's).

The bundle is content-addressed. Its files are built byte for byte the same from the same
installation (fixed zip times and order), so its digest changes only when the code or a
pin does; it is stored under ``<digest>/`` beside every task of the account, uploaded once
(``manifest.json`` last, as the mark of a whole bundle) and shared by tasks of the same
version::

    <digest>/manifest.json        {"digest", "wheels", "requirements", "python", "built_by"}
    <digest>/requirements.txt     name==version, one a line, sorted
    <digest>/tpi-0.1.0-py3-none-any.whl
    <digest>/tpi_aws-0.1.0-py3-none-any.whl
    <digest>/anyio-4.9.0-py3-none-any.whl   only when asked to vendor third-party wheels
    <digest>/python-<arch>.tar.gz  only when the user gives a standalone Python (TPI_AGENT_PYTHON)

A machine without a network to an index (a Kubernetes pod installing from a ConfigMap with
``pip install --no-index --no-deps``) needs the third-party wheels too: ``build(...,
vendored=...)`` adds wheels of the named pure-Python distributions and of everything they
need, rebuilt the same reproducible way from their installed files. ``requirements.txt``
still pins them all, for the machines that do install from an index.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import posixpath
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from tpi_core.errors import BackendError, ObjectNotFound, UsageError
from tpi_core.retry import retry
from tpi_core.storage import Storage

CORE = ("tpi", "tpi_core")
"""The core distribution and its import package: in every bundle."""
PYTHON_ENV = "TPI_AGENT_PYTHON"
"""A standalone CPython archive (python-build-standalone's ``install_only`` layout:
``python/bin/python3``) for machines whose image has no Python 3.11+ to install."""
MANIFEST = "manifest.json"
REQUIREMENTS = "requirements.txt"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_WHEEL = b"Wheel-Version: 1.0\nGenerator: tpi-bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
_PURE_TAGS = {"py3-none-any", "py2.py3-none-any"}
_COMPILED = re.compile(r"\.(so|pyd|dylib)(\.[0-9]+)*$")
"""Native code: extension modules and shared libraries (``libfoo.so.1.2`` too)."""
_INFO_KEPT = {"METADATA", "entry_points.txt", "top_level.txt"}
_LICENSE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Bundle:
    """A built bundle: its files by name, and its digest."""

    files: dict[str, bytes]
    wheels: tuple[str, ...]
    python: str = ""
    """The standalone Python's file name, when the bundle carries one."""
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.files))

    def manifest(self) -> bytes:
        """``manifest.json``: what the boot script reads to install."""
        return json.dumps({
            "digest": self.digest, "wheels": list(self.wheels), "requirements": REQUIREMENTS,
            "python": self.python, "built_by": f"tpi {metadata.version(CORE[0])}",
        }, indent=2, sort_keys=True).encode()


def build(distributions: Sequence[tuple[str, str]], *, python: Path | None = None,
          vendored: Sequence[str] = ()) -> Bundle:
    """The bundle of the core plus ``distributions`` (``(distribution, import package)``
    pairs, e.g. ``("tpi-aws", "tpi_aws")``), as installed beside this process.

    ``vendored`` names third-party distributions whose wheels the bundle carries too, with
    everything they need on a machine (see :func:`vendored_closure`), so that a machine
    with no index can install it all by file; their wheels come after tpi's own.
    """
    wanted = [CORE, *[d for d in distributions if canonicalize_name(d[0]) != CORE[0]]]
    ours = {canonicalize_name(name): _installed(name).version for name, _ in wanted}
    files: dict[str, bytes] = {}
    wheels = []
    for name, package in wanted:
        filename, data = build_wheel(name, package, ours)
        files[filename] = data
        wheels.append(filename)
    for dist in vendored_closure(vendored, ours):
        filename, data = build_vendored_wheel(dist.metadata["Name"])
        files[filename] = data
        wheels.append(filename)
    files[REQUIREMENTS] = "".join(f"{line}\n" for line in pins([n for n, _ in wanted])).encode()
    python = python or (Path(os.environ[PYTHON_ENV]) if os.environ.get(PYTHON_ENV) else None)
    python_name = ""
    if python is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.tar\.gz", python.name):
            raise UsageError(f"{PYTHON_ENV}={python}: a standalone Python is a .tar.gz whose "
                             "name has only letters, digits and ._+-")
        try:
            files[python_name := "python-" + python.name] = python.read_bytes()
        except OSError as exc:
            raise UsageError(f"{PYTHON_ENV}={python}: {exc.strerror or exc}") from None
    return Bundle(files, tuple(wheels), python_name)


def build_wheel(name: str, package: str, ours: dict[str, str]) -> tuple[str, bytes]:
    """A wheel of an installed distribution made from its import package's files.

    Works the same for an editable install and a regular one. Its metadata keeps the
    headers, drops requirements given by direct URL (an extra pointing at the build
    machine's ``file:///`` path), and pins requirements on other tpi distributions
    (``ours``: canonical name to version) to the exact version.
    """
    dist = _installed(name)
    try:
        module = __import__(package)
    except ImportError as exc:
        raise BackendError(f"cannot bundle {name}: {exc}") from None
    root = Path(module.__file__).parent
    version = dist.version
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    entries: list[tuple[str, bytes]] = []
    for path in sorted(_package_files(root)):
        entries.append((f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    info = f"{stem}.dist-info"
    entries.append((f"{info}/METADATA", _metadata(dist, ours).encode()))
    entries.append((f"{info}/WHEEL", _WHEEL))
    points = dist.read_text("entry_points.txt")
    if points:
        entries.append((f"{info}/entry_points.txt", points.encode()))
    return f"{stem}-py3-none-any.whl", _zip_wheel(info, entries)


def vendored_closure(names: Iterable[str],
                     ours: Iterable[str] = ()) -> list[metadata.Distribution]:
    """The installed distributions to vendor for ``names``: themselves and, transitively,
    the requirements a machine needs, sorted by name.

    A requirement counts as :func:`pins` counts it: its marker true on Linux for one of
    :data:`TARGET_PYTHONS`. The named distributions' own extras are not followed (``anyio``
    without ``trio``); an extra a requirement asks for (``foo[bar]``) is, as the install
    needs it. tpi's own distributions (``ours``) are skipped: the bundle has their wheels.
    A requirement that is not installed here is skipped only when this interpreter does
    not need it either (it cannot be vendored from here); otherwise it is an error.
    """
    skip = {canonicalize_name(n) for n in ours}
    found: dict[str, metadata.Distribution] = {}
    seen: dict[tuple[str, frozenset[str]], set[str]] = {}
    todo: list[tuple[str, str, frozenset[str], frozenset[str]]] = [
        (name, name, frozenset(), frozenset(TARGET_PYTHONS)) for name in names]
    while todo:
        name, root, extras, pythons = todo.pop()
        canonical = canonicalize_name(name)
        if canonical in skip:
            continue
        key = (canonical, extras)
        pythons = pythons - seen.get(key, set())
        if not pythons:
            continue
        seen.setdefault(key, set()).update(pythons)
        dist = found.get(canonical) or _installed(name, required=False)
        if dist is None:  # only a named one: a requirement is looked up before it is queued
            raise BackendError(f"cannot vendor {name}: it is not installed beside tpi "
                               f"(pip install {name})")
        found[canonical] = dist
        for req, where in _requirements(dist, extras, pythons):
            if canonicalize_name(req.name) in skip:
                continue
            if _installed(req.name, required=False) is None:
                if req.marker is None or any(req.marker.evaluate({"extra": e})
                                             for e in (extras or {""})):
                    raise BackendError(
                        f"cannot vendor {root}: it needs {req.name}, which is not installed "
                        f"beside tpi (pip install {req.name})")
                continue
            todo.append((req.name, root, frozenset(req.extras), frozenset(where)))
    return [found[name] for name in sorted(found)]


def build_vendored_wheel(name: str) -> tuple[str, bytes]:
    """A wheel of an installed third-party distribution, rebuilt from its installed files.

    Reproducible like :func:`build_wheel`: the files under site-packages (not the scripts
    it installed elsewhere, not bytecode), and from its ``.dist-info`` only what an install
    uses (``METADATA``, entry points, top-level names, licenses) with a fresh ``WHEEL`` and
    ``RECORD``: never ``INSTALLER`` or ``direct_url.json``, which describe this computer.
    Only pure Python can go to every machine: native code is a :class:`BackendError`.
    """
    dist = _installed(name, required=False)
    if dist is None:
        raise BackendError(f"cannot vendor {name}: it is not installed beside tpi "
                           f"(pip install {name})")
    files = dist.files
    if files is None:
        raise BackendError(f"cannot vendor {name}: its installed files are not listed "
                           "(it has no RECORD)")
    _check_pure(name, dist, files)
    version = dist.version
    stem = f"{canonicalize_name(dist.metadata['Name'] or name).replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    entries: dict[str, bytes] = {}
    for path in files:
        target = _vendored_path(path.as_posix(), info)
        if target is None:
            continue
        try:
            entries[target] = Path(str(dist.locate_file(path))).read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot vendor {name}: {path}: {exc.strerror or exc}") from None
    if f"{info}/METADATA" not in entries:
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if not text:
            raise BackendError(f"cannot vendor {name}: it has no METADATA")
        entries[f"{info}/METADATA"] = text.encode()
    entries[f"{info}/WHEEL"] = _WHEEL
    return f"{stem}-py3-none-any.whl", _zip_wheel(info, sorted(entries.items()))


def _check_pure(name: str, dist: metadata.Distribution,
                files: Iterable[metadata.PackagePath]) -> None:
    """Raise unless ``dist`` is pure Python: no native files, a purelib ``py3`` wheel."""
    native = sorted(path.as_posix() for path in files if _COMPILED.search(path.name))
    why = native[0] if native else ""
    wheel = [line.partition(":") for line in (dist.read_text("WHEEL") or "").splitlines()]
    fields = [(key.strip().lower(), value.strip()) for key, _, value in wheel]
    tags = [value for key, value in fields if key == "tag"]
    if not why and any(k == "root-is-purelib" and v.lower() != "true" for k, v in fields):
        why = "its wheel is not Root-Is-Purelib"
    if not why and tags and not (_PURE_TAGS & set(tags)
                                 and all(t.endswith("-none-any") for t in tags)):
        why = f"its wheel is tagged {', '.join(tags)}"
    if why:
        raise BackendError(f"cannot vendor {name}: it is not pure Python ({why})")


def _vendored_path(path: str, info: str) -> str | None:
    """Where an installed file (relative to site-packages) goes in the vendored wheel, or
    None to leave it out."""
    path = posixpath.normpath(path)
    parts = path.split("/")
    if path.startswith("/") or parts[0] == "..":
        return None  # outside site-packages: a console script, data under the prefix
    if _SKIP_DIRS & set(parts) or path.endswith(_SKIP_SUFFIXES):
        return None
    if not parts[0].endswith((".dist-info", ".egg-info")):
        return path
    inner = "/".join(parts[1:])
    if inner in _INFO_KEPT or (len(parts) > 2 and parts[1] == "licenses") or (
            len(parts) == 2 and _LICENSE.match(parts[1])):
        return f"{info}/{inner}"
    return None


def _zip_wheel(info: str, entries: Sequence[tuple[str, bytes]]) -> bytes:
    """The wheel of ``entries`` (in that order) and their ``RECORD`` last, byte for byte
    the same each time: fixed times, modes and compression."""
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in entries:
        writer.writerow([path, f"sha256={_b64(hashlib.sha256(data).digest())}", len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in [*entries, (f"{info}/RECORD", record.getvalue().encode())]:
            item = zipfile.ZipInfo(path, _ZIP_TIME)
            item.create_system = 3  # Unix, wherever it is built: the modes below count
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(item, data)
    return out.getvalue()


TARGET_PYTHONS = ("3.11", "3.12", "3.13", "3.14")
"""The Pythons a machine may run the agent with (the boot takes the newest 3.11+ it finds)."""


def pins(names: Iterable[str]) -> list[str]:
    """Every third-party distribution the named ones need on a machine, pinned to the
    version installed here: ``name==version``, with ``; python_version in "..."`` when only
    some of :data:`TARGET_PYTHONS` need it.

    Markers are evaluated for the machine (Linux on x86_64 or aarch64, CPython, each target
    Python), not for this computer, and extras are followed. A distribution the machine
    needs but this computer does not have (a Linux-only dependency, seen from a Mac) cannot
    be pinned: it keeps its requirement's own version range.
    """
    ours = {canonicalize_name(n) for n in names}
    needed: dict[str, set[str]] = {}
    lines: dict[str, str] = {}
    seen: dict[tuple[str, frozenset[str]], set[str]] = {}
    todo: list[tuple[str, frozenset[str], frozenset[str]]] = [
        (n, frozenset(), frozenset(TARGET_PYTHONS)) for n in names]
    while todo:
        name, extras, pythons = todo.pop()
        key = (canonicalize_name(name), extras)
        pythons = pythons - seen.get(key, set())
        if not pythons:
            continue
        seen.setdefault(key, set()).update(pythons)
        dist = _installed(name, required=canonicalize_name(name) in ours)
        if dist is None:
            continue
        for req, where in _requirements(dist, extras, pythons):
            canonical = canonicalize_name(req.name)
            if canonical in ours:
                continue
            needed.setdefault(canonical, set()).update(where)
            installed = _installed(req.name, required=False)
            lines[canonical] = (f"{canonical}=={installed.version}" if installed
                                else f"{canonical}{req.specifier}")
            todo.append((req.name, frozenset(req.extras), frozenset(where)))
    return sorted(lines[name] + _python_marker(needed[name]) for name in lines)


def _python_marker(pythons: set[str]) -> str:
    if pythons >= set(TARGET_PYTHONS):
        return ""
    return f' ; python_version in "{" ".join(sorted(pythons))}"'


def _requirements(dist: metadata.Distribution, extras: frozenset[str],
                  pythons: frozenset[str]) -> list[tuple[Requirement, set[str]]]:
    """The requirements of ``dist`` a machine needs, each with the target Pythons that
    need it."""
    wanted = []
    for line in dist.requires or ():
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.url:
            continue  # a direct reference (tpi's own extras): never followed
        where = {v for v in pythons if req.marker is None or any(
            req.marker.evaluate({**_machine(v, arch), "extra": e})
            for arch in ("x86_64", "aarch64") for e in (extras or {""}))}
        if where:
            wanted.append((req, where))
    return wanted


def _machine(python: str, arch: str) -> dict[str, str]:
    return {**default_environment(), "python_version": python, "python_full_version":
            f"{python}.0", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": arch, "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


def _metadata(dist: metadata.Distribution, ours: dict[str, str]) -> str:
    lines = []
    for key, value in dist.metadata.items():
        if key == "Description":
            continue
        if key == "Requires-Dist":
            try:
                req = Requirement(value)
            except InvalidRequirement:
                continue
            if req.url:
                continue
            if (canonical := canonicalize_name(req.name)) in ours:
                value = f"{canonical}=={ours[canonical]}" + (
                    f" ; {req.marker}" if req.marker else "")
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def _package_files(root: Path) -> Iterable[Path]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in names:
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(folder) / name


def _installed(name: str, required: bool = True) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        if not required:
            return None
        raise BackendError(f"cannot bundle the agent: {name} is not installed beside tpi "
                           f"(pip install {name})") from None


def _digest(files: dict[str, bytes]) -> str:
    total = hashlib.sha256()
    for name in sorted(files):
        total.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return total.hexdigest()[:32]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def publish(bundle: Bundle, storage: Storage) -> tuple[str, bool]:
    """Put the bundle under ``<digest>/`` of ``storage`` unless it is there already;
    ``(prefix, uploaded)``. The manifest goes last: a bundle with a manifest is whole."""
    prefix = bundle.digest
    try:
        await retry(storage.read, f"{prefix}/{MANIFEST}")
        return prefix, False
    except ObjectNotFound:
        pass
    for name, data in sorted(bundle.files.items()):
        await retry(storage.write, f"{prefix}/{name}", data)
    await retry(storage.write, f"{prefix}/{MANIFEST}", bundle.manifest())
    return prefix, True

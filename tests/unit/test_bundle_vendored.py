"""Vendored third-party wheels: what a machine with no index installs by file, pure Python."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tpi_core.boot import bundle
from tpi_core.errors import BackendError

VENDORED = ("anyio", "h11", "pathspec")
CLOSURE = ("anyio", "h11", "idna", "pathspec", "typing_extensions")
"""The named ones and what anyio needs on 3.11 (idna, typing_extensions), nothing else."""


def _wheel_name(name: str) -> str:
    return f"{canonicalize_name(name).replace('-', '_')}-{metadata.version(name)}-py3-none-any.whl"


def _zip(built: bundle.Bundle, name: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(built.files[name]))


@pytest.fixture(scope="module")
def built() -> bundle.Bundle:
    return bundle.build([], vendored=VENDORED)


def test_vendored_wheels_follow_tpis_own_with_their_dependencies(built):
    assert built.wheels == (_wheel_name("tpi"), *[_wheel_name(n) for n in CLOSURE])
    assert json.loads(built.manifest())["wheels"] == list(built.wheels)
    names = " ".join(built.files)
    assert "trio" not in names and "exceptiongroup" not in names  # an extra; Python < 3.11


def test_same_installation_same_digest_and_same_pins(built):
    again = bundle.build([], vendored=VENDORED)
    assert again.files == built.files and again.digest == built.digest
    plain = bundle.build([])
    assert plain.files[bundle.REQUIREMENTS] == built.files[bundle.REQUIREMENTS]
    assert plain.digest != built.digest  # the vendored wheels count


def test_each_vendored_wheel_is_whole_reproducible_and_has_no_bytecode(built):
    for name in built.wheels[1:]:
        wheel = _zip(built, name)
        info = name.rsplit("-", 3)[0] + ".dist-info"
        assert wheel.testzip() is None
        names = wheel.namelist()
        assert names[-1] == f"{info}/RECORD" and names[:-1] == sorted(names[:-1])
        record = list(csv.reader(io.StringIO(wheel.read(f"{info}/RECORD").decode())))
        assert [path for path, *_ in record] == names
        for path, digest, size in record[:-1]:
            data = wheel.read(path)
            raw = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={raw}", len(data)), path
        for item in wheel.infolist():
            assert item.date_time == bundle._ZIP_TIME and item.external_attr >> 16 == 0o644
            assert item.compress_type == zipfile.ZIP_DEFLATED
        assert not any("__pycache__" in n or n.endswith((".pyc", ".pyo")) for n in names)
        assert not any(n.startswith(("..", "/")) or "/../" in n for n in names)  # e.g. bin/idna
        dist_info = {n.split("/", 1)[1] for n in names if n.startswith(f"{info}/")}
        assert {"METADATA", "WHEEL", "RECORD"} <= dist_info
        assert not dist_info & {"INSTALLER", "REQUESTED", "direct_url.json"}
        assert b"Root-Is-Purelib: true\nTag: py3-none-any\n" in wheel.read(f"{info}/WHEEL")
    anyio = _zip(built, _wheel_name("anyio")).namelist()
    info = f"anyio-{metadata.version('anyio')}.dist-info"
    assert {f"{info}/entry_points.txt", f"{info}/top_level.txt"} <= set(anyio)
    assert any(n.startswith(f"{info}/licenses/") for n in anyio)


def test_the_bundle_installs_with_no_index_and_imports_from_it(built, tmp_path):
    for name in built.wheels:
        (tmp_path / name).write_bytes(built.files[name])
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), *[str(tmp_path / n) for n in built.wheels]],
                   check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import anyio, h11, pathspec, idna, "
            "typing_extensions, tpi_core; print(anyio.__file__); print(h11.__file__); "
            "print(pathspec.__file__); print(idna.__file__); print(typing_extensions.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(target)], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert len(out) == 5 and all(path.startswith(str(target)) for path in out), out


def _compiled() -> str:
    for name in ("multidict", "pyyaml", "yarl", "propcache", "markupsafe"):
        try:
            files = metadata.distribution(name).files or ()
        except metadata.PackageNotFoundError:
            continue
        if any(path.name.endswith((".so", ".pyd")) for path in files):
            return metadata.distribution(name).metadata["Name"]
    pytest.skip("no distribution with a compiled extension is installed")


def test_a_compiled_distribution_cannot_be_vendored():
    name = _compiled()
    with pytest.raises(BackendError, match=rf"cannot vendor {name}: it is not pure Python"):
        bundle.build([], vendored=(name,))


def test_an_unknown_distribution_cannot_be_vendored():
    with pytest.raises(BackendError, match="not-a-real-distribution-xyz"):
        bundle.build([], vendored=("not-a-real-distribution-xyz",))


def _fake_site(root: Path, requires: tuple[str, ...] = (),
               wheel: str = "Root-Is-Purelib: true\nTag: py3-none-any\n") -> Path:
    """An installed distribution as pip leaves it: package, bytecode, a console script
    outside site-packages, and a .dist-info with what only describes this computer."""
    site = root / "lib" / "site-packages"
    package = site / "fake_pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (root / "bin").mkdir()
    (root / "bin" / "fake").write_text("#!/bin/sh\n")
    info = site / "Fake.Pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: Fake.Pkg\nVersion: 1.0\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\n{wheel}")
    (info / "LICENSE.txt").write_text("MIT\n")
    for extra in ("INSTALLER", "REQUESTED", "direct_url.json", "top_level.txt"):
        (info / extra).write_text("x\n")
    listed = ["fake_pkg/__init__.py", "fake_pkg/__pycache__/__init__.cpython-311.pyc",
              "../../bin/fake", *[f"Fake.Pkg-1.0.dist-info/{p.name}" for p in info.iterdir()]]
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in listed))
    return info


def _use(monkeypatch, info: Path) -> None:
    fake = metadata.PathDistribution(info)
    real = bundle._installed

    def installed(name: str, required: bool = True) -> metadata.Distribution | None:
        return fake if canonicalize_name(name) == "fake-pkg" else real(name, required)
    monkeypatch.setattr(bundle, "_installed", installed)


def test_a_vendored_wheel_keeps_only_site_packages_code_and_install_metadata(
        tmp_path, monkeypatch):
    _use(monkeypatch, _fake_site(tmp_path))
    filename, data = bundle.build_vendored_wheel("fake.pkg")
    assert filename == "fake_pkg-1.0-py3-none-any.whl"
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == [
        "fake_pkg-1.0.dist-info/LICENSE.txt", "fake_pkg-1.0.dist-info/METADATA",
        "fake_pkg-1.0.dist-info/WHEEL", "fake_pkg-1.0.dist-info/top_level.txt",
        "fake_pkg/__init__.py", "fake_pkg-1.0.dist-info/RECORD"]


def test_a_wheel_tagged_for_a_platform_cannot_be_vendored(tmp_path, monkeypatch):
    wheel = "Root-Is-Purelib: false\nTag: cp311-cp311-manylinux_2_17_x86_64\n"
    _use(monkeypatch, _fake_site(tmp_path, wheel=wheel))
    with pytest.raises(BackendError, match=r"cannot vendor fake-pkg: it is not pure Python"):
        bundle.build_vendored_wheel("fake-pkg")


def test_a_missing_requirement_is_an_error_only_when_this_python_needs_it(tmp_path, monkeypatch):
    later = 'not-here-later ; python_version >= "3.99"'  # no target Python needs it
    newer = f'not-here-newer ; python_version > "{sys.version_info[0]}.{sys.version_info[1]}"'
    windows = 'not-here-windows ; sys_platform == "win32"'
    extra = 'not-here-extra ; extra == "x"'
    _use(monkeypatch, _fake_site(tmp_path, (later, newer, windows, extra, "h11")))
    closure = [d.metadata["Name"] for d in bundle.vendored_closure(["fake-pkg"])]
    assert closure == ["Fake.Pkg", "h11"]  # not-here-newer: a target's, not installed here
    (tmp_path / "again").mkdir()
    _use(monkeypatch, _fake_site(tmp_path / "again", ("not-here-at-all>=1",)))
    with pytest.raises(BackendError, match=r"cannot vendor fake-pkg: it needs not-here-at-all"):
        bundle.build([], vendored=("fake-pkg",))

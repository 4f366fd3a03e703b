"""The agent bundle: the tpi wheels as installed here, exact pins, content-addressed."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import io
import json
import subprocess
import sys
import zipfile

import pytest

from tpi_core.boot import bundle
from tpi_core.testing.memory import MemoryStorage

PLUGIN = ("tpi-aws", "tpi_aws")
pytest.importorskip("tpi_aws")


@pytest.fixture(scope="module")
def built() -> bundle.Bundle:
    return bundle.build([PLUGIN])


def _wheel(built: bundle.Bundle, name: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(built.files[name]))


def test_same_installation_same_bytes_same_digest(built):
    again = bundle.build([PLUGIN])
    assert again.files == built.files and again.digest == built.digest
    assert built.wheels == ("tpi-0.1.0-py3-none-any.whl", "tpi_aws-0.1.0-py3-none-any.whl")


def test_requirements_pin_what_is_installed_and_never_a_path(built):
    lines = built.files[bundle.REQUIREMENTS].decode().splitlines()
    pinned = dict(line.split("==") for line in lines)
    assert pinned["aioboto3"] == metadata.version("aioboto3")
    assert pinned["anyio"] == metadata.version("anyio")
    assert pinned["botocore"] == metadata.version("botocore")  # a dependency's dependency
    assert "tpi" not in pinned and "tpi-aws" not in pinned  # those come by file
    assert not any("@" in line or "file:" in line or "moto" in line for line in lines)
    assert lines == sorted(lines)


def test_wheel_metadata_has_no_build_machine_path_and_pins_the_core(built):
    core = _wheel(built, built.wheels[0]).read("tpi-0.1.0.dist-info/METADATA").decode()
    assert "file:" not in core and "Name: tpi\n" in core
    plugin = _wheel(built, built.wheels[1]).read("tpi_aws-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: tpi==0.1.0\n" in plugin
    points = _wheel(built, built.wheels[1]).read("tpi_aws-0.1.0.dist-info/entry_points.txt")
    assert b"tpi_aws.backend:AWSBackend" in points


def test_record_matches_every_file(built):
    for name in built.wheels:
        wheel = _wheel(built, name)
        record = [line.split(",") for line in wheel.read(
            next(n for n in wheel.namelist() if n.endswith("/RECORD"))).decode().splitlines()]
        assert {path for path, *_ in record} == set(wheel.namelist())
        for path, digest, size in record:
            if digest:
                data = wheel.read(path)
                raw = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                assert (digest, int(size)) == (f"sha256={raw.decode()}", len(data)), path
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in wheel.namelist())


def test_the_wheels_install_and_import(built, tmp_path):
    for name in built.wheels:
        (tmp_path / name).write_bytes(built.files[name])
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), *[str(tmp_path / n) for n in built.wheels]],
                   check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tpi_core.agent, tpi_aws.agent, "
            "tpi_core.boot.script as s; print(tpi_aws.agent.__file__); "
            "print(len(s._read('boot.sh')))")
    out = subprocess.run([sys.executable, "-c", code, str(target)], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert out[0].startswith(str(target)) and int(out[1]) > 1000  # package data came along


@pytest.mark.anyio
async def test_publish_once_manifest_last(built):
    storage = MemoryStorage()
    prefix, uploaded = await bundle.publish(built, storage)
    assert (prefix, uploaded) == (built.digest, True)
    keys = list(storage.objects)
    assert keys[-1] == f"{prefix}/{bundle.MANIFEST}"  # the mark of a whole bundle, last
    manifest = json.loads(storage.objects[keys[-1]])
    assert manifest["wheels"] == list(built.wheels) and manifest["digest"] == built.digest
    writes = storage.calls["write"]
    assert await bundle.publish(built, storage) == (prefix, False)
    assert storage.calls["write"] == writes  # unchanged: nothing uploaded again


def test_a_standalone_python_rides_along(tmp_path):
    archive = tmp_path / "cpython-3.12-x86_64.tar.gz"
    archive.write_bytes(b"not really an archive")
    with_python = bundle.build([PLUGIN], python=archive)
    assert with_python.python == "python-cpython-3.12-x86_64.tar.gz"
    assert with_python.files[with_python.python] == archive.read_bytes()
    assert with_python.digest != bundle.build([PLUGIN]).digest


class _Dist:
    def __init__(self, version: str, *requires: str):
        self.version, self.requires = version, list(requires)


def test_pins_follow_markers_as_the_machine_sees_them(monkeypatch):
    fake = {
        "app": _Dist("1", 'old-only ; python_version < "3.12"', 'mac-only ; sys_platform == "darwin"',
                     'extra-only ; extra == "x"', "plain[x]", "absent>=2,<3",
                     'arm-only ; platform_machine == "aarch64"'),
        "old-only": _Dist("1.1"), "mac-only": _Dist("9"), "extra-only": _Dist("2"),
        "plain": _Dist("3", 'deep ; extra == "x"', 'deeper ; extra == "y"'),
        "deep": _Dist("4", 'only-312 ; python_version == "3.12"'), "deeper": _Dist("5"),
        "only-312": _Dist("6"), "arm-only": _Dist("7"),
    }
    monkeypatch.setattr(bundle, "_installed", lambda name, required=True: fake.get(name))
    assert bundle.pins(["app"]) == [
        "absent<3,>=2",  # needed but not installed here: its own range, never unbounded
        "arm-only==7", "deep==4",
        'old-only==1.1 ; python_version in "3.11"',
        'only-312==6 ; python_version in "3.12"',
        "plain==3"]

"""The agent image's start (``AGENT_BOOT``), run for real: it installs the bundle by file with
a Python that has nothing installed, skips a prepared image, and says what is missing.

The script's fixed paths (``/tpi/bundle``, ``/tpi/agent``, ``/opt/tpi``) are pointed at
temporary directories, as the pod's volumes would be mounted there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tpi_k8s import launch
from tpi_k8s.backend import K8sBackend

from tpi_core.boot.bundle import MANIFEST, REQUIREMENTS, build


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A python3 with pip and nothing else (no tpi): what an official Python image has."""
    root = tmp_path_factory.mktemp("clean")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    return root / "venv" / "bin" / "python3"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """The bundle's ConfigMap as mounted: the k8s agent's wheels, pins and manifest."""
    built = build([K8sBackend.AGENT], vendored=K8sBackend.AGENT_VENDORED)
    root = tmp_path_factory.mktemp("bundle")
    for name, data in built.files.items():
        if name.endswith(".whl") or name == REQUIREMENTS:
            (root / name).write_bytes(data)
    (root / MANIFEST).write_bytes(built.manifest())
    return root


class Pod:
    """Runs AGENT_BOOT with its paths moved under ``root`` and a PATH of chosen tools."""

    def __init__(self, root: Path, bundle: Path, python: Path | None):
        self.root, self.bin = root, root / "bin"
        self.bin.mkdir()
        for tool in ("cat", "touch", "env", "mkdir"):
            (self.bin / tool).symlink_to(shutil.which(tool))
        if python is not None:
            (self.bin / "python3").symlink_to(python)
        self.script = (launch.AGENT_BOOT.replace("/tpi/bundle", str(bundle))
                       .replace("/tpi/agent", str(root / "agent"))
                       .replace("/opt/tpi", str(root / "opt")))

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", self.script, "tpi", *args],
                              env={"PATH": str(self.bin), "HOME": str(self.root), **env},
                              cwd=self.root, capture_output=True, text=True, timeout=120)


PROBE = ("import sys, anyio, h11, pathspec, tpi_core, tpi_k8s.server; "
         "print(tpi_core.__file__); print(sys.argv[1:])")


def test_the_bundle_is_installed_by_file_and_the_agent_imports(tmp_path, bundle_dir,
                                                               clean_python):
    pod = Pod(tmp_path, bundle_dir, clean_python)
    run = pod.run("-c", PROBE, "x y")
    assert run.returncode == 0, run.stderr
    where, args = run.stdout.splitlines()
    assert where.startswith(str(tmp_path / "agent" / "site"))  # not the test's interpreter
    assert args == "['x y']"
    again = pod.run("-c", "print('again')")  # a restarted container installs nothing twice
    assert again.returncode == 0 and again.stdout == "again\n"


def test_a_prepared_image_of_the_same_bundle_installs_nothing(tmp_path, bundle_dir):
    (tmp_path / "opt").mkdir()
    shutil.copy(bundle_dir / MANIFEST, tmp_path / "opt" / "manifest.json")
    prepared = tmp_path / "prepared-python3"  # tpi is installed beside this one
    prepared.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    prepared.chmod(0o755)
    pod = Pod(tmp_path, bundle_dir, prepared)
    run = pod.run("-c", "import tpi_core; print(tpi_core.__file__)")
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "agent").exists()


def test_a_prepared_image_of_another_bundle_gets_this_one(tmp_path, bundle_dir, clean_python):
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "manifest.json").write_text(json.dumps({"digest": "older"}))
    pod = Pod(tmp_path, bundle_dir, clean_python)
    assert pod.run("-c", "import tpi_core").returncode == 0
    assert (tmp_path / "agent" / "site" / ".installed").exists()


def test_pins_come_from_an_index_only_when_allowed(tmp_path, bundle_dir):
    calls = tmp_path / "pip-calls"
    fake = tmp_path / "fake-python3"
    fake.write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then echo "$@" >> {calls}; '
                    f'exit 0; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    pod = Pod(tmp_path, bundle_dir, fake)
    assert pod.run("-c", "pass").returncode == 0
    assert pod.run("-c", "pass", TPI_AGENT_INDEX="1").returncode == 0
    (tmp_path / "agent" / "site" / ".installed").unlink()
    assert pod.run("-c", "pass", TPI_AGENT_INDEX="1").returncode == 0
    installs = [line for line in calls.read_text().splitlines() if " install " in line]
    assert len(installs) == 2
    assert "--no-index --no-deps" in installs[0] and "--requirement" not in installs[0]
    assert f"--requirement {bundle_dir}/requirements.txt" in installs[1]
    assert "--no-index" not in installs[1]


def test_an_image_without_python_or_pip_says_so(tmp_path, bundle_dir):
    (tmp_path / "a").mkdir()
    run = Pod(tmp_path / "a", bundle_dir, None).run("-c", "pass")
    assert run.returncode == 1 and "no python3" in run.stderr
    nopip = tmp_path / "nopip"
    nopip.write_text(f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 1\nexec {sys.executable} "$@"\n')
    nopip.chmod(0o755)
    (tmp_path / "b").mkdir()
    run = Pod(tmp_path / "b", bundle_dir, nopip).run("-c", "pass")
    assert run.returncode == 1 and "no pip" in run.stderr


def test_nothing_secret_and_nothing_by_name_in_the_start():
    assert "TOKEN" not in launch.AGENT_BOOT and "KUBE" not in launch.AGENT_BOOT
    assert "tpi[" not in launch.AGENT_BOOT and "pip install tpi" not in launch.AGENT_BOOT

"""The container bootstrap: an image with tpi starts at once; the package to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tpi_k8s import launch


def test_a_python3_with_the_plugin_is_used_as_is(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([*launch.command(), "-c", "import sys; print('args', sys.argv[1:])",
                          "x y"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "args ['x y']\n"
    assert not (tmp_path / "tpi").exists()  # nothing installed


def test_the_package_follows_the_storage(monkeypatch):
    monkeypatch.delenv(launch.PACKAGE_ENV, raising=False)
    assert launch.package() == "tpi[k8s]"
    assert launch.package("file:///tpi/storage") == "tpi[k8s]"
    assert launch.package("s3://bucket/task") == "tpi[k8s,aws]"
    assert launch.package("gs://bucket/task") == "tpi[k8s,gcp]"
    monkeypatch.setenv(launch.PACKAGE_ENV, "tpi-k8s==0.1.0")
    assert launch.package("s3://bucket/task") == "tpi-k8s==0.1.0"


def test_nothing_secret_in_the_bootstrap():
    assert "TOKEN" not in launch.BOOTSTRAP and "KUBE" not in launch.BOOTSTRAP

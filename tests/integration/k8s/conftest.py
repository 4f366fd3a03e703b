"""Fixtures for the Kubernetes backend: kmock over real HTTP, the project's fake API front,
a kubeconfig pointing at it, and (for whole tasks) the fake controllers and kubelet.

kmock is used through its classes with anyio (its own pytest plugin needs pytest-asyncio,
which this project does not use: ``-p no:kmock``). Without kmock the tests skip, and fail
when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tpi_core.testing.emulators import missing

from tpi_k8s.launch import AGENT_IMAGE

from .fakes import FakeApiServer
from .harness import stamp
from .kubelet import Image, bare_tools

NAMESPACE = "tpi-test"
NO_SHELL = "tpi-test/no-shell:1"
"""An image with coreutils and no shell: its container cannot start."""
UNPULLABLE = "registry.example/private/trainer:7"
"""An image the registry refuses: its container waits in ImagePullBackOff."""
TOKEN = "fake-kube-token-0123"
RESOURCES = ("v1/pods", "v1/secrets", "v1/persistentvolumeclaims", "v1/events",
             "v1/serviceaccounts", "v1/configmaps", "batch/v1/jobs", "apps/v1/deployments")


@pytest.fixture
async def kmock_url():
    """kmock's emulator on 127.0.0.1 with the resources tpi uses declared."""
    try:
        import kmock
    except ImportError as exc:
        missing(f"kmock ({exc}; pip install kmock==0.8)")
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        for resource in RESOURCES:
            emulator.resources[resource] = {}
        yield str(server.url).rstrip("/")


@pytest.fixture
async def api(kmock_url):
    """The fake API front (selectors, pod proxy, pod logs...) in front of kmock."""
    async with FakeApiServer(kmock_url, TOKEN) as front:
        yield front


@pytest.fixture
def kubeconfig(api, tmp_path, monkeypatch) -> Path:
    """A kubeconfig for the front (namespace tpi-test), as $KUBECONFIG; nothing else."""
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(json.dumps(kubeconfig_doc(api.url)))
    for name in ("KUBECONFIG_DATA", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("TPI_K8S_READY_TIMEOUT", "20")  # a broken server fails the test fast
    return path


def kubeconfig_doc(server: str, token: str = TOKEN, namespace: str = NAMESPACE) -> dict:
    """A kubeconfig (YAML is a superset of JSON)."""
    return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}]}


async def seed(kmock_url: str, path: str, body: dict) -> None:
    """Put an object straight into kmock (what another client made), its metadata filled
    as the API server fills it."""
    namespace = re.search(r"/namespaces/([^/]+)/", path)
    stamp(body.setdefault("metadata", {}), namespace.group(1) if namespace else "")
    async with aiohttp.ClientSession() as http:
        async with http.post(kmock_url + path, json=body) as reply:
            assert reply.status < 300, await reply.text()


async def objects(kmock_url: str, path: str) -> list[dict]:
    """Every object of a collection, straight from kmock."""
    async with aiohttp.ClientSession() as http:
        async with http.get(kmock_url + path) as reply:
            if reply.status == 404:
                return []
            return (await reply.json(content_type=None)).get("items", [])


def agent_env() -> dict[str, str]:
    """What the fake kubelet adds to every container: fast agent intervals."""
    return {"TPI_AGENT_LOG_INTERVAL": "0.3", "TPI_AGENT_SYNC_INTERVAL": "0.3",
            "TPI_AGENT_STOP_GRACE": "3", "LANG": os.environ.get("LANG", "C.UTF-8")}


@pytest.fixture(scope="session")
def agent_image(tmp_path_factory) -> Image:
    """The agent image's stand-in: ``python3`` of a clean virtual environment (pip and
    nothing else: no tpi, so the pod must install its bundle), a shell and coreutils."""
    root = tmp_path_factory.mktemp("agent-image")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    return Image.build(root, {**bare_tools(), "python3": str(root / "venv" / "bin" / "python3")})


@pytest.fixture
def stand_ins(agent_image, tmp_path) -> tuple[dict[str, Image], Image]:
    """Images by name, and the image of any other name: a shell and coreutils, no Python."""
    images = {AGENT_IMAGE: agent_image,
              NO_SHELL: Image.build(tmp_path / "image-no-shell", bare_tools(shell=False)),
              UNPULLABLE: Image(tmp_path, pullable=False)}
    return images, Image.build(tmp_path / "image-bare", bare_tools())

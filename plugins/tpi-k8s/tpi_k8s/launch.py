"""How a container starts the agent or the storage server: a shell bootstrap, then Python.

Every tpi container runs ``/bin/sh -c BOOTSTRAP tpi <python arguments>``: the bootstrap uses
a ``python3`` that already has the plugin (an image with tpi baked in starts at once), or
installs the agent package (``$TPI_AGENT_PACKAGE``) into a virtual environment on the pod's
scratch volume, then execs Python with the container's arguments. Nothing secret is in the
bootstrap, the arguments or the package name: environment values reach the agent through
``secretKeyRef`` variables only.
"""

from __future__ import annotations

import os

AGENT_MOUNT = "/tpi/agent"
"""Scratch volume holding the agent's virtual environment."""
STORAGE_MOUNT = "/tpi/storage"
"""Where the claim (at the task's sub-path) is mounted, in agent and storage-server pods."""
WORK_MOUNT = "/tpi/work"
"""The script's working directory: a scratch volume the agent restores ``data/`` into."""
HOOKS = "tpi_k8s.agent:K8sHooks"
SERVER_PORT = 8080
PACKAGE_ENV = "TPI_K8S_AGENT_PACKAGE"
"""Where pods install the agent from (a pip requirement); read at apply time."""
DEFAULT_PACKAGE = "tpi[k8s]"
STORAGE_IMAGE_ENV = "TPI_K8S_STORAGE_IMAGE"
"""An image for the storage server (default: the task's image), read at apply time."""

BOOTSTRAP = r"""set -eu
if command -v python3 >/dev/null 2>&1 && python3 -c 'import tpi_k8s' 2>/dev/null; then
  exec python3 "$@"
fi
venv=/tpi/agent/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tpi_k8s' 2>/dev/null; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q && apt-get install -yq --no-install-recommends python3-venv ca-certificates
    elif command -v apk >/dev/null 2>&1; then
      apk add --no-cache python3
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -yq python3
    else
      echo "tpi: this image has no python3 and no known package manager" >&2
      exit 127
    fi
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${TPI_AGENT_PACKAGE:-tpi[k8s]}"
fi
exec "$venv/bin/python" "$@"
"""


def command() -> list[str]:
    """The container command; the container's ``args`` are Python's."""
    return ["/bin/sh", "-c", BOOTSTRAP, "tpi"]


def agent_args(storage_url: str) -> list[str]:
    """Python arguments of the agent; the replica comes from the Job's completion index."""
    return ["-m", "tpi_core.agent", "--storage", storage_url, "--workdir", WORK_MOUNT,
            "--hooks", HOOKS]


def server_args() -> list[str]:
    """Python arguments of the storage server."""
    return ["-m", "tpi_k8s.server", "--root", STORAGE_MOUNT, "--port", str(SERVER_PORT)]


def package(storage_url: str = "") -> str:
    """The agent requirement: ``$TPI_K8S_AGENT_PACKAGE``, else ``tpi[k8s]`` plus the extra
    of a bucket's backend (``s3://`` needs ``aws``)."""
    if os.environ.get(PACKAGE_ENV):
        return os.environ[PACKAGE_ENV]
    extra = {"s3": "aws", "gs": "gcp", "az": "azure"}.get(storage_url.split("://", 1)[0])
    return f"tpi[k8s,{extra}]" if extra else DEFAULT_PACKAGE


def storage_image(task_image: str) -> str:
    """The storage server's image."""
    return os.environ.get(STORAGE_IMAGE_ENV) or task_image

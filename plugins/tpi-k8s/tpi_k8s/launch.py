"""What the pods of a task run: the agent image's start, the paths, and the settings.

The user's script runs in the user's image, which needs only ``/bin/sh`` (the wrapper of
:mod:`tpi_core.agent.companion`). The agent and the storage server run in the *agent image*:
a pinned official Python image by default (``TPI_K8S_AGENT_IMAGE`` names another: a mirror,
a prepared image). Its command is :data:`AGENT_BOOT`: it installs the task's agent bundle,
the exact tpi wheels of the CLI and the pure-Python wheels they need, by file from the
bundle's ConfigMap (``pip install --no-index --no-deps``), so a pod installs nothing from a
package index; then it execs Python with the container's arguments. A prepared image (the
bundle installed at build time, its ``manifest.json`` kept at ``/opt/tpi/manifest.json``)
skips the install when its digest is the bundle's. Nothing secret is in the command, the
arguments or the ConfigMap: environment values reach the user's container through
``secretKeyRef`` variables only.
"""

from __future__ import annotations

import os

AGENT_IMAGE = "python:3.12.8-slim-bookworm"
"""The default agent image: an official Python image, pinned to its patch release."""
AGENT_IMAGE_ENV = "TPI_K8S_AGENT_IMAGE"
"""Another agent image (a registry mirror, an air-gapped registry, a prepared image); read
at apply time."""
AGENT_INDEX_ENV = "TPI_K8S_AGENT_INDEX"
"""``1``: the agent image may install the bundle's pinned requirements from a package index
(needed for a bucket as ``storage.container``: its plugin's SDK is no pure Python); read at
apply time."""
PREPARED_MANIFEST = "/opt/tpi/manifest.json"
"""Where a prepared agent image keeps the manifest of the bundle installed in it."""

AGENT_MOUNT = "/tpi/agent"
"""Scratch volume the bundle is installed into."""
BUNDLE_MOUNT = "/tpi/bundle"
"""The bundle's ConfigMap."""
STORAGE_MOUNT = "/tpi/storage"
"""Where the claim (at the task's sub-path) is mounted, in agent and storage-server pods."""
WORK_MOUNT = "/tpi/work"
"""The script's working directory: a scratch volume the agent restores ``data/`` into and
the user's container runs in."""
RUN_MOUNT = "/tpi/run"
"""The run directory the agent and the user's container talk through."""
HOOKS = "tpi_k8s.agent:K8sHooks"
SERVER_PORT = 8080

AGENT_BOOT = r"""set -eu
if ! command -v python3 >/dev/null 2>&1; then
  echo "tpi: the agent image has no python3" >&2; exit 1
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "tpi: the agent image's python3 is older than 3.11" >&2; exit 1; }
prepared=$(python3 -c 'import json, sys
try:
    a, b = (json.load(open(p))["digest"] for p in sys.argv[1:])
    print(a == b)
except Exception:
    print(False)' /opt/tpi/manifest.json /tpi/bundle/manifest.json)
if [ "$prepared" = True ]; then exec python3 "$@"; fi
site=/tpi/agent/site
if [ ! -e "$site/.installed" ]; then
  python3 -m pip --version >/dev/null 2>&1 || {
    echo "tpi: the agent image has no pip to install the bundle" >&2; exit 1; }
  mkdir -p "$site"
  if [ "${TPI_AGENT_INDEX:-}" = 1 ]; then
    from="--requirement /tpi/bundle/requirements.txt"
  else
    from="--no-index --no-deps"
  fi
  # shellcheck disable=SC2086 # $from is two options
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$site" $from /tpi/bundle/*.whl
  touch "$site/.installed"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
exec python3 "$@"
"""


def command() -> list[str]:
    """The agent image's container command; the container's ``args`` are Python's."""
    return ["/bin/sh", "-c", AGENT_BOOT, "tpi"]


def agent_args(storage_url: str, sidecar: bool) -> list[str]:
    """Python arguments of the agent; the replica comes from the Job's completion index.
    A native sidecar stays after the replica's end: it would be restarted if it exited."""
    args = ["-m", "tpi_core.agent", "--storage", storage_url, "--workdir", WORK_MOUNT,
            "--hooks", HOOKS, "--companion", RUN_MOUNT]
    return [*args, "--linger"] if sidecar else args


def server_args() -> list[str]:
    """Python arguments of the storage server."""
    return ["-m", "tpi_k8s.server", "--root", STORAGE_MOUNT, "--port", str(SERVER_PORT)]


def agent_image() -> str:
    """The agent image: ``$TPI_K8S_AGENT_IMAGE``, else :data:`AGENT_IMAGE`."""
    return os.environ.get(AGENT_IMAGE_ENV) or AGENT_IMAGE


def from_index() -> bool:
    """Whether the user allowed pods to install pinned requirements from an index."""
    return os.environ.get(AGENT_INDEX_ENV, "") == "1"


def bundle_name(digest: str) -> str:
    """The ConfigMap of an agent bundle, shared by the namespace's tasks of that version."""
    return f"tpi-agent-{digest[:32]}"

"""The boot script every VM cloud's machines run first (user-data, startup script, custom data).

One script for every cloud (``boot.sh`` beside this module). A cloud adds only how its
machine reads and writes its storage with its own identity: a fetcher, a single-file
standard-library Python program run with whatever ``python3`` the image has, taking
``--config FILE VERB ARGS`` with the verbs ``get KEY DEST`` (exit 3: no such key),
``put FILE KEY``, ``count PREFIX`` and ``leave`` (remove this machine from its group,
lowering the group's size). The script:

1. uses the newest ``python3.1x`` of 3.11 or later on the image; otherwise installs one from
   the distribution (apt, dnf); otherwise brings a standalone one (from the bundle when the
   user put one there, else through uv);
2. fetches the bundle (:mod:`tpi_core.boot.bundle`) and a pinned uv (from PyPI, its sha256
   checked), makes a virtual environment with uv (no pip or ``python3-venv`` needed) and
   installs the tpi wheels by file with the bundle's pins as constraints;
3. starts the agent as a systemd unit, with ``--machine-log`` so the agent puts the boot's
   timed steps at the head of its log.

A step that fails ends the boot: the log goes to ``failures`` in the task's storage, where
``tpi status`` and ``tpi logs`` find it; the machine powers off, and once the task has
:data:`MAX_FAILURES` failed boots it leaves its group first, so the group is not refilled.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import TYPE_CHECKING

from tpi_core.errors import BackendError
from tpi_core.model import frozen_map
from tpi_core.storage import split_url

if TYPE_CHECKING:
    from tpi_core.backend import Launch

MAX_FAILURES = 3
"""Failed boots of a task after which its machines leave the group instead of being replaced."""
MACHINE_LOG = "/var/log/tpi/boot.log"
"""The boot's timed steps on the machine (``--machine-log`` of the agent)."""
VENV_PYTHON = "/opt/tpi/venv/bin/python"
WORKDIR = "/opt/tpi/task"
MARK = "TPI_BOOT_CONFIG"

UV_VERSION = "0.13.9"
"""The uv that builds the machine's environment, pinned with its wheels' sha256 (PyPI)."""
UV_WHEELS = {
    "x86_64": (
        "https://files.pythonhosted.org/packages/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8b"
        "abf9c67c6b75fc4c3f/uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19"),
    "aarch64": (
        "https://files.pythonhosted.org/packages/fe/2f/51a5de367c602592c018a42a23d57fba5f2689fe6c"
        "3bf025dcf043b39c61/uv-0.13.9-py3-none-manylinux_2_28_aarch64.whl",
        "ecb6028d79dc96fbeafffe5c8af62a7099487ebc05a701e76714eebcffd06375"),
}


@dataclass(frozen=True, slots=True)
class MachineBoot:
    """What one cloud's machines need to boot a task."""

    fetcher: str
    """The cloud's fetcher program (its text)."""
    fetcher_config: Mapping[str, str]
    """The fetcher's ``--config`` document: where the storage is; nothing secret."""
    bundle: str
    """Key prefix of the agent bundle, as the fetcher names keys."""
    failures: str
    """Key prefix under which failed boots' logs go (the task's ``reports/boot-failed``)."""
    storage_url: str
    """The task's storage, for the agent."""
    hooks: str
    """The agent's hooks, ``module:Class``."""
    digest: str
    wheels: Sequence[str]
    """The bundle's wheels (file names), installed by file."""
    python_archive: str = ""
    """The bundle's standalone Python (file name), when it carries one."""
    shell_fetcher: str = ""
    """The cloud's fetcher in shell (a ``tpi_fetch`` function taking the same verbs), for an
    image with no python3 at all."""
    imports: Sequence[str] = ("tpi_core.agent",)
    """Modules the boot imports once installed, so a broken bundle fails the boot visibly."""
    environment: Mapping[str, str] = field(default_factory=frozen_map)
    """Plain settings for the agent's unit (a region); never a secret."""
    version: str = ""

    def agent_argv(self) -> list[str]:
        """The agent's command line on the machine."""
        return agent_argv(self.config(), VENV_PYTHON, WORKDIR, MACHINE_LOG)

    def config(self) -> dict:
        """What :func:`parse` reads back from a rendered script."""
        return {"storage_url": self.storage_url, "hooks": self.hooks, "bundle": self.bundle,
                "digest": self.digest, "failures": self.failures,
                "environment": dict(self.environment)}


def machine_boot(launch: Launch, *, fetcher: str, fetcher_config: Mapping[str, str],
                 hooks: str, imports: Sequence[str], shell_fetcher: str = "",
                 environment: Mapping[str, str] | None = None) -> MachineBoot:
    """How a machine of a task's group boots, from the task's :class:`Launch` and its cloud's
    parts. The bundle must lie in the task's bucket: the fetcher reads that bucket only."""
    if not launch.agent_url:
        raise BackendError("no agent bundle for the task's machines (Launch.agent_url)")
    bucket, prefix = split_url(launch.storage_url)
    agent_bucket, agent_prefix = split_url(launch.agent_url)
    if agent_bucket != bucket:
        raise BackendError(f"the agent bundle {launch.agent_url} is not in the task's "
                           f"bucket {bucket}")
    return MachineBoot(
        fetcher=fetcher, shell_fetcher=shell_fetcher, fetcher_config=fetcher_config,
        bundle=agent_prefix, failures=f"{prefix}/reports/boot-failed".lstrip("/"),
        storage_url=launch.storage_url, hooks=hooks, digest=launch.agent_digest,
        wheels=tuple(launch.agent_wheels), python_archive=launch.agent_python,
        imports=("tpi_core.agent", *imports), environment=frozen_map(environment or {}),
        version=metadata.version("tpi"))


def fetcher_program(cloud: str) -> str:
    """A cloud's whole fetcher program: the shared half (``fetchbase.py``: retries, checked
    downloads, the verbs and exit codes) followed by the cloud's half (its signing, URLs,
    listing and group), in one file as a machine runs it."""
    return _read("fetchbase.py") + "\n\n" + cloud


def render(boot: MachineBoot) -> str:
    """The boot script of a task's machines."""
    text = _read("boot.sh")
    values = {
        "MARK": MARK, "BOOT_CONFIG": json.dumps(boot.config(), sort_keys=True),
        "FETCH_CONFIG": json.dumps(dict(boot.fetcher_config), sort_keys=True),
        "FETCHER": boot.fetcher.rstrip("\n"), "GET_UV": _read("getuv.py").rstrip("\n"),
        "SHELL_FETCHER": boot.shell_fetcher.rstrip("\n") or
        "tpi_fetch() { echo 'bootfetch: no python3 on the image' >&2; return 1; }",
        "WHEELS": " ".join(shlex.quote(w) for w in boot.wheels),
        "PYTHON_ARCHIVE": boot.python_archive,
        "BUNDLE": boot.bundle, "FAILURES": boot.failures, "DIGEST": boot.digest,
        "MAX_FAILURES": str(MAX_FAILURES), "VERSION": boot.version or "?",
        "UV_VERSION": UV_VERSION, "UV_URL_X86_64": UV_WHEELS["x86_64"][0],
        "UV_SHA256_X86_64": UV_WHEELS["x86_64"][1], "UV_URL_AARCH64": UV_WHEELS["aarch64"][0],
        "UV_SHA256_AARCH64": UV_WHEELS["aarch64"][1],
        "IMPORTS": ", ".join(boot.imports), "WORKDIR": shlex.quote(WORKDIR),
        "ENVIRONMENT": _unit(" ".join(shlex.quote(f"{k}={v}") for k, v in
                                      sorted({**boot.environment, "HOME": "/root"}.items()))),
        "AGENT": _unit(" ".join(shlex.quote(a) for a in boot.agent_argv())),
    }
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text.replace("$$", ""):
        raise AssertionError(f"boot.sh: a placeholder was left: {text[text.index('@@'):][:40]}")
    return text


def agent_argv(config: Mapping, python: str, workdir: str,
               machine_log: str | None = None) -> list[str]:
    """The agent's command line from a boot's settings (:func:`parse`)."""
    argv = [python, "-m", "tpi_core.agent", "--storage", config["storage_url"],
            "--workdir", workdir, "--hooks", config["hooks"]]
    return [*argv, "--machine-log", machine_log] if machine_log else argv


def pack(script: str, limit: int) -> str:
    """Gzip, then base64, as a cloud takes its startup data (EC2 user-data, Azure custom
    data): cloud-init unpacks gzip on every image tpi supports, and packed the script is well
    under a cloud's limit (``limit`` bytes, before base64; over it is a bug of tpi's)."""
    packed = gzip.compress(script.encode(), mtime=0)
    if len(packed) > limit:
        raise AssertionError(f"the boot script is {len(packed)} bytes packed, over {limit}")
    return base64.b64encode(packed).decode()


def unpack(data: str) -> str:
    """The script of startup data, as cloud-init reads it: plain, base64, or gzip+base64."""
    if data.startswith("#!"):
        return data
    raw = base64.b64decode(data)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


def parse(script: str) -> dict:
    """The settings inside a rendered boot script, plain or as :func:`pack` made it (the
    test harnesses read them)."""
    lines = unpack(script).splitlines()
    for i, line in enumerate(lines):
        if line.endswith(f"<<'{MARK}'"):
            return json.loads(lines[i + 1])
    raise ValueError("not a tpi boot script")


def _unit(value: str) -> str:
    """A value for a systemd unit file: ``%`` starts a specifier there (``%3A`` of a URL's
    query is a bad setting that stops the unit from loading)."""
    return value.replace("%", "%%")


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()

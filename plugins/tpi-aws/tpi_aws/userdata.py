"""The user-data that boots a task machine: install the agent, start it under systemd.

It carries where the task's storage is and nothing else of the task: no credential (the
machine has its instance profile) and no environment value (the agent reads those from
SSM Parameter Store). The agent's settings sit in one JSON document inside the script, so
the test harness that plays EC2 reads them back with :func:`parse`.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from dataclasses import asdict, dataclass

HOOKS = "tpi_aws.agent:AwsHooks"
PACKAGE_ENV = "TPI_AWS_AGENT_PACKAGE"
"""Where machines install the agent from (a pip requirement); set it at apply time."""
DEFAULT_PACKAGE = "tpi[aws]"
CONFIG_PATH = "/etc/tpi/agent.json"
WORKDIR = "/opt/tpi/task"
VENV = "/opt/tpi/venv"
_MARK = "TPI_AGENT_CONFIG"


@dataclass(frozen=True, slots=True)
class AgentLaunch:
    """What a task machine needs to start its agent."""

    storage_url: str
    task_id: str
    region: str
    package: str = DEFAULT_PACKAGE
    hooks: str = HOOKS
    workdir: str = WORKDIR

    def argv(self, python: str = f"{VENV}/bin/python", workdir: str | None = None) -> list[str]:
        """The agent's command line (the harness runs it with its own python and workdir)."""
        return [python, "-m", "tpi_core.agent", "--storage", self.storage_url,
                "--workdir", workdir or self.workdir, "--hooks", self.hooks]


def package() -> str:
    """The agent requirement machines install: ``$TPI_AWS_AGENT_PACKAGE`` or ``tpi[aws]``."""
    return os.environ.get(PACKAGE_ENV) or DEFAULT_PACKAGE


def render(launch: AgentLaunch) -> str:
    """The bootstrap script."""
    doc = json.dumps(asdict(launch), sort_keys=True)
    region = shlex.quote(launch.region)
    command = " ".join(shlex.quote(a) for a in launch.argv())
    return _TEMPLATE.format(mark=_MARK, config=doc, config_path=CONFIG_PATH, venv=VENV,
                            workdir=shlex.quote(launch.workdir), region=region,
                            package=shlex.quote(launch.package), command=command)


def encode(script: str) -> str:
    """Base64, as launch templates take user-data."""
    return base64.b64encode(script.encode()).decode()


def parse(user_data: str) -> AgentLaunch:
    """The agent settings inside a rendered script (plain or base64)."""
    text = user_data if user_data.startswith("#!") else base64.b64decode(user_data).decode()
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.endswith(f"<<'{_MARK}'")]
    if not starts:
        raise ValueError("not a tpi bootstrap script")
    return AgentLaunch(**json.loads(lines[starts[0] + 1]))


_TEMPLATE = """#!/bin/bash
# tpi task bootstrap. No credential and no environment value is written here: the machine
# uses its instance profile, and the agent reads the task's environment from SSM.
set -euo pipefail
# a machine that cannot start its agent powers off (the template terminates it on shutdown)
trap 'shutdown -h now' ERR
mkdir -p /etc/tpi {workdir}
cat > {config_path} <<'{mark}'
{config}
{mark}
if [ ! -x {venv}/bin/python ]; then
  export DEBIAN_FRONTEND=noninteractive
  if command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -yq python3-venv
  elif command -v dnf >/dev/null; then
    dnf install -yq python3
  fi
  python3 -m venv {venv}
  {venv}/bin/pip install -q --upgrade pip
  {venv}/bin/pip install -q {package}
fi
cat > /etc/systemd/system/tpi-agent.service <<'TPI_UNIT'
[Unit]
Description=tpi agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
Environment=AWS_REGION={region} AWS_DEFAULT_REGION={region} HOME=/root
ExecStart={command}
KillSignal=SIGTERM
# an agent that failed (not finished, not preempted) gives its machine back: the group
# replaces it and the replacement retries the replica
ExecStopPost=/bin/sh -c 'case "$$EXIT_STATUS" in 0|143) ;; *) shutdown -h now ;; esac'
TimeoutStopSec=100
Restart=no

[Install]
WantedBy=multi-user.target
TPI_UNIT
systemctl daemon-reload
systemctl enable --now tpi-agent.service
"""

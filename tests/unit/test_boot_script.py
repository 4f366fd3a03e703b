"""The core boot script as rendered, and the boot summary the agent writes from its log."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tpi_core.agent.machinelog import MachineLog
from tpi_core.backend import Launch
from tpi_core.boot import script
from tpi_core.boot.script import MachineBoot
from tpi_core.errors import BackendError

BOOT = MachineBoot(
    fetcher="#!/usr/bin/env python3\nprint('fetcher')\n", fetcher_config={"bucket": "b"},
    bundle="tpi-agent/0123abcd", failures="tpi-x/reports/boot-failed",
    storage_url="s3://b/tpi-x", hooks="tpi_aws.agent:AwsHooks", digest="0123abcd",
    wheels=("tpi-0.1.0-py3-none-any.whl", "tpi_aws-0.1.0-py3-none-any.whl"),
    imports=("tpi_core.agent", "tpi_aws.agent"), environment={"AWS_REGION": "us-west-1"},
    version="0.1.0")


def test_renders_valid_bash_with_every_placeholder_filled():
    text = script.render(BOOT)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    assert "@@" not in text
    assert script.parse(text) == BOOT.config()
    assert "print('fetcher')" in text and '"bucket": "b"' in text


def test_installs_nothing_by_name_and_nothing_unpinned():
    text = script.render(BOOT)
    installs = re.findall(r"pip install[^\n]*\\\n[^\n]*", text)
    assert installs == ['pip install --quiet --no-deps --python "$VENV/bin/python" \\\n'
                        '    --requirement "$BUNDLE/requirements.txt" "${WHEELS[@]}"']
    assert script.UV_VERSION in text
    for url, sha in script.UV_WHEELS.values():
        assert url in text and sha in text and url.startswith("https://files.pythonhosted.org/")


def test_the_agent_unit_runs_the_venv_agent_with_the_machine_log():
    text = script.render(BOOT)
    argv = BOOT.agent_argv()
    assert argv[:3] == [script.VENV_PYTHON, "-m", "tpi_core.agent"]
    assert argv[-2:] == ["--machine-log", script.MACHINE_LOG]
    assert "ExecStart=" + " ".join(argv) in text
    tagged = MachineBoot(**{**{f: getattr(BOOT, f) for f in BOOT.__dataclass_fields__},
                            "storage_url": "s3://b/tpi-x?tagging=tpi%3Atask%3Dtpi-x"})
    # a % starts a systemd specifier: a URL's escapes are doubled, or the unit does not load
    assert "--storage 's3://b/tpi-x?tagging=tpi%%3Atask%%3Dtpi-x' " in script.render(tagged)
    assert "Environment=AWS_REGION=us-west-1 HOME=/root" in text


def test_known_traps_are_not_there():
    text = script.render(BOOT)
    assert "apt-get update -q &&" not in text  # an && list never trips set -e or ERR
    assert "DPkg::Lock::Timeout" in text  # unattended-upgrades holds the lock at first boot
    assert "--upgrade pip" not in text
    assert "python3 -m venv" not in text  # no python3-venv needed: uv makes the venv


def test_summary_shares_each_step(tmp_path: Path):
    log = tmp_path / "boot.log"
    log.write_text("100.000 boot started\n100.000 step config\n100.500 step python\n"
                   "101.000 step fetch\n  an unstamped line is skipped\n103.000 step install\n"
                   "108.000 step agent\n")
    machine = MachineLog.read(log)
    assert [name for name, _ in machine.steps()] == ["config", "python", "fetch", "install",
                                                     "agent"]
    text = machine.summary(110.0)
    assert text.startswith("10.0 s from user-data to script: config 0.5 s (5%)")
    assert "install 5.0 s (50%)" in text and text.endswith("agent 2.0 s (20%)")
    assert MachineLog.read(tmp_path / "missing").summary(1.0) is None
    assert MachineLog.read(None).lines == ()


def test_machine_boot_from_a_launch_reads_the_task_bucket_only():
    launch = Launch("gs://b/tpi-x", 0.0, agent_url="gs://b/tpi-agent/0123abcd",
                    agent_digest="0123abcd", agent_wheels=("tpi-0.1.0-py3-none-any.whl",))
    boot = script.machine_boot(launch, fetcher="f", fetcher_config={"bucket": "b"},
                               hooks="tpi_gcp.agent:GcpHooks", imports=("tpi_gcp.agent",))
    assert (boot.bundle, boot.failures, boot.storage_url) == (
        "tpi-agent/0123abcd", "tpi-x/reports/boot-failed", "gs://b/tpi-x")
    assert boot.imports == ("tpi_core.agent", "tpi_gcp.agent") and boot.version
    with pytest.raises(BackendError, match="not in the task's bucket b"):
        script.machine_boot(Launch("gs://b/x", 0.0, agent_url="gs://other/tpi-agent/d"),
                            fetcher="f", fetcher_config={}, hooks="h", imports=())
    with pytest.raises(BackendError, match="no agent bundle"):
        script.machine_boot(Launch("gs://b/x", 0.0), fetcher="f", fetcher_config={},
                            hooks="h", imports=())

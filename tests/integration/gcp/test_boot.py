"""GCE machines that really boot: the startup script on a Debian root under systemd-nspawn.

Nothing of tpi is on the machine: its startup script fetches the agent bundle that apply put
into the task's bucket in fake-gcs-server, signed with the token the instance's metadata
server hands out, installs it and starts the agent, which reads the environment from the
Compute Engine fake's Secret Manager, restores the workdir and runs the script. The metadata
server announces a preemption (``instance/preempted``); the agent flushes and stops, the
instance goes, the group recreates it, and the new machine boots the same way and resumes.
See :mod:`.booted`.
"""

from __future__ import annotations

import os

import pytest

from tests.boot.cloud import status, tpi

from .booted import BootedMig
from .conftest import PROJECT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "gcp-boot-secret-0451"
TASKS = f'''
[task.train]
cloud = "gcp"
region = "eu-west"
machine = "m"
spot = 0
timeout = "15m"
script = """
#!/bin/bash
mkdir -p results
epoch=$(cat results/epoch.txt 2>/dev/null || echo 0)
echo "resuming at $epoch, attempt $TPI_ATTEMPT on $(cat /proc/sys/kernel/hostname)"
echo "token ${{TOKEN:+present}}"
for ((; epoch < 6; epoch++)); do
  echo "epoch $epoch"
  echo "$((epoch + 1))" > results/epoch.txt
  if [ "$TPI_ATTEMPT" = 1 ] && [ "$epoch" -ge 2 ]; then sleep 600; fi
  sleep 1
done
echo done
"""

[task.train.environment]
TOKEN = "{SECRET}"

[task.train.storage]
workdir = "."
output = "results"
exclude = [".tpi"]
'''


def test_instances_boot_the_agent_from_gcs_and_a_preempted_one_is_replaced(
        gce, debian_root, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.toml").write_text(TASKS)
    env = {name: os.environ[name] for name in ("STORAGE_EMULATOR_HOST", "TPI_GCE_ENDPOINT")}
    env.update(SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt",
               TPI_AGENT_LOG_INTERVAL="0.5", TPI_AGENT_SYNC_INTERVAL="0.5")
    with BootedMig(gce, PROJECT, tmp_path / "machines", env, image=debian_root) as mig:
        tpi(project, "apply", "tasks.toml")
        first = mig.wait_for(lambda: list(mig.machines), 30, "an instance")[0]
        mig.wait_for(lambda: "epoch 2" in tpi(project, "logs").stdout, 240,
                     "epoch 2 in tpi logs")
        mig.machines[first].metadata.set("instance/preempted", "TRUE")
        mig.wait_for(lambda: status(project)["replicas"][0]["state"] == "preempted", 60,
                     "the agent to flush and stop on the notice")
        replacement = gce.preempt(first)
        mig.wait_for(lambda: replacement in mig.machines, 30, "the replacement to boot")
        done = mig.wait_for(lambda: (s := status(project))["state"] in (
            "succeeded", "failed", "timed_out") and s, 300, "the task to end")
        assert done["state"] == "succeeded", (done, mig.agent_logs())
        assert done["recoveries"] == 1 and not mig.errors, mig.errors
        # each machine's fetcher and agent took their tokens from its own metadata server
        assert all(m.metadata.tokens >= 1 for m in mig.machines.values())
        consoles = "".join(m.machine.console() for m in mig.machines.values())
        logs = tpi(project, "logs").stdout
    assert logs.count("resuming at") == 2 and "resuming at 0, attempt 1" in logs
    assert "attempt 2" in logs.split("resuming at")[2] and "done" in logs
    assert "token present" in logs and SECRET not in logs and SECRET not in consoles
    steps = [line.split(" step ")[1] for line in logs.splitlines() if " boot step " in line]
    assert steps[:3] == ["config", "python", "fetch"] and "install" in steps, steps
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text() == "6\n"
    assert gce.resources() == {}

"""Azure machines that really boot: the CustomData on a Debian root under systemd-nspawn.

Nothing of tpi is on the machine: its CustomData fetches the agent bundle that apply put into
the task's container in Azurite, signed with the token the instance's IMDS hands out for its
user-assigned identity, installs it and starts the agent, which reads the environment from the
fake's Key Vault, restores the workdir and runs the script. The scale set's eviction comes as
a Preempt Scheduled Event; the agent flushes, acknowledges and stops, the instance goes, Try &
Restore brings another, and the new machine boots the same way and resumes. See
:mod:`.booted`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.boot.cloud import status, tpi

from .booted import BootedVmss
from .fake_arm import VMSS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "azure-boot-secret-0451"
TASKS = f'''
[task.train]
cloud = "azure"
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


def test_instances_boot_the_agent_from_blob_and_an_evicted_one_is_restored(
        azure, azurite_tls, debian_root, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.toml").write_text(TASKS)
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text()
                      + Path(azurite_tls[1]).read_text())
    env = {"TPI_AZURE_ENDPOINT": os.environ["TPI_AZURE_ENDPOINT"],
           "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5"}
    with BootedVmss(azure, tmp_path / "machines", env, image=debian_root,
                    ca_bundle=bundle) as vmss:
        tpi(project, "apply", "tasks.toml")
        first = vmss.wait_for(lambda: list(vmss.machines), 30, "an instance")[0]
        vmss.wait_for(lambda: "epoch 2" in tpi(project, "logs").stdout, 240,
                      "epoch 2 in tpi logs")
        vmss.arm.evict(*vmss.where[first])
        vmss.wait_for(lambda: status(project)["replicas"][0]["state"] == "preempted", 90,
                      "the agent to flush and stop on the Preempt event")
        vmss.wait_for(lambda: len(vmss.machines) == 2, 60, "Try & Restore's instance")
        done = vmss.wait_for(lambda: (s := status(project))["state"] in (
            "succeeded", "failed", "timed_out") and s, 300, "the task to end")
        assert done["state"] == "succeeded", (done, vmss.agent_logs())
        assert done["recoveries"] == 1 and not vmss.errors, vmss.errors
        # each machine's fetcher and agent took their storage tokens from its own IMDS
        assert all(m.metadata.tokens["https://storage.azure.com"] >= 1
                   for m in vmss.machines.values())
        consoles = "".join(m.machine.console() for m in vmss.machines.values())
        logs = tpi(project, "logs").stdout
    assert logs.count("resuming at") == 2 and "resuming at 0, attempt 1" in logs
    assert "attempt 2" in logs.split("resuming at")[2] and "done" in logs
    assert "token present" in logs and SECRET not in logs and SECRET not in consoles
    steps = [line.split(" step ")[1] for line in logs.splitlines() if " boot step " in line]
    assert steps[:3] == ["config", "python", "fetch"] and "install" in steps, steps
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text() == "6\n"
    assert not [r for ids in azure.resources().values() for r in ids if "tpi-train" in r]
    assert not azure.resources().get(VMSS)

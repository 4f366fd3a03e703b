"""A whole task on moto through the CLI: apply, run, preempt, recover, succeed, destroy.

EC2 is played by :class:`.harness.Ec2Player`, which runs the real agent for every instance
moto says is running. The script counts epochs into results/epoch.txt and resumes from it,
so a replacement that starts from the last synced checkpoint is visible in its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tpi_aws import userdata

from tpi_core.testing.contract import BackendContract

from .conftest import FAKE_CREDENTIALS, REGION
from .harness import Ec2Player
from .inventory import clients, counts, inventory, tags_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SECRET = "e2e-secret-value-0451"
TASKS = f'''
[task.train]
cloud = "aws"
region = "us-west"
machine = "m"
spot = 0
timeout = "10m"
tags = {{ project = "e2e" }}
script = """
#!/bin/bash
mkdir -p results
epoch=$(cat results/epoch.txt 2>/dev/null || echo 0)
echo "resuming at $epoch, attempt $TPI_ATTEMPT, token ${{TOKEN:+present}}"
for ((; epoch < 8; epoch++)); do
  echo "epoch $epoch"
  echo "$((epoch + 1))" > results/epoch.txt
  sleep 1
done
echo scratch > scratch.txt
echo done
"""

[task.train.environment]
TOKEN = "{SECRET}"

[task.train.storage]
workdir = "."
output = "results"
exclude = [".tpi"]
'''


def tpi(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    if check and run.returncode != 0:
        raise AssertionError(f"tpi {' '.join(args)} exited {run.returncode}:\n{run.stderr}")
    return run


def status(workdir: Path) -> dict:
    return json.loads(tpi(workdir, "status", "--json").stdout)[0]


def logs(workdir: Path) -> str:
    return tpi(workdir, "logs").stdout


def test_task_lifecycle_on_moto(aws_env, tmp_path):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(TASKS)
    (workdir / "input.txt").write_text("data\n")
    agent_env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5",
                 "TPI_AWS_NOTICE_INTERVAL": "0.5"}
    with Ec2Player(REGION, tmp_path / "machines", agent_env) as ec2:
        tpi(workdir, "apply", "tasks.toml")
        task_id = status(workdir)["task_id"]
        _check_resources(task_id)

        first = ec2.wait_for(lambda: list(ec2.machines), 30, "a machine")[0]
        ec2.wait_for(lambda: "epoch 3" in logs(workdir), 60, "epoch 3 in tpi logs")
        assert ec2.preempt(first) == 143  # the agent flushed on the notice and stopped
        replacement = ec2.wait_for(lambda: [i for i in ec2.machines if i != first], 30,
                                   "a replacement machine")[0]
        done = ec2.wait_for(lambda: (s := status(workdir))["state"] in (
            "succeeded", "failed", "timed_out") and s, 120, "the task to end")
        assert done["state"] == "succeeded", (done, ec2.agent_logs())
        assert done["recoveries"] == 1 and done["counts"]["succeeded"] == 1
        cloud_events = [e["code"] for e in done["events"] if e["source"] == "aws"]
        assert cloud_events.count("instance-launched") == 2
        assert "instance-terminated" in cloud_events
        text = logs(workdir)
        assert "resuming at 0, attempt 1, token present" in text
        resumed = [line for line in text.splitlines() if "resuming at" in line][1]
        assert "attempt 2" in resumed and "resuming at 0" not in resumed, text
        assert text.count("epoch 0\n") == 1 and "done" in text
        assert SECRET not in text
        ec2.wait_for(lambda: ec2.machines[replacement].process.poll() is not None, 30,
                     "the replacement's agent to exit")
        # the finished replica removed its own instance and lowered the capacity
        group = clients(REGION)["autoscaling"].describe_auto_scaling_groups(
            AutoScalingGroupNames=[task_id])["AutoScalingGroups"][0]
        assert group["DesiredCapacity"] == 0 and not ec2.errors
        _check_object_tags(task_id)

    tpi(workdir, "destroy", "--yes")
    assert (workdir / "results" / "epoch.txt").read_text() == "8\n"
    assert not (workdir / "scratch.txt").exists()  # only `output` comes back
    bucket = f"tpi-123456789012-{REGION}"
    assert sum(counts(inventory(REGION, task_id, bucket)).values()) == 0
    assert status(workdir)["state"] == "destroyed"
    for path in workdir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes() or path.name == "tasks.toml", path


def _check_resources(task_id: str) -> None:
    found = inventory(REGION, task_id)
    c = clients(REGION)
    for kind in ("security_groups", "roles", "instance_profiles", "parameters",
                 "launch_templates", "groups"):
        assert len(found[kind]) == 1, kind
        tags = tags_of(c, kind, found[kind][0])
        assert (tags["tpi:task"], tags["tpi:managed"], tags["project"]) == (
            task_id, "true", "e2e"), kind
    data = c["ec2"].describe_launch_template_versions(
        LaunchTemplateName=task_id)["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    script = userdata.decode(data["UserData"])
    for secret in (SECRET, FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in script


def _check_object_tags(task_id: str) -> None:
    """Every object of the task, the CLI's and the agents' alike, carries the task's tags."""
    s3, bucket = clients(REGION)["s3"], f"tpi-123456789012-{REGION}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=task_id + "/")["Contents"]]
    assert any("/reports/" in k for k in keys) and any("/data/" in k for k in keys)
    for key in keys:
        tags = {t["Key"]: t["Value"]
                for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
        assert tags == {"tpi:task": task_id, "tpi:managed": "true", "project": "e2e"}, key


def test_debug_preempt_terminates_the_instance_of_the_replica(aws_env, tmp_path):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(TASKS)
    agent_env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5",
                 "TPI_AWS_NOTICE_INTERVAL": "0.5"}
    with Ec2Player(REGION, tmp_path / "machines", agent_env) as ec2:
        tpi(workdir, "apply", "tasks.toml")
        first = ec2.wait_for(lambda: list(ec2.machines), 30, "a machine")[0]
        ec2.wait_for(lambda: "epoch 2" in logs(workdir), 60, "epoch 2 in tpi logs")
        said = tpi(workdir, "debug", "preempt", "train").stderr
        assert f"terminated instance {first}" in said, said
        state = clients(REGION)["ec2"].describe_instances(InstanceIds=[first])[
            "Reservations"][0]["Instances"][0]["State"]["Name"]
        assert state in ("shutting-down", "terminated")
        ec2.wait_for(lambda: [i for i in ec2.machines if i != first], 30, "a replacement")
        done = ec2.wait_for(lambda: (s := status(workdir))["state"] in (
            "succeeded", "failed", "timed_out") and s, 120, "the task to end")
        assert done["state"] == "succeeded" and done["recoveries"] == 1, done
    tpi(workdir, "destroy", "--yes")
    assert (workdir / "results" / "epoch.txt").read_text() == "8\n"


class TestAWSLifecycle(BackendContract):
    """The contract on moto: :class:`.harness.Ec2Player` runs the real agent per instance."""

    CLOUD = "aws"
    SETTINGS = 'region = "us-west"\nmachine = "m"'

    @pytest.fixture
    def cloud(self, aws_env, tmp_path):
        agent_env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5",
                     "TPI_AGENT_SYNC_INTERVAL": "0.5", "TPI_AWS_NOTICE_INTERVAL": "0.5"}
        with Ec2Player(REGION, tmp_path / "machines", agent_env) as ec2:
            yield ec2

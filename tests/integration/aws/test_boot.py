"""Machines that really boot: the user-data on a Debian root under systemd-nspawn.

Nothing of tpi is on the machine: its user-data brings uv, fetches the agent bundle that
apply put into the bucket, with the instance profile's credentials from the metadata
service, installs it and starts the agent, which restores the workdir and runs the script.
A preemption makes moto's group launch a replacement, which boots the same way. A bundle
that cannot be fetched fails the boot visibly, and after three failed boots the task is
failed and its group at zero. See :mod:`.booted`.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

import boto3
import pytest

from tests.boot import rootfs
from tests.boot.cloud import status, tpi
from tpi_core.boot import bundle

from .booted import ROLE_CREDENTIALS, BootedEc2
from .conftest import FAKE_CREDENTIALS, REGION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BUCKET = f"tpi-123456789012-{REGION}"
TASKS = '''
[task.train]
cloud = "aws"
region = "us-west"
machine = "m"
spot = 0
timeout = "15m"
script = """
#!/bin/bash
mkdir -p results
epoch=$(cat results/epoch.txt 2>/dev/null || echo 0)
echo "resuming at $epoch, attempt $TPI_ATTEMPT on $(cat /proc/sys/kernel/hostname)"
for ((; epoch < 6; epoch++)); do
  echo "epoch $epoch"
  echo "$((epoch + 1))" > results/epoch.txt
  sleep 1
done
echo done
"""

[task.train.storage]
workdir = "."
output = "results"
exclude = [".tpi"]
'''


@pytest.fixture(scope="module")
def no_python_root(debian_root, tmp_path_factory):
    """The root as an image with no python3 at all and no reachable package mirror (a
    private subnet), and a standalone Python made from its Python before it was removed:
    ``python/bin/python3`` and ``python/lib/python3.11``, the layout of
    python-build-standalone's ``install_only`` archives (which this machine cannot download)."""
    place = Path(tempfile.mkdtemp(prefix="tpi-no-python-", dir=rootfs.scratch_dir()))
    root = place / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(debian_root), str(root)], check=True)
    archive = tmp_path_factory.mktemp("standalone") / "cpython-3.11-x86_64-linux-gnu.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(debian_root / "usr/bin/python3.11", "python/bin/python3")
        tar.add(debian_root / "usr/lib/python3.11", "python/lib/python3.11",
                filter=lambda item: None if "__pycache__" in item.name else item)
    subprocess.run(["chroot", str(root), "dpkg", "--purge", "--force-depends",
                    "python3", "python3.11", "python3-minimal", "python3.11-minimal",
                    "libpython3.11-minimal", "libpython3.11-stdlib"],
                   check=True, capture_output=True)
    for sources in [root / "etc/apt/sources.list", *root.glob("etc/apt/sources.list.d/*")]:
        sources.write_text("")
    assert not list(root.glob("usr/bin/python3*"))
    yield root, archive
    rootfs.remove_tree(place)


def machine_environment(aws_env: dict) -> dict[str, str]:
    """What every unit of a machine sees: the endpoints and the index's CA, no credential."""
    return {"AWS_ENDPOINT_URL": aws_env["AWS_ENDPOINT_URL"],
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5",
            "TPI_AWS_NOTICE_INTERVAL": "0.5"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "tasks.toml").write_text(TASKS)
    return workdir


def test_machines_boot_the_agent_from_the_bundle_and_recover(aws_env, debian_root, project,
                                                            tmp_path):
    with BootedEc2(REGION, tmp_path / "machines", machine_environment(aws_env),
                   image=debian_root) as ec2:
        tpi(project, "apply", "tasks.toml")
        first = ec2.wait_for(lambda: list(ec2.machines), 30, "a machine")[0]
        ec2.wait_for(lambda: "epoch 2" in tpi(project, "logs").stdout, 150,
                     "epoch 2 in tpi logs")
        ec2.notice(first)
        ec2.wait_for(lambda: status(project)["replicas"][0]["state"] == "preempted", 60,
                     "the agent to flush and stop on the notice")
        ec2.terminate(first)
        ec2.wait_for(lambda: [i for i in ec2.machines if i != first], 60, "a replacement")
        done = ec2.wait_for(lambda: (s := status(project))["state"] in (
            "succeeded", "failed", "timed_out") and s, 300, "the task to end")
        assert done["state"] == "succeeded", (done, ec2.consoles())
        assert done["recoveries"] == 1 and not ec2.errors
        logs = tpi(project, "logs").stdout
    assert logs.count("resuming at") == 2 and "resuming at 0, attempt 1" in logs
    assert "attempt 2" in logs.split("resuming at")[2] and "done" in logs
    # the boot's steps, with their times, at the head of each boot's log
    for boot in ("[0.1]", "[0.2]"):
        lines = [line for line in logs.splitlines() if line.startswith(f"train{boot}")]
        steps = [line.split(" step ")[1] for line in lines if " boot step " in line]
        assert steps[:2] == ["config", "python"] and "install" in steps, lines[:40]
        summary = next(line for line in lines if "s from user-data to script" in line)
        print(summary)  # the boot's time and its steps' shares, in the test's output (-s)
        assert re.search(r"install \d+\.\d s \(\d+%\)", summary), summary
    # the machine got its credentials from the metadata service, and none went into logs
    assert ROLE_CREDENTIALS["SecretAccessKey"] not in logs
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in logs
    tpi(project, "destroy", "--yes")
    assert (project / "results" / "epoch.txt").read_text() == "6\n"


def test_a_boot_that_fails_is_visible_and_stops_after_three(aws_env, debian_root, project,
                                                           tmp_path):
    # a bundle whose wheel is missing, already in place: apply shares it, machines fail
    digest = bundle.build([("tpi-aws", "tpi_aws")]).digest
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key=f"tpi-agent/{digest}/{bundle.MANIFEST}", Body=json.dumps(
        {"digest": digest, "wheels": ["tpi-0.1.0-py3-none-any.whl"],
         "requirements": bundle.REQUIREMENTS, "python": ""}).encode())
    with BootedEc2(REGION, tmp_path / "machines", machine_environment(aws_env),
                   image=debian_root) as ec2:
        tpi(project, "apply", "tasks.toml")
        task_id = status(project)["task_id"]
        done = ec2.wait_for(lambda: (s := status(project))["state"] == "failed" and s, 240,
                            "the task to fail")
        autoscaling = boto3.client("autoscaling", region_name=REGION)
        group = lambda: autoscaling.describe_auto_scaling_groups(  # noqa: E731
            AutoScalingGroupNames=[task_id])["AutoScalingGroups"][0]
        ec2.wait_for(lambda: group()["DesiredCapacity"] == 0 and not group()["Instances"], 60,
                     "the group at zero")
        assert len(ec2.machines) == 3, ec2.consoles()  # no fourth machine was launched
        assert not ec2.errors
    assert done["boot_failures"] == 3
    assert done["reason"].startswith("boot failed: fetch: "), done["reason"]
    assert "no such key" in done["reason"].lower() or "NoSuchKey" in done["reason"]
    shown = tpi(project, "status").stdout
    assert "boot failed: fetch:" in shown and "(3 failed boots)" in shown
    logs = tpi(project, "logs").stdout
    assert logs.count("[boot failed ") >= 3 * 3 and "step python" in logs
    tpi(project, "destroy", "--yes")


def test_an_image_without_python_gets_the_bundles_standalone_python(aws_env, no_python_root,
                                                                   project, tmp_path):
    root, archive = no_python_root
    with BootedEc2(REGION, tmp_path / "machines", machine_environment(aws_env),
                   image=root) as ec2:
        # the CLI puts the standalone Python into the bundle
        tpi(project, "apply", "tasks.toml", env={bundle.PYTHON_ENV: str(archive)})
        done = ec2.wait_for(lambda: (s := status(project))["state"] in (
            "succeeded", "failed", "timed_out") and s, 300, "the task to end")
        assert done["state"] == "succeeded", (done, ec2.consoles())
        assert done["boot_failures"] == 0 and not ec2.errors
        logs = tpi(project, "logs").stdout
    # no python3: fetched with curl; no distribution Python: the bundle's standalone one
    assert "no python3 on the image: fetching with curl" in logs
    assert "apt-get update failed" in logs or "installing one from the distribution" in logs
    steps = [line.split(" step ")[1] for line in logs.splitlines() if " boot step " in line]
    assert steps[:4] == ["config", "python", "fetch", "standalone-python"], steps
    assert "python: /opt/tpi/python/bin/python3 (Python 3.11" in logs
    assert "done" in logs
    tpi(project, "destroy", "--yes")

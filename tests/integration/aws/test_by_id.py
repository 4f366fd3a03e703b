"""A task id names one task wherever it runs: status, pull and destroy from an empty folder.

The task runs in a region that is not the default one (eu-west-1, the default is
us-west-1). From a folder with no tasks file and no index, ``tpi status ID``, ``tpi pull ID``
and ``tpi destroy ID`` find its cloud, region and name by its tags, with no ``--cloud`` or
``--region``; an id that no backend has is exit 3, and nothing is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tpi_core.identifier import random_id

from .inventory import counts, inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REGION = "eu-west-1"
TASKS = '''
[task.far]
cloud = "aws"
region = "eu-west"
machine = "m"
timeout = "1h"
script = "echo hi"

[task.far.storage]
workdir = "."
output = "results"
exclude = [".tpi", "tasks.toml"]
'''


def tpi(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=cwd,
                          env=dict(os.environ), capture_output=True, text=True, timeout=180)


def test_status_pull_and_destroy_by_id_from_an_empty_folder(aws_env, tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "tasks.toml").write_text(TASKS)
    (project / "results").mkdir()
    (project / "results" / "model.txt").write_text("weights\n")
    assert tpi(project, "apply").returncode == 0
    task_id = json.loads(tpi(project, "status", "--json").stdout)[0]["task_id"]

    found = tpi(elsewhere, "status", "--json", task_id)
    assert found.returncode == 0, found.stderr
    seen = json.loads(found.stdout)[0]
    assert (seen["task_id"], seen["name"], seen["cloud"]) == (task_id, "far", "aws")
    # no agent runs under moto: the machine is up and the task boots
    assert seen["state"] == "booting" and seen["machines"] == 1, seen
    assert seen["booting_since"] is not None, seen
    listed = json.loads(tpi(elsewhere, "list", "--json").stdout)
    assert {"id": task_id, "name": "far", "cloud": "aws", "region": REGION,
            "indexed": False} in listed

    waiting = tpi(elsewhere, "logs", task_id)  # no machine booted here: no log, and why
    assert waiting.returncode == 0 and "far: no log yet: waiting for the first boot " \
        "(1 machine up, no agent yet, " in waiting.stderr, waiting.stderr
    # a hostile key in the task's storage is skipped and named; the rest comes
    bucket = f"tpi-123456789012-{REGION}"
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=bucket, Key=f"{task_id}/data/results/../../escaped.txt", Body=b"x")
    pulled = tpi(elsewhere, "pull", task_id)
    assert pulled.returncode == 0, pulled.stderr
    assert (elsewhere / "results" / "model.txt").read_text() == "weights\n"
    assert "skipped results/../../escaped.txt: not a safe local path" in pulled.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (elsewhere / "escaped.txt").exists()

    missing = random_id("far").long  # a well-formed id that no backend has
    for command in (["status"], ["pull"], ["destroy", "--yes"]):
        run = tpi(elsewhere, *command, missing)
        assert run.returncode == 3, (command, run.stderr)
        assert f"no task {missing} found" in run.stderr and "destroyed" not in run.stderr
    assert counts(inventory(REGION, task_id))["groups"] == 1  # nothing was touched

    destroyed = tpi(elsewhere, "destroy", "--yes", task_id)
    assert destroyed.returncode == 0, destroyed.stderr
    assert sum(counts(inventory(REGION, task_id, f"tpi-123456789012-{REGION}")).values()) == 0
    assert json.loads(tpi(project, "status", "--json").stdout)[0]["state"] == "destroyed"

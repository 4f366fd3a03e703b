"""An apply or destroy killed at any step boundary is told truthfully and finished by the next.

For each point the ``tpi`` process kills itself there (``TPI_TEST_CRASH``, read only by
:func:`tpi_core.steps.crash_point`): before and after each step, at the spec, the upload,
the agent bundle, the mark of a finished apply and the storage's deletion. After the kill,
``status`` must not say the task is running or stopped as if applied; the next ``apply``
(or ``destroy``) must finish the work; and one ``destroy`` must leave no tpi resource,
counted through the AWS API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from .conftest import REGION
from .inventory import counts, inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TASKS = '''
[task.crash]
cloud = "aws"
region = "us-west"
machine = "m"
timeout = "1h"
script = "echo hi"
environment = { TOKEN = "x" }

[task.crash.storage]
workdir = "."
exclude = [".tpi", "tasks.toml"]
'''
STEPS = 5  # security group, role, environment, template, group
APPLY = (["apply:spec", "apply:upload", "apply:bundle"]
         + [f"create:{i}:{when}" for i in range(1, STEPS + 1) for when in ("before", "after")]
         + ["apply:applied"])
DESTROY = ([f"delete:{i}:{when}" for i in range(1, STEPS + 1) for when in ("before", "after")]
           + ["destroy:storage"])
BUCKET = f"tpi-123456789012-{REGION}"


def tpi(workdir: Path, *args: str, crash: str = "", sig: int = signal.SIGKILL):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPI_TEST_CRASH")}
    if crash:
        env |= {"TPI_TEST_CRASH": crash, "TPI_TEST_CRASH_SIGNAL": str(int(sig))}
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, run.stderr
    return run


def status(workdir: Path) -> dict:
    return json.loads(ok(tpi(workdir, "status", "--json")).stdout)[0]


def group_desired(task_id: str) -> int | None:
    groups = boto3.client("autoscaling", region_name=REGION).describe_auto_scaling_groups(
        AutoScalingGroupNames=[task_id])["AutoScalingGroups"]
    return groups[0]["DesiredCapacity"] if groups else None


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tasks.toml").write_text(TASKS)
    for i in range(20):
        (tmp_path / f"file-{i}.txt").write_text(f"{i}\n" * 100)
    return tmp_path


def _killed(run: subprocess.CompletedProcess, sig: int) -> None:
    if sig == signal.SIGINT:  # handled: one line, exit 130, after the rollback
        assert run.returncode == 130 and "Traceback" not in run.stderr, run.stderr
        return
    assert run.returncode == -sig, (run.returncode, run.stderr)


@pytest.mark.parametrize("point, sig", [
    *[pytest.param(p, signal.SIGKILL, id=f"kill-{p}") for p in APPLY],
    # SIGTERM (no handler: the same as a kill) at one point of each phase
    *[pytest.param(p, signal.SIGTERM, id=f"term-{p}")
      for p in ("apply:upload", "create:3:after", "apply:applied")],
    # Ctrl-C: the steps made are rolled back, the spec stays unmarked
    pytest.param("create:3:after", signal.SIGINT, id="int-create:3:after")])
def test_an_apply_killed_anywhere_is_finished_by_the_next(aws_env, project, point, sig):
    _killed(tpi(project, "apply", crash=point, sig=sig), sig)
    seen = status(project)
    task_id = seen["task_id"]
    if point != "apply:spec":  # killed before anything was written, it is simply not there
        assert seen["state"] == "queued" and "did not finish" in seen["reason"], seen
    else:
        assert seen["state"] == "not applied", seen
    if sig == signal.SIGINT:  # rolled back: the three steps made are gone again
        assert counts(inventory(REGION, task_id))["security_groups"] == 0
    first = ok(tpi(project, "apply"))
    assert "unchanged" not in first.stderr + first.stdout
    seen = status(project)
    assert seen["state"] != "queued" and not seen["reason"], seen
    assert group_desired(task_id) == 1
    if point in ("apply:applied", "create:5:after"):  # the last points: now it is whole
        assert "unchanged" in ok(tpi(project, "apply")).stderr
    ok(tpi(project, "destroy", "--yes"))
    assert sum(counts(inventory(REGION, task_id, BUCKET)).values()) == 0


@pytest.mark.parametrize("point", DESTROY)
def test_a_destroy_killed_anywhere_is_finished_by_the_next(aws_env, project, point):
    ok(tpi(project, "apply"))
    task_id = status(project)["task_id"]
    _killed(tpi(project, "destroy", "--yes", crash=point), signal.SIGKILL)
    seen = status(project)
    assert seen["state"] == "stopped" and "destroy did not finish" in seen["reason"], seen
    ok(tpi(project, "destroy", "--yes"))
    assert status(project)["state"] == "destroyed"
    assert sum(counts(inventory(REGION, task_id, BUCKET)).values()) == 0

"""Apply and destroy through a control plane that drops answers: 20 % of every request to
moto (S3, EC2, Auto Scaling, IAM, SSM, STS) gets a 503, a reset connection, or an answer cut
after the emulator acted on it (:class:`tpi_core.testing.faultproxy.FaultProxy`), 8 seeds each.

Every apply succeeds, or fails with one line and leaves nothing one destroy does not
remove; every destroy ends with no tpi resource, counted through moto directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpi_core.testing.faultproxy import FaultProxy

from .conftest import REGION
from .inventory import counts, inventory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TASKS = '''
[task.faults]
cloud = "aws"
region = "us-west"
machine = "m"
timeout = "1h"
script = "echo hi"
environment = { TOKEN = "x" }

[task.faults.storage]
workdir = "."
exclude = [".tpi", "tasks.toml"]
'''
BUCKET = f"tpi-123456789012-{REGION}"


def tpi(workdir: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run([sys.executable, "-m", "tpi_core", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["slowdown", "reset", "cut"])
def test_apply_and_destroy_through_faults(aws_env, tmp_path, kind, seed):
    (tmp_path / "tasks.toml").write_text(TASKS)
    for i in range(10):
        (tmp_path / f"file-{i}.txt").write_text(f"{i}\n" * 50)
    with FaultProxy(aws_env["AWS_ENDPOINT_URL"], rate=0.2, kinds=(kind,), seed=seed) as proxy:
        applied = tpi(tmp_path, proxy.url, "apply")
        status = tpi(tmp_path, aws_env["AWS_ENDPOINT_URL"], "status", "--json")
        destroyed = tpi(tmp_path, proxy.url, "destroy", "--yes")
        faults = proxy.stats[kind]
    assert faults > 0  # the run met faults
    if applied.returncode != 0:  # a failure is one line, and destroy still removes it all
        assert len(applied.stderr.strip().splitlines()) == 1, applied.stderr
    assert applied.returncode == 0, (kind, seed, applied.stderr)
    assert any(f'"state": "{s}"' in status.stdout
               for s in ("provisioning", "booting", "running")), status
    assert destroyed.returncode == 0, (kind, seed, destroyed.stderr)
    task_id = status.stdout.split('"task_id": "')[1].split('"')[0]
    assert sum(counts(inventory(REGION, task_id, BUCKET)).values()) == 0

"""TPI's own smoke scenario on moto, through the Python API: create twice, read until done,
delete twice, and only ``output`` comes back; with two replicas on two machines."""

from __future__ import annotations

import os

import anyio
import pytest

from tpi_core import config
from tpi_core.backend import TaskRef
from tpi_core.engine import Action, Engine, Planned
from tpi_core.model import State

from .conftest import REGION
from .harness import Ec2Player
from .inventory import counts, inventory

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(240)]

TASKS = '''
[task.smoke]
cloud = "aws"
region = "us-west-1"
machine = "s"
parallelism = 2
timeout = "5m"
script = """
#!/bin/sh
mkdir -p output
echo "replica $TPI_REPLICA_INDEX of $TPI_REPLICA_COUNT" > "output/replica-$TPI_REPLICA_INDEX.txt"
echo "not output" > "elsewhere-$TPI_REPLICA_INDEX.txt"
echo "hello from $TPI_REPLICA_INDEX"
"""

[task.smoke.storage]
workdir = "."
output = "output"
'''


async def test_create_twice_read_until_done_delete_twice(aws_env, tmp_path):
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "input.txt").write_text("input\n")
    (task,) = config.loads(TASKS, base_dir=workdir)
    ref = TaskRef.of(task)
    env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5"}
    async with Engine() as engine:
        with Ec2Player(REGION, tmp_path / "machines", env) as ec2:
            for _ in range(2):  # the second create finds everything in place
                await engine.apply([Planned(task, Action.CREATE)])
            status = await _until_done(engine, ref)
            assert status.state == State.SUCCEEDED, ec2.agent_logs()
            assert sorted(r.index for r in status.replicas) == [0, 1]
            assert len(ec2.machines) == 2 and not ec2.errors
            logs = [await engine.read_log(ref, log) for log in await engine.log_files(ref)]
            assert sorted(b"hello from 0" in text or b"hello from 1" in text
                          for text in logs) == [True, True]
        for _ in range(2):
            await engine.destroy(ref, workdir, task.storage.output)
    assert sorted(p.name for p in (workdir / "output").iterdir()) == [
        "replica-0.txt", "replica-1.txt"]
    assert (workdir / "output" / "replica-1.txt").read_text() == "replica 1 of 2\n"
    assert not list(workdir.glob("elsewhere-*"))
    bucket = f"tpi-123456789012-{REGION}"
    assert sum(counts(inventory(REGION, task.id, bucket)).values()) == 0


async def _until_done(engine: Engine, ref: TaskRef, timeout: float = 120):
    with anyio.fail_after(timeout):
        while True:
            status = await engine.status(ref)
            if status.state.final:
                return status
            await anyio.sleep(0.5)

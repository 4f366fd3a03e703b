"""The backend contract on the GCP fakes, through the CLI, with what only GCP shows: the
resources and their labels, a startup script without a secret, a finished replica leaving its
group, a preemption announced by the metadata server, and nothing left after destroy.

Compute Engine, IAM and Secret Manager are :mod:`.fake_gce`, GCS is fake-gcs-server, and
:class:`.harness.MigPlayer` runs the real agent, from the startup script's settings, for every
instance the fake's group holds.
"""

from __future__ import annotations

import json
import os

import anyio
import pytest
from tpi_gcp import resources

from tpi_core.boot.script import parse
from tpi_core.testing.contract import BackendContract
from tpi_core.testing.lifecycle import SECRET, TAG, status, tpi

from .conftest import PROJECT, REGION
from .harness import MigPlayer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class TestGCPLifecycle(BackendContract):
    """The contract on the fakes: :class:`.harness.MigPlayer` runs the real agent per
    instance."""

    CLOUD = "gcp"
    SETTINGS = 'region = "eu-west"\nmachine = "m"'

    @pytest.fixture
    def cloud(self, gce, tmp_path):
        env = {**os.environ, "TPI_AGENT_LOG_INTERVAL": "0.5", "TPI_AGENT_SYNC_INTERVAL": "0.5"}
        with MigPlayer(gce, PROJECT, tmp_path / "machines", env) as player:
            yield player

    async def check_applied(self, cloud, task_id):
        """One of each resource; labels on the template; no secret in the startup script."""
        held = cloud.gce.resources()
        for kind in ("firewalls", "instanceTemplates", "instanceGroupManagers", "secrets"):
            assert len(held.get(kind, [])) == 1, (kind, held)
        template = cloud.gce.handle("GET", f"/compute/v1/{held['instanceTemplates'][0]}",
                                    b"")[1]
        labels = template["properties"]["labels"]
        assert (labels["tpi-task"], labels["tpi-managed"], labels[TAG[0]]) == (
            task_id, "true", TAG[1])
        (script,) = [i["value"] for i in template["properties"]["metadata"]["items"]
                     if i["key"] == "startup-script"]
        assert SECRET not in json.dumps(template)
        assert parse(script)["hooks"] == "tpi_gcp.agent:GcpHooks"
        group = cloud.gce.handle("GET", f"/compute/v1/{held['instanceGroupManagers'][0]}",
                                 b"")[1]
        assert json.loads(group["description"])["tpi-task"] == task_id

    async def check_finished(self, cloud, done):
        """The finished replica took its own instance out of the group, lowering its size."""
        path = resources.group_path(PROJECT, REGION, done["task_id"])

        def shrunk() -> bool:
            return cloud.gce.handle("GET", path, b"")[1].get("targetSize") == 0

        await anyio.to_thread.run_sync(lambda: cloud.wait_for(shrunk, 30, "the group at 0"))

    async def check_destroyed(self, cloud, task_id):
        assert cloud.gce.resources() == {}

    async def check_preempted(self, cloud, said, done):
        assert "deleted instance" in said and "its group recreates it" in said, said

    @pytest.mark.anyio
    async def test_a_preemption_notice_flushes_and_a_replacement_resumes(self, cloud, project):
        """The metadata server's ``instance/preempted``, not a rehearsal: the agent flushes,
        exits 143, the instance goes, and its replacement goes on from the checkpoint."""
        self.write_tasks(project, epochs=12, spot=True, hold=4)
        await tpi(project, "apply")
        first = (await anyio.to_thread.run_sync(
            lambda: cloud.wait_for(lambda: list(cloud.machines), 30, "an instance")))[0]
        await self.wait_for(cloud, lambda t: "epoch 3" in t, "epoch 3", project)
        assert await anyio.to_thread.run_sync(cloud.preempt, first) == 143
        done = await self.wait_state(cloud, project, "succeeded")
        assert done["recoveries"] == 1 and done["counts"]["succeeded"] == 1, done
        assert (await status(project))["state"] == "succeeded"
        await self.resumed(project)

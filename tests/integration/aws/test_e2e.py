"""The backend contract on moto, through the CLI, with what only AWS shows: the resources and
their tags, user-data without a secret, the cloud's events, the group shrinking as replicas
finish, and a spot notice from the metadata service.

EC2 is played by :class:`.harness.Ec2Player`, which boots the real agent, from the rendered
user-data's settings, for every instance moto says is running.
"""

from __future__ import annotations

import os

import anyio
import pytest
from tpi_aws import userdata

from tpi_core.testing.contract import BackendContract
from tpi_core.testing.lifecycle import SECRET, TAG, status, tpi

from .conftest import FAKE_CREDENTIALS, REGION
from .harness import Ec2Player
from .inventory import clients, counts, inventory, tags_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BUCKET = f"tpi-123456789012-{REGION}"


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

    async def check_applied(self, cloud, task_id):
        """One of each resource, tagged; the launch template's user-data holds no secret."""
        found, c = inventory(REGION, task_id), clients(REGION)
        for kind in ("security_groups", "roles", "instance_profiles", "parameters",
                     "launch_templates", "groups"):
            assert len(found[kind]) == 1, kind
            tags = tags_of(c, kind, found[kind][0])
            assert (tags["tpi:task"], tags["tpi:managed"], tags[TAG[0]]) == (
                task_id, "true", TAG[1]), kind
        data = c["ec2"].describe_launch_template_versions(
            LaunchTemplateName=task_id)["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        script = userdata.decode(data["UserData"])
        for secret in (SECRET, FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
            assert secret not in script

    async def check_finished(self, cloud, done):
        """The cloud's events; the finished replica took its own instance out of the group,
        lowering the capacity; every object of the task, the CLI's and the agent's, tagged."""
        task_id = done["task_id"]
        events = [e["code"] for e in done["events"] if e["source"] == "aws"]
        assert events.count("instance-launched") == 1, events
        await anyio.to_thread.run_sync(lambda: cloud.wait_for(
            lambda: all(m.process.poll() is not None for m in cloud.machines.values()), 30,
            "the agent to exit"))
        group = clients(REGION)["autoscaling"].describe_auto_scaling_groups(
            AutoScalingGroupNames=[task_id])["AutoScalingGroups"][0]
        assert group["DesiredCapacity"] == 0
        s3 = clients(REGION)["s3"]
        keys = [o["Key"] for o in s3.list_objects_v2(
            Bucket=BUCKET, Prefix=task_id + "/")["Contents"]]
        assert any("/reports/" in k for k in keys) and any("/data/" in k for k in keys)
        for key in keys:
            tags = {t["Key"]: t["Value"]
                    for t in s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
            assert tags == {"tpi:task": task_id, "tpi:managed": "true", TAG[0]: TAG[1]}, key

    async def check_destroyed(self, cloud, task_id):
        left = {k: n for k, n in counts(inventory(REGION, task_id, BUCKET)).items() if n}
        assert left == {}, left

    async def check_preempted(self, cloud, said, done):
        """``tpi debug preempt`` terminated the replica's instance; its group replaced it."""
        first = next(iter(cloud.machines))  # the player keeps them in launch order
        assert f"terminated instance {first}" in said, said
        events = [e["code"] for e in done["events"] if e["source"] == "aws"]
        assert events.count("instance-launched") == 2 and "instance-terminated" in events

    @pytest.mark.anyio
    async def test_a_spot_notice_flushes_and_a_replacement_resumes(self, cloud, project):
        """The cloud's own notice (IMDS ``spot/instance-action``), not a rehearsal: the agent
        flushes, exits 143, and the replacement goes on from the checkpoint."""
        self.write_tasks(project, epochs=12, spot=True, hold=4)
        await tpi(project, "apply")
        first = (await anyio.to_thread.run_sync(
            lambda: cloud.wait_for(lambda: list(cloud.machines), 30, "a machine")))[0]
        await self.wait_for(cloud, lambda t: "epoch 3" in t, "epoch 3", project)
        assert await anyio.to_thread.run_sync(cloud.preempt, first) == 143
        done = await self.wait_state(cloud, project, "succeeded")
        assert done["recoveries"] == 1 and done["counts"]["succeeded"] == 1, done
        assert len(cloud.machines) == 2 and (await status(project))["state"] == "succeeded"
        await self.resumed(project)

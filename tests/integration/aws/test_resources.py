"""The AWS backend's resources on moto: create twice, delete twice, tags, read-back, find."""

from __future__ import annotations

import json
import time

import pytest

from tpi_aws.backend import AWSBackend
from tpi_aws.userdata import decode, parse
from tpi_core.backend import TaskRef
from tpi_core.engine import Engine
from tpi_core.identifier import random_id
from tpi_core.model import Secrets, StorageSpec, Task
from tpi_core.steps import delete_steps, run_steps

from .conftest import FAKE_CREDENTIALS, REGION
from .inventory import bucket_tags, clients, counts, inventory, tags_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "s3cr3t-value-never-in-user-data"


def make_task(**changes) -> Task:
    fields = dict(name="train", cloud="aws", id=random_id("train").long, region="us-west",
                  script="#!/bin/sh\necho hi\n", spot=0, parallelism=2,
                  environment=Secrets({"TOKEN": SECRET}), tags={"team": "ml", "tpi:task": "x"})
    return Task(**{**fields, **changes})


async def apply(backend: AWSBackend, task: Task) -> str:
    storage = await backend.storage(TaskRef.of(task), create=task)
    await storage.write("spec.json", json.dumps({"id": task.id}).encode())
    launch = await Engine(backends={"aws": backend}).launch(
        backend, TaskRef.of(task), storage, time.time() + 3600)
    bucket = storage.url.removeprefix("s3://").split("/")[0]
    assert launch.agent_url.startswith(f"s3://{bucket}/tpi-agent/{launch.agent_digest}?")
    await run_steps(backend.create_steps(task, launch))
    await storage.aclose()
    return storage.url


async def test_create_twice_delete_twice_leaves_nothing(aws_env):
    task = make_task()
    async with _backend() as backend:
        url = await apply(backend, task)
        await apply(backend, task)
        bucket = url.removeprefix("s3://").split("/")[0]
        found = inventory(REGION, task.id, bucket)
        assert counts(found) == {
            "bucket_objects": 1, "security_groups": 1, "roles": 1, "instance_profiles": 1,
            "parameters": 1, "launch_templates": 1, "groups": 1, "scheduled_actions": 1,
            "running_instances": 2}
        for _ in range(2):
            await delete_steps(backend.delete_steps(TaskRef.of(task)))
        storage = await backend.storage(TaskRef.of(task))
        await storage.delete_prefix("")
        await storage.aclose()
    assert sum(counts(inventory(REGION, task.id, bucket)).values()) == 0


async def test_every_resource_is_tagged(aws_env):
    task = make_task()
    async with _backend() as backend:
        url = await apply(backend, task)
    c = clients(REGION)
    found = inventory(REGION, task.id)
    for kind in ("security_groups", "roles", "instance_profiles", "parameters",
                 "launch_templates", "groups", "running_instances"):
        for item in found[kind]:
            tags = tags_of(c, kind, item)
            assert tags["tpi:task"] == task.id, kind
            assert tags["tpi:managed"] == "true", kind
            assert tags["team"] == "ml", kind
    assert bucket_tags(c, url.removeprefix("s3://").split("/")[0])["tpi:managed"] == "true"


async def test_launch_template_and_group_as_the_issue_asks(aws_env):
    task = make_task(disk_size=50)
    async with _backend() as backend:
        url = await apply(backend, task)
    c = clients(REGION)
    version = c["ec2"].describe_launch_template_versions(
        LaunchTemplateName=task.id)["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert version["ImageId"] == "ami-0a1b2c3d4e5f60002"  # the newest Ubuntu 24.04
    assert version["BlockDeviceMappings"][0]["Ebs"] == {
        "VolumeSize": 50, "VolumeType": "gp3", "DeleteOnTermination": True}
    assert version["MetadataOptions"]["HttpTokens"] == "required"
    script = decode(version["UserData"])
    for secret in (SECRET, FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                   FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]):
        assert secret not in script
    boot = parse(version["UserData"])
    assert boot["storage_url"] == url
    # the bundle the user-data names is in the bucket, whole (its manifest last)
    bucket = url.removeprefix("s3://").split("/")[0]
    keys = [o["Key"] for o in c["s3"].list_objects_v2(
        Bucket=bucket, Prefix=boot["bundle"] + "/")["Contents"]]
    assert f"{boot['bundle']}/manifest.json" in keys and len(keys) == 4, keys
    group = c["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[task.id])["AutoScalingGroups"][0]
    policy = group["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert len(policy["LaunchTemplate"]["Overrides"]) >= 3
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (0, 2, 2)
    assert len(group["VPCZoneIdentifier"].split(",")) >= 2
    sg = c["ec2"].describe_security_groups(GroupNames=[task.id])["SecurityGroups"][0]
    assert sg["IpPermissions"] == []
    role_policy = c["iam"].get_role_policy(RoleName=task.id, PolicyName="tpi-task")
    text = json.dumps(role_policy["PolicyDocument"])
    assert f"{task.id}/*" in text and "autoScalingGroupName/" + task.id in text


async def test_observe_stop_start_and_find(aws_env):
    task = make_task(name="other", id=random_id("other").long)
    async with _backend() as backend:
        ref = TaskRef.of(task)
        assert not (await backend.observe(ref)).exists
        await apply(backend, task)
        seen = await backend.observe(ref)
        assert (seen.exists, seen.machines, seen.desired) == (True, 2, 2)
        assert [e.code for e in seen.events].count("instance-launched") == 2
        await backend.set_capacity(ref, 0)
        assert (await backend.observe(ref)).machines == 0
        storage = await backend.storage(ref)
        launch = await Engine(backends={"aws": backend}).launch(backend, ref, storage,
                                                                time.time() + 60)
        await run_steps(backend.create_steps(task, launch))
        assert (await backend.observe(ref)).desired == 2
    async with _backend() as fresh:  # another laptop: no index, only tags
        found = await fresh.find(REGION)
    assert [(r.task_id, r.name, r.region) for r in found] == [(task.id, "other", REGION)]


async def test_permission_set_uses_the_users_profile(aws_env):
    iam = clients(REGION)["iam"]
    arn = iam.create_instance_profile(InstanceProfileName="mine")["InstanceProfile"]["Arn"]
    task = make_task(permission_set=arn, environment=Secrets())
    async with _backend() as backend:
        await apply(backend, task)
    found = inventory(REGION, task.id)
    assert (len(found["roles"]), len(found["parameters"])) == (0, 0)
    data = clients(REGION)["ec2"].describe_launch_template_versions(
        LaunchTemplateName=task.id)["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["IamInstanceProfile"]["Arn"] == arn


async def test_container_bucket_must_exist(aws_env):
    from tpi_core.errors import ResourceNotFound

    task = make_task(storage=StorageSpec(container="no-such-bucket/runs"))
    async with _backend() as backend:
        with pytest.raises(ResourceNotFound, match="no-such-bucket"):
            await backend.storage(TaskRef.of(task), create=task)


class _backend:
    async def __aenter__(self) -> AWSBackend:
        self.backend = AWSBackend()
        return self.backend

    async def __aexit__(self, *exc) -> None:
        await self.backend.aclose()


def test_cli_errors_are_one_line_without_traceback(aws_env, tmp_path, monkeypatch):
    import subprocess
    import sys

    (tmp_path / "tasks.toml").write_text('[task.t]\ncloud = "aws"\nmachine = "m+t5"\n'
                                         'script = "#!/bin/sh\\necho hi"\n')
    run = subprocess.run([sys.executable, "-m", "tpi_core", "apply"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "did you mean 'm+t4'" in run.stderr
    (tmp_path / "tasks.toml").write_text('[task.t]\ncloud = "aws"\n'
                                         'script = "#!/bin/sh\\necho hi"\n')
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    run = subprocess.run([sys.executable, "-m", "tpi_core", "apply"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "tpi: error: sts:GetCallerIdentity: no AWS credentials found "
        "(set AWS_PROFILE or AWS_ACCESS_KEY_ID)"]

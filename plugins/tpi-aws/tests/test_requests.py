"""Request building of the AWS backend against a fake client (no network)."""

from __future__ import annotations

import json

import pytest

from tpi_aws import backend as aws
from tpi_aws.resources import Image, task_policy
from tpi_aws.userdata import decode, parse
from tpi_core.backend import Launch, TaskRef
from tpi_core.errors import UsageError
from tpi_core.model import Secrets, Task
from tpi_core.steps import delete_steps, run_steps

TASK_ID = "tpi-train-abcdefgh-12345678"
SECRET = "value-that-must-never-leave"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClient:
    """Answers every call from a table of canned responses and records it."""

    region = "us-west-1"

    def __init__(self, answers: dict | None = None):
        self.answers = {**DEFAULT_ANSWERS, **(answers or {})}
        self.calls: list[tuple[str, str, dict]] = []

    async def call(self, service, operation, *, ok=(), **params):
        self.calls.append((service, operation, params))
        return self.answers.get((service, operation), {})

    async def pages(self, service, operation, key, **params):
        return (await self.call(service, operation, **params)).get(key, [])

    def params(self, operation: str) -> dict:
        return next(p for _, op, p in self.calls if op == operation)

    def operations(self) -> list[str]:
        return [op for _, op, _ in self.calls]

    async def aclose(self):
        pass


DEFAULT_ANSWERS = {
    ("sts", "get_caller_identity"): {"Account": "123456789012"},
    ("ec2", "describe_vpcs"): {"Vpcs": [{"VpcId": "vpc-1"}]},
    ("ec2", "describe_subnets"): {"Subnets": [
        {"SubnetId": "subnet-b", "MapPublicIpOnLaunch": True, "AvailableIpAddressCount": 9},
        {"SubnetId": "subnet-a", "MapPublicIpOnLaunch": True, "AvailableIpAddressCount": 9},
        {"SubnetId": "subnet-full", "MapPublicIpOnLaunch": True, "AvailableIpAddressCount": 0},
        {"SubnetId": "subnet-private", "MapPublicIpOnLaunch": False,
         "AvailableIpAddressCount": 9}]},
    ("ec2", "describe_images"): {"Images": [
        {"ImageId": "ami-old", "CreationDate": "2024-01-01", "RootDeviceName": "/dev/sda1"},
        {"ImageId": "ami-new", "CreationDate": "2025-01-01", "RootDeviceName": "/dev/xvda"}]},
    ("ec2", "describe_security_groups"): {"SecurityGroups": []},
    ("ec2", "create_security_group"): {"GroupId": "sg-1"},
    ("ec2", "describe_launch_templates"): {"LaunchTemplates": []},
    ("iam", "get_instance_profile"): {"InstanceProfile": {
        "Arn": "arn:aws:iam::123456789012:instance-profile/tpi/" + TASK_ID, "Roles": []}},
    ("autoscaling", "describe_auto_scaling_groups"): {"AutoScalingGroups": []},
}


def make_task(**changes) -> Task:
    fields = dict(name="train", cloud="aws", id=TASK_ID, script="#!/bin/sh\n", machine="m",
                  spot=0.05, parallelism=3, environment=Secrets({"TOKEN": SECRET}),
                  tags={"team": "ml", "tpi:managed": "no"})
    return Task(**{**fields, **changes})


async def create(task: Task, fake: FakeClient) -> None:
    backend = aws.AWSBackend()
    backend._clients["us-west-1"] = fake
    await run_steps(backend.create_steps(task, Launch(f"s3://bkt/{task.id}", 2e9,
                                                      "s3://bkt/tpi-agent/abc", "abc",
                                                      ("tpi-0.1.0-py3-none-any.whl",))))


def test_on_demand_group_uses_the_template_alone():
    params = aws.group_params(name="g", subnets=["s1", "s2"], types=["a", "b"], spot=-1,
                              capacity=2, tags={"k": "v"})
    assert params["LaunchTemplate"] == {"LaunchTemplateName": "g", "Version": "$Latest"}
    assert "MixedInstancesPolicy" not in params
    assert (params["MinSize"], params["DesiredCapacity"], params["MaxSize"]) == (0, 2, 2)
    assert params["VPCZoneIdentifier"] == "s1,s2"
    assert params["Tags"] == [{"Key": "k", "Value": "v", "PropagateAtLaunch": True,
                               "ResourceId": "g", "ResourceType": "auto-scaling-group"}]


@pytest.mark.parametrize(("spot", "price"), [(0, None), (0.25, "0.25000"), (1.234567, "1.23457")])
def test_spot_group_mixes_every_equivalent_type(spot, price):
    params = aws.group_params(name="g", subnets=["s"], types=["m5.large", "m6i.large"],
                              spot=spot, capacity=1, tags={})
    policy = params["MixedInstancesPolicy"]
    spread = policy["InstancesDistribution"]
    assert spread["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert spread["OnDemandPercentageAboveBaseCapacity"] == 0
    assert spread.get("SpotMaxPrice") == price
    assert policy["LaunchTemplate"]["Overrides"] == [{"InstanceType": "m5.large"},
                                                     {"InstanceType": "m6i.large"}]
    assert "LaunchTemplate" not in params


def test_template_data_disk_imdsv2_and_tags():
    data = aws.template_data(image=Image("ami-1", "n", "/dev/xvda"), instance_type="m5.large",
                             security_group="sg-1", profile_arn="arn:p", disk_size=80,
                             user_data="dXNlcg==", tags={"tpi:task": "t"})
    assert data["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 80, "VolumeType": "gp3", "DeleteOnTermination": True}}]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert {s["ResourceType"] for s in data["TagSpecifications"]} == {"instance", "volume"}
    no_disk = aws.template_data(image=Image("ami-1", "n", "/dev/xvda"), instance_type="t",
                                security_group="sg", profile_arn="p", disk_size=-1,
                                user_data="", tags={})
    assert "BlockDeviceMappings" not in no_disk


def test_task_policy_reaches_only_the_tasks_own_things():
    policy = task_policy(bucket="bkt", prefix="tpi-x", region="us-west-1", account="1",
                         group="tpi-x", parameter="/tpi/tpi-x/environment")
    resources = {s["Sid"]: s["Resource"] for s in policy["Statement"]}
    assert resources["TaskObjects"] == "arn:aws:s3:::bkt/tpi-x/*"
    assert resources["TaskEnvironment"] == "arn:aws:ssm:us-west-1:1:parameter/tpi/tpi-x/environment"
    assert resources["LeaveOwnGroup"].endswith(":autoScalingGroupName/tpi-x")
    listing = next(s for s in policy["Statement"] if s["Sid"] == "TaskListing")
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["tpi-x/*", "tpi-x"]
    assert resources["AgentBundles"] == "arn:aws:s3:::bkt/tpi-agent/*"  # read only
    bundles = next(s for s in policy["Statement"] if s["Sid"] == "AgentBundles")
    assert bundles["Action"] == "s3:GetObject"
    wildcard = [s for s in policy["Statement"] if s["Resource"] == "*"]
    assert [s["Action"] for s in wildcard] == ["autoscaling:DescribeAutoScalingInstances"]


def test_task_tags_keep_tpi_keys():
    tags = aws.TAGS.tags("tpi-x", {"tpi:task": "forged", "team": "ml"}, "train", "bkt/p")
    assert tags == {"tpi:task": "tpi-x", "tpi:managed": "true", "tpi:name": "train",
                    "tpi:container": "bkt/p", "team": "ml"}


@pytest.mark.anyio
async def test_create_steps_in_order_with_resolved_inputs():
    fake = FakeClient()
    await create(make_task(), fake)
    creates = [op for op in fake.operations() if op.startswith(("create", "put"))]
    assert creates == ["create_role", "put_role_policy", "create_instance_profile",
                       "create_security_group", "put_parameter", "create_launch_template",
                       "create_auto_scaling_group", "put_scheduled_update_group_action"]
    template = fake.params("create_launch_template")["LaunchTemplateData"]
    assert template["ImageId"] == "ami-new" and template["InstanceType"] == "m5.2xlarge"
    assert template["SecurityGroupIds"] == ["sg-1"]
    group = fake.params("create_auto_scaling_group")
    assert group["VPCZoneIdentifier"] == "subnet-a,subnet-b"
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["SpotMaxPrice"] == "0.05000"
    deadline = fake.params("put_scheduled_update_group_action")
    assert (deadline["DesiredCapacity"], deadline["MaxSize"]) == (0, 0)
    assert deadline["StartTime"].timestamp() == 2e9


@pytest.mark.anyio
async def test_user_data_and_requests_carry_no_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-from-env")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "aws-token-from-env")
    fake = FakeClient()
    await create(make_task(), fake)
    script = decode(fake.params("create_launch_template")["LaunchTemplateData"]["UserData"])
    for secret in (SECRET, "aws-secret-from-env", "aws-token-from-env", "TOKEN"):
        assert secret not in script
    boot = parse(script)
    assert (boot["storage_url"], boot["bundle"]) == (f"s3://bkt/{TASK_ID}", "tpi-agent/abc")
    # the one request that carries the value is the SecureString parameter
    carrying = [op for _, op, p in fake.calls if SECRET in json.dumps(p, default=str)]
    assert carrying == ["put_parameter"]
    assert fake.params("put_parameter")["Type"] == "SecureString"


@pytest.mark.anyio
async def test_permission_set_skips_the_role():
    arn = "arn:aws:iam::123456789012:instance-profile/team/worker"
    fake = FakeClient()
    await create(make_task(permission_set=arn, environment=Secrets()), fake)
    assert "create_role" not in fake.operations() and "put_parameter" not in fake.operations()
    template = fake.params("create_launch_template")["LaunchTemplateData"]
    assert template["IamInstanceProfile"] == {"Arn": arn}
    with pytest.raises(UsageError, match="instance profile ARN"):
        aws.AWSBackend().create_steps(make_task(permission_set="arn:aws:iam:1:role/x"),
                                      Launch("s3://b/p", 0))


@pytest.mark.anyio
async def test_delete_steps_mirror_create_steps():
    backend = aws.AWSBackend()
    task = make_task()
    created = [s.description for s in backend.create_steps(task, Launch("s3://b/p", 0))]
    deleted = [s.description for s in backend.delete_steps(TaskRef.of(task))]
    assert created == deleted and len(created) == 5
    fake = FakeClient({("ec2", "describe_security_groups"): {"SecurityGroups": [
        {"GroupId": "sg-1"}]}})
    backend._clients["us-west-1"] = fake
    await delete_steps(backend.delete_steps(TaskRef.of(task)))
    assert [op for op in fake.operations() if op.startswith("delete")] == [
        "delete_auto_scaling_group", "delete_parameter", "delete_security_group",
        "delete_instance_profile", "delete_role_policy", "delete_role"]  # IAM, global, last

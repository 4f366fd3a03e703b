"""The AWS backend: an Auto Scaling group of task machines and an S3 prefix per task.

``steps`` lists the task's resources (TPI's order, ``task/aws/task.go``, but the role
first), each tagged ``tpi:task``/``tpi:managed`` plus the task's tags, each with its create
and its delete (destroy deletes them in reverse)::

    IAM role + profile      only the task's prefix, the agent bundles, its parameter,
                            leaving its own group (skipped with ``permission_set``: the
                            user's profile is used); first, so deleted last: a global
                            resource goes only once the regional ones are gone
    security group          default VPC, no inbound rule
    environment parameter   SSM SecureString /tpi/<id>/environment (only with values)
    launch template         image, disk, user-data that starts the agent (nothing secret)
    Auto Scaling group      default subnets, spot mix, capacity = parallelism, and a
                            scheduled action to zero at the deadline

Storage is one tpi bucket per account and region (``tpi-<account>-<region>``) with a prefix
per task, or ``storage.container`` (``bucket[/path]``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

from tpi_aws import machines, resources, scaling, userdata
from tpi_aws.client import AwsClient
from tpi_core.backend import (
    AGENT_PREFIX,
    Backend,
    Capability,
    Launch,
    Observation,
    TaskRef,
)
from tpi_core.errors import ResourceNotFound, UsageError, check_fields
from tpi_core.model import Event, Task, epoch_seconds
from tpi_core.retry import poll
from tpi_core.steps import Step, creates
from tpi_core.storage import Storage, split_url
from tpi_core.tags import OwnTags

_PROFILE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")
TAGS = OwnTags(resources.TAG_TASK, resources.TAG_MANAGED, resources.TAG_NAME,
               resources.TAG_CONTAINER)
"""tpi's own tags on AWS resources (the region is the resource's own)."""


OBJECT_TAG_LIMIT = 10
"""S3 allows at most ten tags on an object."""


def object_tagging(ref: TaskRef) -> str:
    """The x-amz-tagging of the task's objects: tpi's two tags, then the task's own."""
    own = TAGS.ids(ref.task_id)
    extra = [(k, v) for k, v in ref.tags.items() if k not in own]
    return urlencode([*own.items(), *extra][:OBJECT_TAG_LIMIT])


def template_data(*, image: resources.Image, instance_type: str, security_group: str,
                  profile_arn: str, disk_size: int, user_data: str,
                  tags: Mapping[str, str]) -> dict:
    """The launch template: IMDSv2 only, terminate on shutdown, tags on instance and disk."""
    data = {
        "ImageId": image.id, "InstanceType": instance_type,
        "SecurityGroupIds": [security_group], "IamInstanceProfile": {"Arn": profile_arn},
        "UserData": user_data, "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                            "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [{"ResourceType": kind, "Tags": resources.tag_list(tags)}
                              for kind in ("instance", "volume")],
    }
    if disk_size > 0:
        data["BlockDeviceMappings"] = [{"DeviceName": image.root_device, "Ebs": {
            "VolumeSize": disk_size, "VolumeType": "gp3", "DeleteOnTermination": True}}]
    return data


def group_params(*, name: str, subnets: Sequence[str], types: Sequence[str], spot: float,
                 capacity: int, tags: Mapping[str, str]) -> dict:
    """The Auto Scaling group: on-demand for ``spot < 0``, else a spot mix over ``types``."""
    params = {
        "AutoScalingGroupName": name, "MinSize": 0, "MaxSize": capacity,
        "DesiredCapacity": capacity, "VPCZoneIdentifier": ",".join(subnets),
        "Tags": [{"Key": k, "Value": v, "PropagateAtLaunch": True, "ResourceId": name,
                  "ResourceType": "auto-scaling-group"} for k, v in tags.items()],
    }
    template = {"LaunchTemplateName": name, "Version": "$Latest"}
    if spot < 0:
        return {**params, "LaunchTemplate": template}
    distribution = {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0,
                    "SpotAllocationStrategy": "price-capacity-optimized"}
    if spot > 0:
        distribution["SpotMaxPrice"] = f"{spot:.5f}"
    return {**params, "CapacityRebalance": True, "MixedInstancesPolicy": {
        "LaunchTemplate": {"LaunchTemplateSpecification": template,
                           "Overrides": [{"InstanceType": t} for t in types]},
        "InstancesDistribution": distribution}}


_LIVE = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
_STAMP = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


async def observation(c: AwsClient, name: str) -> Observation:
    """What EC2 and Auto Scaling show of a task's group."""
    group = await scaling.describe_group(c, name)
    if group is None:
        return Observation(False)
    instances = await scaling.group_instances(c, name)
    activities = await scaling.scaling_activities(c, name)
    live = [i.get("InstanceId") for i in group.get("Instances", [])
            if i.get("LifecycleState") in _LIVE]
    events = [*map(activity_event, activities),
              *(e for i in instances for e in instance_events(i))]
    launched = [epoch_seconds(i["LaunchTime"]) for i in instances
                if i.get("InstanceId") in live and i.get("LaunchTime")]
    return Observation(True, len(live), group.get("DesiredCapacity", 0),
                       tuple(sorted(events, key=lambda e: e.time)),
                       first_up=min(launched, default=None))


def activity_event(activity: dict) -> Event:
    """A scaling activity as an event (``scaling-successful``, ``scaling-failed``...)."""
    message = activity.get("Description", "")
    if activity.get("StatusMessage"):
        message += f": {activity['StatusMessage']}"
    return Event(epoch_seconds(activity.get("StartTime")),
                 "scaling-" + str(activity.get("StatusCode", "unknown")).lower(),
                 message, source="aws")


def instance_events(instance: dict) -> list[Event]:
    """Launch and, when it happened, termination of an instance (moto keeps no activities)."""
    ident = f"{instance['InstanceId']} ({instance.get('InstanceType', '?')}, " \
            f"{instance.get('Placement', {}).get('AvailabilityZone', '?')})"
    launched = epoch_seconds(instance.get("LaunchTime"))
    events = [Event(launched, "instance-launched", ident, source="aws")]
    state = instance.get("State", {}).get("Name", "")
    if state in ("shutting-down", "terminated"):
        reason = instance.get("StateReason", {}).get("Message", "")
        stamp = _STAMP.search(instance.get("StateTransitionReason", ""))
        when = epoch_seconds(stamp.group(1) + "+00:00") if stamp else launched
        events.append(Event(when, "instance-terminated", f"{ident}: {reason}".rstrip(": "),
                            source="aws"))
    return events


async def find_tasks(c: AwsClient, bucket: str) -> list[TaskRef]:
    """Tasks of a region: tagged groups, then task prefixes of the tpi bucket."""
    groups = [{t["Key"]: t["Value"] for t in group.get("Tags", [])}
              for group in await scaling.tagged_groups(c)]
    prefixes = await resources.task_prefixes(c, bucket) \
        if await resources.bucket_exists(c, bucket) else []
    return TAGS.found(groups, prefixes, "aws", c.region)


class AWSBackend(Backend):
    """Tasks on EC2 Auto Scaling groups, storage in S3."""

    NAME = "aws"
    CAPABILITIES = frozenset({Capability.STOP_START, Capability.SPOT, Capability.GPU,
                              Capability.FIND})
    AGENT = ("tpi-aws", "tpi_aws")
    SIZE_ALIASES = machines.SIZE_ALIASES

    def __init__(self, session=None):
        super().__init__()
        self._session = session
        self._clients: dict[str, AwsClient] = {}
        self._accounts: dict[str, str] = {}

    def client(self, region: str) -> AwsClient:
        """The clients of a region (alias or native), shared by every task there."""
        native = machines.region(region)
        if native not in self._clients:
            self._clients[native] = AwsClient(native, self._session)
        return self._clients[native]

    async def account(self, c: AwsClient) -> str:
        """The account id (asked once)."""
        if "id" not in self._accounts:
            self._accounts["id"] = await resources.account_id(c)
        return self._accounts["id"]

    # storage -----------------------------------------------------------------------------

    async def storage(self, ref: TaskRef, *, create: Task | None = None) -> Storage:
        """The task's prefix: in the tpi bucket of the account and region, or the container."""
        bucket, prefix = await self.bucket_location(ref)
        if create:
            await self._ensure_bucket(self.client(ref.region), bucket, ref)
        return self._s3(ref, f"s3://{bucket}/{prefix}", object_tagging(ref))

    async def agent_storage(self, ref: TaskRef) -> Storage:
        """``tpi-agent/`` of the task's bucket: shared by the bucket's tasks."""
        bucket, _ = await self.bucket_location(ref)
        return self._s3(ref, f"s3://{bucket}/{AGENT_PREFIX}",
                        urlencode({resources.TAG_MANAGED: "true"}))

    def _s3(self, ref: TaskRef, url: str, tagging: str) -> Storage:
        from tpi_aws.storage import S3Storage  # start-up cost: the HTTP stack, when used

        region = ref.container_opts.get("region") or self.client(ref.region).region
        return self.kept_storage((url, region, tagging), lambda: S3Storage.from_url(
            url, region=region, tagging=tagging))

    async def own_bucket(self, ref: TaskRef) -> str:
        """``tpi-<account>-<region>``."""
        return await self._tpi_bucket(ref.region)

    async def _tpi_bucket(self, region: str) -> str:
        c = self.client(region)
        return f"tpi-{await self.account(c)}-{c.region}"

    async def _ensure_bucket(self, c: AwsClient, bucket: str, ref: TaskRef) -> None:
        if not ref.container:
            await resources.create_bucket(c, bucket, {resources.TAG_MANAGED: "true"})
        elif not await resources.bucket_exists(c, bucket):
            raise ResourceNotFound(f"storage.container: bucket {bucket!r} does not exist "
                                   f"or is not readable in {c.region}")

    # create and delete -------------------------------------------------------------------

    def validate(self, task: Task) -> None:
        """Size, image and region aliases and ``permission_set`` are usable (no request)."""
        check_fields(task, {"region": machines.region, "machine": machines.instance_types,
                            "image": machines.image, "permission_set": _check_permission_set})

    def steps(self, ref: TaskRef, task: Task | None = None,
              launch: Launch | None = None) -> Sequence[Step]:
        """Role, security group, environment, template, group (see the module docstring);
        deleted from the task id alone."""
        c, name = self.client(ref.region), ref.task_id
        parameter = resources.parameter_name(name)
        make = creates(_Creation(self, task, launch) if task and launch else None)
        # the global role comes first, so it is deleted last: only once the task's regional
        # resources are gone (a destroy in the wrong region must not strip a live task)
        return [
            Step(f"IAM role and instance profile {name}", make("role"),
                 lambda: resources.delete_role(c, name)),
            Step(f"security group {name}", make("security_group"),
                 lambda: resources.delete_security_group(c, name)),
            Step(f"environment parameter {parameter}", make("environment"),
                 lambda: resources.delete_environment(c, parameter)),
            Step(f"launch template {name}", make("template"),
                 lambda: resources.delete_launch_template(c, name)),
            Step(f"Auto Scaling group {name}", make("group"),
                 lambda: scaling.delete_group(c, name)),
        ]

    # read back ---------------------------------------------------------------------------

    async def observe(self, ref: TaskRef) -> Observation:
        """Machines running and desired, and events from scaling activities and EC2."""
        return await observation(self.client(ref.region), ref.task_id)

    async def set_capacity(self, ref: TaskRef, machines: int) -> None:
        """Scale the task's group (stop: 0, start: parallelism)."""
        await scaling.set_capacity(self.client(ref.region), ref.task_id, machines)

    async def lose_machine(self, ref: TaskRef, machine: str, grace: float) -> str:
        """Terminate the instance without lowering the group's capacity, as a spot loss
        does; the shutdown gives the agent SIGTERM, and the unit's stop timeout, to flush."""
        await self.client(ref.region).call("ec2", "terminate_instances", InstanceIds=[machine])
        return f"terminated instance {machine}; its group launches a replacement"

    async def wait_stopped(self, ref: TaskRef, timeout: float) -> bool:
        """Until EC2 has no instance of the task left that could still be flushing (the
        group stops counting an instance as soon as it starts terminating)."""
        c, flushing = self.client(ref.region), ("pending", "running", "shutting-down", "stopping")

        async def stopped() -> bool:
            return not any(i.get("State", {}).get("Name") in flushing
                           for i in await scaling.group_instances(c, ref.task_id))

        return await poll(stopped, timeout, 2.0)

    async def find(self, region: str | None = None) -> list[TaskRef]:
        """Tasks of a region (default: every region alias) from group tags and bucket prefixes."""
        async def one(name: str) -> list[TaskRef]:
            return await find_tasks(self.client(name), await self._tpi_bucket(name))

        return await self.find_in([region] if region else sorted(set(machines.REGIONS.values())),
                                  one)

    @classmethod
    def default_region(cls) -> str | None:
        """``AWS_REGION``, ``AWS_DEFAULT_REGION``, else the ``region`` of the profile in the
        AWS config file, as the AWS CLI finds it (no request, no SDK import)."""
        env = os.environ
        return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _profile_region(env)

    async def aclose(self) -> None:
        """Close every storage handed out and every region's clients."""
        await super().aclose()
        for c in self._clients.values():
            await c.aclose()


def _profile_region(env: Mapping[str, str]) -> str | None:
    import configparser

    # botocore's order of the profile variables, and its sections: [default], [profile NAME]
    profile = env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE") or "default"
    parser = configparser.RawConfigParser()  # no interpolation: a value may hold a %
    try:
        parser.read(os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config"),
                    encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None  # botocore will say what is wrong with it when the task needs it
    sections = [f"profile {profile}", *(["default"] if profile == "default" else [])]
    found = (parser.get(s, "region", fallback="") for s in sections if parser.has_section(s))
    return next(filter(None, found), None)


def _check_permission_set(value: str) -> None:
    if value and not _PROFILE_ARN.match(value):
        raise UsageError(f"permission_set {value!r} is not an instance profile ARN "
                         "(arn:aws:iam::<account>:instance-profile/<name>)")


class _Creation:
    """The create side of one task's steps; each step looks up what it needs again, so a
    second run (apply twice, ``tpi start``) gives the same resources."""

    def __init__(self, backend: AWSBackend, task: Task, launch: Launch):
        self.backend, self.task, self.launch = backend, task, launch
        self.c = backend.client(task.region)
        self.name = task.id
        self.tags = TAGS.tags(task.id, task.tags, task.name, task.storage.container)
        self.types = machines.instance_types(task.machine)
        self.image_query = machines.image(task.image)
        _check_permission_set(task.permission_set)

    async def security_group(self) -> None:
        vpc = await resources.default_vpc(self.c)
        self.group_id = await resources.create_security_group(self.c, self.name, vpc, self.tags)

    async def role(self) -> None:
        if self.task.permission_set:
            if not await resources.instance_profile_exists(self.c, self.task.permission_set):
                raise ResourceNotFound(f"permission_set: instance profile "
                                       f"{self.task.permission_set} does not exist")
            self.profile = self.task.permission_set
            return
        bucket, prefix = split_url(self.launch.storage_url)
        policy = resources.task_policy(
            bucket=bucket, prefix=prefix, region=self.c.region, group=self.name,
            account=await self.backend.account(self.c),
            parameter=resources.parameter_name(self.name), agent=AGENT_PREFIX)
        self.profile = await resources.create_role(self.c, self.name, policy, self.tags)

    async def environment(self) -> None:
        if self.task.environment:
            await resources.put_environment(self.c, resources.parameter_name(self.name),
                                            self.task.environment, self.tags)

    async def template(self) -> None:
        image = await resources.find_image(self.c, self.image_query)
        script = userdata.render(userdata.machine_boot(self.launch, region=self.c.region,
                                                       group=self.name))
        data = template_data(image=image, instance_type=self.types[0],
                             security_group=self.group_id, profile_arn=self.profile,
                             disk_size=self.task.disk_size, user_data=userdata.encode(script),
                             tags=self.tags)
        await resources.create_launch_template(self.c, self.name, data, self.tags)

    async def group(self) -> None:
        vpc = await resources.default_vpc(self.c)
        params = group_params(name=self.name, subnets=await resources.default_subnets(self.c, vpc),
                              types=self.types, spot=self.task.spot,
                              capacity=self.task.parallelism, tags=self.tags)
        await scaling.create_group(self.c, params, self.launch.deadline)

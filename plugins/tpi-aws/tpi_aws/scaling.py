"""The Auto Scaling group of a task: it keeps the task's machines running, replacing a
reclaimed spot machine with no laptop awake, and scales to zero at the deadline.

Like :mod:`tpi_aws.resources`, every create treats "already exists" as done and every
delete "not found", so each function may run twice.
"""

from __future__ import annotations

import datetime
import time

from tpi_aws.client import AwsClient
from tpi_aws.resources import TAG_MANAGED, TAG_TASK
from tpi_core.errors import ResourceNotFound, TransientError
from tpi_core.retry import poll

DEADLINE_ACTION = "tpi-deadline"


async def describe_group(c: AwsClient, name: str) -> dict | None:
    """The group, or None."""
    found = await c.call("autoscaling", "describe_auto_scaling_groups",
                         AutoScalingGroupNames=[name])
    groups = found["AutoScalingGroups"]
    return groups[0] if groups and groups[0].get("Status") != "Delete in progress" else None


async def create_group(c: AwsClient, params: dict, deadline: float) -> None:
    """Create the group (or bring a stopped one back to capacity) and schedule the deadline."""
    name = params["AutoScalingGroupName"]
    existing = await describe_group(c, name)
    if existing is None:
        # checked first: moto silently replaces a group created twice
        await c.call("autoscaling", "create_auto_scaling_group", ok=("AlreadyExists",),
                     **params)
    elif existing["DesiredCapacity"] != params["DesiredCapacity"]:
        await set_capacity(c, name, params["DesiredCapacity"])
    await put_deadline(c, name, deadline)


async def put_deadline(c: AwsClient, name: str, deadline: float) -> None:
    """A scheduled action that scales the group to zero at the task's deadline."""
    start = datetime.datetime.fromtimestamp(max(deadline, time.time() + 120), datetime.UTC)
    await c.call("autoscaling", "put_scheduled_update_group_action",
                 AutoScalingGroupName=name, ScheduledActionName=DEADLINE_ACTION,
                 StartTime=start, MinSize=0, MaxSize=0, DesiredCapacity=0)


async def set_capacity(c: AwsClient, name: str, machines: int) -> None:
    """Set the group's desired capacity (raising its maximum when needed)."""
    group = await describe_group(c, name)
    if group is None:
        raise ResourceNotFound(f"the task's Auto Scaling group {name} does not exist")
    await c.call("autoscaling", "update_auto_scaling_group", AutoScalingGroupName=name,
                 MinSize=0, MaxSize=max(machines, group["MaxSize"]), DesiredCapacity=machines)


async def delete_group(c: AwsClient, name: str, wait: float = 900) -> None:
    """Force-delete the group (its machines too) and wait until it is gone."""
    await c.call("autoscaling", "delete_auto_scaling_group", AutoScalingGroupName=name,
                 ForceDelete=True, ok=("ValidationError", "ScalingActivityInProgress",
                                       "ResourceInUse"))
    if not await poll(lambda: _group_gone(c, name), wait, 5.0):
        raise TransientError(f"the Auto Scaling group {name} is still being deleted")
    # an instance of the task that is in no group (detached, or launched by a create whose
    # answer was lost and retried) is not deleted with it: terminate it by its tag
    left = [i["InstanceId"] for i in await group_instances(c, name)
            if i.get("State", {}).get("Name") in ("pending", "running", "stopping", "stopped")]
    if left:
        await c.call("ec2", "terminate_instances", InstanceIds=left,
                     ok=("InvalidInstanceID.NotFound",))


async def _group_gone(c: AwsClient, name: str) -> bool:
    found = await c.call("autoscaling", "describe_auto_scaling_groups",
                         AutoScalingGroupNames=[name])
    return not found["AutoScalingGroups"]


async def tagged_groups(c: AwsClient) -> list[dict]:
    """Every Auto Scaling group tagged as tpi's."""
    return await c.pages("autoscaling", "describe_auto_scaling_groups", "AutoScalingGroups",
                         Filters=[{"Name": "tag-key", "Values": [TAG_MANAGED]}])


async def group_instances(c: AwsClient, name: str) -> list[dict]:
    """EC2's view of every instance of the task that EC2 still lists (by our own tag:
    moto drops the group's tag from an instance that left the group)."""
    reservations = await c.pages("ec2", "describe_instances", "Reservations", Filters=[
        {"Name": "tag:" + TAG_TASK, "Values": [name]}])
    return [i for r in reservations for i in r["Instances"]]


async def scaling_activities(c: AwsClient, name: str) -> list[dict]:
    """The group's recent scaling activities (moto keeps none)."""
    found = await c.call("autoscaling", "describe_scaling_activities",
                         AutoScalingGroupName=name, MaxRecords=50, ok=("ValidationError",))
    return found["Activities"] if found else []


async def leave_group(c: AwsClient, instance: str) -> None:
    """Terminate one instance and lower the group's capacity, so nothing replaces it."""
    await c.call("autoscaling", "terminate_instance_in_auto_scaling_group",
                 InstanceId=instance, ShouldDecrementDesiredCapacity=True)


async def group_of_instance(c: AwsClient, instance: str) -> dict | None:
    """The Auto Scaling view of one instance (group, lifecycle state), or None."""
    found = await c.call("autoscaling", "describe_auto_scaling_instances",
                         InstanceIds=[instance])
    rows = found["AutoScalingInstances"]
    return rows[0] if rows else None

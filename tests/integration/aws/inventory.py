"""Count a task's resources in moto through the AWS API (boto3, synchronous: test side only)."""

from __future__ import annotations

import boto3

KINDS = ("bucket_objects", "security_groups", "roles", "instance_profiles", "parameters",
         "launch_templates", "groups", "scheduled_actions", "running_instances")


def clients(region: str) -> dict:
    """boto3 clients of the services a task uses (endpoint and credentials from the env)."""
    names = ("ec2", "autoscaling", "iam", "ssm", "s3", "sts")
    return {n: boto3.client(n, region_name=region) for n in names}


def inventory(region: str, task_id: str, bucket: str | None = None) -> dict[str, list]:
    """Every resource of the task, by kind, found by its tags (or its names)."""
    c = clients(region)
    tag = [{"Name": "tag:tpi:task", "Values": [task_id]}]
    groups = c["autoscaling"].describe_auto_scaling_groups(
        Filters=[{"Name": "tag:tpi:task", "Values": [task_id]}])["AutoScalingGroups"]
    found = {
        "security_groups": c["ec2"].describe_security_groups(Filters=tag)["SecurityGroups"],
        "launch_templates": c["ec2"].describe_launch_templates(Filters=tag)["LaunchTemplates"],
        "groups": groups,
        "scheduled_actions": [
            a for g in groups for a in c["autoscaling"].describe_scheduled_actions(
                AutoScalingGroupName=g["AutoScalingGroupName"])["ScheduledUpdateGroupActions"]],
        "roles": [r for r in c["iam"].list_roles(PathPrefix="/tpi/")["Roles"]
                  if r["RoleName"] == task_id],
        "instance_profiles": [p for p in c["iam"].list_instance_profiles(
            PathPrefix="/tpi/")["InstanceProfiles"] if p["InstanceProfileName"] == task_id],
        "parameters": c["ssm"].describe_parameters(ParameterFilters=[
            {"Key": "Name", "Values": [f"/tpi/{task_id}/environment"]}])["Parameters"],
        "running_instances": [i for r in c["ec2"].describe_instances(Filters=tag + [
            {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
            for i in r["Instances"]],
        "bucket_objects": _objects(c["s3"], bucket, task_id) if bucket else [],
    }
    return found


def counts(found: dict[str, list]) -> dict[str, int]:
    """How many of each kind."""
    return {kind: len(found[kind]) for kind in KINDS}


def tags_of(c: dict, kind: str, item: dict) -> dict[str, str]:
    """The tags of one inventoried resource, as a dict."""
    if kind == "roles":
        item = c["iam"].get_role(RoleName=item["RoleName"])["Role"]
    if kind == "instance_profiles":  # moto lacks ListInstanceProfileTags
        item = c["iam"].get_instance_profile(
            InstanceProfileName=item["InstanceProfileName"])["InstanceProfile"]
    if kind == "parameters":
        listed = c["ssm"].list_tags_for_resource(ResourceType="Parameter",
                                                 ResourceId=item["Name"])["TagList"]
        return {t["Key"]: t["Value"] for t in listed}
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def bucket_tags(c: dict, bucket: str) -> dict[str, str]:
    """The bucket's tags."""
    listed = c["s3"].get_bucket_tagging(Bucket=bucket)["TagSet"]
    return {t["Key"]: t["Value"] for t in listed}


def _objects(s3, bucket: str, task_id: str) -> list:
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=task_id + "/")
        return [o for page in pages for o in page.get("Contents", [])]
    except s3.exceptions.NoSuchBucket:
        return []

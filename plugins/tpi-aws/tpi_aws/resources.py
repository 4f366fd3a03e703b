"""One small async function per AWS resource of a task (TPI's ``task/aws/resources``).

Creates treat "already exists" as done and deletes treat "not found" as done, so every
function may run twice. Every resource is named after the task id and tagged
``tpi:task`` = id and ``tpi:managed`` = ``true`` (plus the task's own tags).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from tpi_aws.client import AwsClient
from tpi_aws.machines import ImageQuery
from tpi_core.errors import BackendError, TpiError
from tpi_core.retry import until

TAG_TASK, TAG_MANAGED, TAG_NAME, TAG_CONTAINER = ("tpi:task", "tpi:managed", "tpi:name",
                                                  "tpi:container")
ROLE_PATH = "/tpi/"
POLICY_NAME = "tpi-task"
TRUST_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


def tag_list(tags: Mapping[str, str]) -> list[dict]:
    """``{"k": "v"}`` as AWS's ``[{"Key": "k", "Value": "v"}]``."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def parameter_name(task_id: str) -> str:
    """The SSM parameter that holds a task's environment."""
    return f"/tpi/{task_id}/environment"


# account, network, image ------------------------------------------------------------------

async def account_id(c: AwsClient) -> str:
    """The account the credentials belong to."""
    return (await c.call("sts", "get_caller_identity"))["Account"]


async def default_vpc(c: AwsClient) -> str:
    """The id of the region's default VPC."""
    found = await c.call("ec2", "describe_vpcs",
                         Filters=[{"Name": "is-default", "Values": ["true"]}])
    if not found["Vpcs"]:
        raise BackendError(f"no default VPC in {c.region}: create one with "
                           "`aws ec2 create-default-vpc`")
    return found["Vpcs"][0]["VpcId"]


async def default_subnets(c: AwsClient, vpc: str) -> list[str]:
    """Default subnets with free addresses and public IPs on launch (TPI issue #594)."""
    found = await c.pages("ec2", "describe_subnets", "Subnets", Filters=[
        {"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}])
    usable = [s["SubnetId"] for s in found
              if s.get("MapPublicIpOnLaunch") and s.get("AvailableIpAddressCount", 0) > 0]
    if not usable:
        raise BackendError(f"the default VPC of {c.region} has no default subnet with free "
                           "addresses that maps public IPs on launch")
    return sorted(usable)


@dataclass(frozen=True, slots=True)
class Image:
    """A resolved machine image."""

    id: str
    name: str
    root_device: str


async def find_image(c: AwsClient, query: str | ImageQuery) -> Image:
    """The AMI given by id, or the newest available one a query matches."""
    if isinstance(query, str):
        found = (await c.call("ec2", "describe_images", ImageIds=[query]))["Images"]
    else:
        filters = [{"Name": "name", "Values": [query.name]},
                   {"Name": "state", "Values": ["available"]}]
        if query.architecture != "*":
            filters.append({"Name": "architecture", "Values": [query.architecture]})
        owners = {} if query.owner == "*" else {"Owners": [query.owner]}
        found = (await c.call("ec2", "describe_images", Filters=filters, **owners))["Images"]
    if not found:
        raise BackendError(_no_image(c.region, query))
    best = max(found, key=lambda i: i.get("CreationDate", ""))
    return Image(best["ImageId"], best.get("Name", ""), best.get("RootDeviceName", "/dev/sda1"))


def _no_image(region: str, query: str | ImageQuery) -> str:
    what = f"image {query}" if isinstance(query, str) else query.describe()
    return (f"no AMI in {region} for {what}; set image = \"ami-...\" to an AMI of {region}, "
            "or give the task another region")


# bucket ------------------------------------------------------------------------------------

async def create_bucket(c: AwsClient, bucket: str, tags: Mapping[str, str]) -> None:
    """The tpi bucket of an account and region: private, tagged; existing is fine."""
    where = ({} if c.region == "us-east-1"
             else {"CreateBucketConfiguration": {"LocationConstraint": c.region}})
    await c.call("s3", "create_bucket", ok=("BucketAlreadyOwnedByYou",), Bucket=bucket, **where)
    await c.call("s3", "put_public_access_block", Bucket=bucket,
                 PublicAccessBlockConfiguration=dict.fromkeys(
                     ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                      "RestrictPublicBuckets"), True))
    await c.call("s3", "put_bucket_tagging", Bucket=bucket, Tagging={"TagSet": tag_list(tags)})


async def bucket_exists(c: AwsClient, bucket: str) -> bool:
    """True when the bucket exists (and is reachable with these credentials)."""
    return await c.call("s3", "head_bucket", ok=("404", "NoSuchBucket", "NotFound"),
                        Bucket=bucket) is not None


async def task_prefixes(c: AwsClient, bucket: str) -> list[str]:
    """The top-level prefixes of a bucket (one per task in the tpi bucket)."""
    found = await c.pages("s3", "list_objects_v2", "CommonPrefixes", Bucket=bucket,
                          Delimiter="/")
    return [p["Prefix"].rstrip("/") for p in found]


# security group ----------------------------------------------------------------------------

async def find_security_group(c: AwsClient, name: str) -> str | None:
    """The id of the task's security group, if any."""
    found = await c.call("ec2", "describe_security_groups", Filters=[
        {"Name": "group-name", "Values": [name]}, {"Name": "tag:" + TAG_TASK, "Values": [name]}])
    groups = found["SecurityGroups"]
    return groups[0]["GroupId"] if groups else None


async def create_security_group(c: AwsClient, name: str, vpc: str,
                                tags: Mapping[str, str]) -> str:
    """A security group with no inbound rule (the default all-outbound rule stays)."""
    existing = await find_security_group(c, name)
    if existing:
        return existing
    made = await c.call(
        "ec2", "create_security_group", ok=("InvalidGroup.Duplicate",), GroupName=name,
        VpcId=vpc, Description=f"tpi task {name}: no inbound rule",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(tags)}])
    return made["GroupId"] if made else await find_security_group(c, name)


async def delete_security_group(c: AwsClient, name: str, wait: float = 300) -> None:
    """Delete the group, waiting while terminating instances still hold it."""
    group = await find_security_group(c, name)
    if group is None:
        return
    # refused (DependencyViolation) while terminating instances still hold it
    await until(lambda: c.call("ec2", "delete_security_group", GroupId=group,
                               ok=("InvalidGroup.NotFound", "InvalidGroupId.NotFound")), wait)


# IAM role and instance profile -------------------------------------------------------------

def task_policy(*, bucket: str, prefix: str, region: str, account: str, group: str,
                parameter: str, agent: str = "tpi-agent") -> dict:
    """What a task's machines may do: its own prefix, read the agent bundles (``agent``
    prefix), its parameter, leave its own group."""
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listed = [f"{prefix}/*", prefix] if prefix else ["*"]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "TaskObjects", "Effect": "Allow", "Resource": objects,
         "Action": ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObject",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]},
        {"Sid": "AgentBundles", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/{agent}/*"},
        {"Sid": "TaskListing", "Effect": "Allow", "Resource": f"arn:aws:s3:::{bucket}",
         "Action": "s3:ListBucket", "Condition": {"StringLike": {"s3:prefix": listed}}},
        {"Sid": "TaskEnvironment", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}:{account}:parameter{parameter}"},
        {"Sid": "LeaveOwnGroup", "Effect": "Allow",
         "Action": "autoscaling:TerminateInstanceInAutoScalingGroup",
         "Resource": f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:"
                     f"autoScalingGroupName/{group}"},
        {"Sid": "SeeGroups", "Effect": "Allow", "Resource": "*",
         "Action": "autoscaling:DescribeAutoScalingInstances"},
    ]}


async def create_role(c: AwsClient, name: str, policy: dict, tags: Mapping[str, str]) -> str:
    """The task's role with its inline policy, and an instance profile holding it; its ARN."""
    await c.call("iam", "create_role", ok=("EntityAlreadyExists",), RoleName=name,
                 Path=ROLE_PATH, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                 Description=f"tpi task {name}", Tags=tag_list(tags))
    await c.call("iam", "put_role_policy", RoleName=name, PolicyName=POLICY_NAME,
                 PolicyDocument=json.dumps(policy))
    await c.call("iam", "create_instance_profile", ok=("EntityAlreadyExists",),
                 InstanceProfileName=name, Path=ROLE_PATH, Tags=tag_list(tags))
    profile = (await c.call("iam", "get_instance_profile",
                            InstanceProfileName=name))["InstanceProfile"]
    if not any(role["RoleName"] == name for role in profile.get("Roles", [])):
        # LimitExceeded: the profile holds a role already, ours when an earlier answer was
        # lost on the way back (a profile holds one role); checked rather than assumed
        if await c.call("iam", "add_role_to_instance_profile", ok=("LimitExceeded",),
                        InstanceProfileName=name, RoleName=name) is None:
            held = (await c.call("iam", "get_instance_profile",
                                 InstanceProfileName=name))["InstanceProfile"]["Roles"]
            if not any(role["RoleName"] == name for role in held):
                raise BackendError(f"instance profile {name} holds another role")
    return profile["Arn"]


async def delete_role(c: AwsClient, name: str) -> None:
    """Delete the instance profile, then the role and its policy."""
    gone = ("NoSuchEntity",)
    try:
        await c.call("iam", "remove_role_from_instance_profile", ok=gone,
                     InstanceProfileName=name, RoleName=name)
    except TpiError:
        # a retry after a lost answer finds the role gone: AWS says NoSuchEntity, moto
        # answers 500; either way the profile no longer holding the role is what counts
        profile = await c.call("iam", "get_instance_profile", ok=gone,
                               InstanceProfileName=name)
        if profile and any(role["RoleName"] == name
                           for role in profile["InstanceProfile"].get("Roles", [])):
            raise
    await c.call("iam", "delete_instance_profile", ok=gone, InstanceProfileName=name)
    await c.call("iam", "delete_role_policy", ok=gone, RoleName=name, PolicyName=POLICY_NAME)
    await c.call("iam", "delete_role", ok=gone, RoleName=name)


async def instance_profile_exists(c: AwsClient, arn: str) -> bool:
    """True when the instance profile of an ARN exists in this account."""
    name = arn.rsplit("/", 1)[-1]
    found = await c.call("iam", "get_instance_profile", ok=("NoSuchEntity",),
                         InstanceProfileName=name)
    return found is not None


# environment -------------------------------------------------------------------------------

async def put_environment(c: AwsClient, name: str, values: Mapping[str, str],
                          tags: Mapping[str, str]) -> None:
    """Store the environment as one SecureString parameter (JSON); replaces a stale one."""
    common = {"Name": name, "Value": json.dumps(dict(values)), "Type": "SecureString",
              "Tier": "Intelligent-Tiering"}
    made = await c.call("ssm", "put_parameter", ok=("ParameterAlreadyExists",),
                        Description="tpi task environment", Tags=tag_list(tags), **common)
    if made is None:
        await c.call("ssm", "put_parameter", Overwrite=True, **common)


async def get_environment(c: AwsClient, name: str) -> dict[str, str]:
    """The stored environment; a task without one has none."""
    found = await c.call("ssm", "get_parameter", ok=("ParameterNotFound",), Name=name,
                         WithDecryption=True)
    return json.loads(found["Parameter"]["Value"]) if found else {}


async def delete_environment(c: AwsClient, name: str) -> None:
    """Delete the environment parameter."""
    await c.call("ssm", "delete_parameter", ok=("ParameterNotFound",), Name=name)


# launch template ---------------------------------------------------------------------------

async def find_launch_templates(c: AwsClient, name: str) -> list[dict]:
    """The launch templates of that name (none or one)."""
    found = await c.call("ec2", "describe_launch_templates", Filters=[
        {"Name": "launch-template-name", "Values": [name]}])
    return found["LaunchTemplates"]


async def create_launch_template(c: AwsClient, name: str, data: dict,
                                 tags: Mapping[str, str]) -> None:
    """Create the template unless it exists."""
    if await find_launch_templates(c, name):
        return
    await c.call("ec2", "create_launch_template",
                 ok=("InvalidLaunchTemplateName.AlreadyExistsException",),
                 LaunchTemplateName=name, LaunchTemplateData=data,
                 TagSpecifications=[{"ResourceType": "launch-template",
                                     "Tags": tag_list(tags)}])


async def delete_launch_template(c: AwsClient, name: str) -> None:
    """Delete the template (looked up first: moto answers a missing name badly)."""
    for template in await find_launch_templates(c, name):
        await c.call("ec2", "delete_launch_template",
                     ok=("InvalidLaunchTemplateId.NotFound",
                         "InvalidLaunchTemplateName.NotFoundException"),
                     LaunchTemplateId=template["LaunchTemplateId"])

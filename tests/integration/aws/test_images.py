"""Image aliases on moto: the newest matching AMI, and a one-line way out when none is there."""

from __future__ import annotations

import boto3
import pytest
from tpi_aws import machines, resources
from tpi_aws.backend import AWSBackend

from tpi_core.errors import BackendError

from .conftest import REGION

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_alias_resolves_to_the_newest_ami(aws_env):
    backend = AWSBackend()
    try:
        image = await resources.find_image(backend.client("us-west"), machines.image("ubuntu"))
    finally:
        await backend.aclose()
    assert image.id.startswith("ami-") and "ubuntu-noble-24.04" in image.name


async def test_alias_without_an_ami_in_the_region_names_alias_region_and_way_out(aws_env):
    ec2 = boto3.client("ec2", region_name=REGION)
    ubuntu = machines.image("ubuntu")
    for found in ec2.describe_images(Owners=[ubuntu.owner])["Images"]:
        ec2.deregister_image(ImageId=found["ImageId"])
    backend = AWSBackend()
    try:
        with pytest.raises(BackendError) as error:
            await resources.find_image(backend.client("us-west"), ubuntu)
    finally:
        await backend.aclose()
    message = str(error.value)
    assert message.startswith(f"no AMI in {REGION} for image alias 'ubuntu' "
                              "(099720109477:x86_64:ubuntu/images/hvm-ssd-gp3/")
    assert message.endswith(f'; set image = "ami-..." to an AMI of {REGION}, '
                            "or give the task another region")
    assert "ImageQuery" not in message and "\n" not in message

"""The user-data of a task machine: the core's boot script with the AWS fetcher.

The core's boot script (:mod:`tpi_core.boot.script`) finds or brings Python, installs the
task's agent bundle and starts the agent. AWS adds only how the machine reads and writes its
bucket: ``bootfetch.py``, a standard-library program that signs S3 and Auto Scaling
requests with the instance profile's credentials from IMDSv2. Nothing of the task's is in
the user-data but where its storage and bundle are: no credential, no presigned URL, no
environment value (the agent reads those from SSM Parameter Store).
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Sequence
from importlib import metadata, resources

from tpi_core.boot import script
from tpi_core.boot.script import MachineBoot
from tpi_core.errors import BackendError

HOOKS = "tpi_aws.agent:AwsHooks"
LIMIT = 16384
"""EC2 takes at most 16 KB of user-data, before base64."""


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``("bucket", "prefix")``."""
    bucket, _, prefix = url.removeprefix("s3://").partition("?")[0].partition("/")
    return bucket, prefix.strip("/")


def machine_boot(*, storage_url: str, agent_url: str, digest: str, wheels: Sequence[str],
                 python: str = "", region: str, group: str) -> MachineBoot:
    """How a machine of the task's group boots."""
    if not agent_url:
        raise BackendError("no agent bundle for the task's machines (Launch.agent_url)")
    bucket, prefix = split_url(storage_url)
    agent_bucket, agent_prefix = split_url(agent_url)
    if agent_bucket != bucket:
        raise BackendError(f"the agent bundle {agent_url} is not in the task's bucket {bucket}")
    here = resources.files(__package__)
    return MachineBoot(
        fetcher=here.joinpath("bootfetch.py").read_text(),
        shell_fetcher=here.joinpath("bootfetch.sh").read_text(),
        fetcher_config={"bucket": bucket, "region": region, "group": group},
        bundle=agent_prefix,
        failures=f"{prefix}/reports/boot-failed".lstrip("/"), storage_url=storage_url,
        hooks=HOOKS, digest=digest, wheels=tuple(wheels), python_archive=python,
        imports=("tpi_core.agent", "tpi_aws.agent"),
        environment={"AWS_REGION": region, "AWS_DEFAULT_REGION": region},
        version=metadata.version("tpi"))


def render(boot: MachineBoot) -> str:
    """The user-data script."""
    return script.render(boot)


def encode(text: str) -> str:
    """Gzip, then base64, as launch templates take user-data. cloud-init, on every image
    tpi supports, unpacks gzip user-data; packed, the script is well under EC2's 16 KB."""
    packed = gzip.compress(text.encode(), mtime=0)
    if len(packed) > LIMIT:
        raise AssertionError(f"user-data is {len(packed)} bytes packed, over EC2's {LIMIT}")
    return base64.b64encode(packed).decode()


def decode(user_data: str) -> str:
    """The script of a launch template's user-data (base64, gzip or not), as cloud-init
    reads it."""
    if user_data.startswith("#!"):
        return user_data
    raw = base64.b64decode(user_data)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


def parse(user_data: str) -> dict:
    """The boot settings inside a rendered user-data (plain, or as :func:`encode` made it)."""
    return script.parse(decode(user_data))

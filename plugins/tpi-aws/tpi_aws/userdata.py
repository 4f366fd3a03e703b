"""The user-data of a task machine: the core's boot script with the AWS fetcher.

The core's boot script (:mod:`tpi_core.boot.script`) finds or brings Python, installs the
task's agent bundle and starts the agent. AWS adds only how the machine reads and writes its
bucket: ``bootfetch.py``, a standard-library program that signs S3 and Auto Scaling
requests with the instance profile's credentials from IMDSv2. Nothing of the task's is in
the user-data but where its storage and bundle are: no credential, no presigned URL, no
environment value (the agent reads those from SSM Parameter Store).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata, resources

from tpi_core.boot import script
from tpi_core.boot.script import MachineBoot
from tpi_core.errors import BackendError
from tpi_core.storage import split_url

HOOKS = "tpi_aws.agent:AwsHooks"
LIMIT = 16384
"""EC2 takes at most 16 KB of user-data, before base64."""


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


render = script.render


def encode(text: str) -> str:
    """Gzip, then base64, as launch templates take user-data (under EC2's 16 KB)."""
    return script.pack(text, LIMIT)


decode = script.unpack
parse = script.parse

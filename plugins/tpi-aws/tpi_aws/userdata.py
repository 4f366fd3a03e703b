"""The user-data of a task machine: the core's boot script with the AWS fetcher.

The core's boot script (:mod:`tpi_core.boot.script`) finds or brings Python, installs the
task's agent bundle and starts the agent. AWS adds only how the machine reads and writes its
bucket: ``bootfetch.py``, a standard-library program that signs S3 and Auto Scaling
requests with the instance profile's credentials from IMDSv2 (after the core's shared half),
or ``bootfetch.sh`` (curl) on an image without python3. Nothing of the task's is in the
user-data but where its storage and bundle are: no credential, no presigned URL, no
environment value (the agent reads those from SSM Parameter Store).
"""

from __future__ import annotations

from importlib import resources

from tpi_core.backend import Launch
from tpi_core.boot import script
from tpi_core.boot.script import MachineBoot
from tpi_core.storage import split_url

LIMIT = 16384
"""EC2 takes at most 16 KB of user-data, before base64."""


def machine_boot(launch: Launch, *, region: str, group: str) -> MachineBoot:
    """How a machine of the task's group boots."""
    return script.machine_boot(
        launch, fetcher=fetcher_program(), shell_fetcher=_read("bootfetch.sh"),
        fetcher_config={"bucket": split_url(launch.storage_url)[0], "region": region,
                        "group": group},
        hooks="tpi_aws.agent:AwsHooks", imports=("tpi_aws.agent",),
        environment={"AWS_REGION": region, "AWS_DEFAULT_REGION": region})


def fetcher_program() -> str:
    """The machine's fetcher: the core's shared half, then ``bootfetch.py``."""
    return script.fetcher_program(_read("bootfetch.py"))


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


render, parse, decode = script.render, script.parse, script.unpack


def encode(text: str) -> str:
    """Gzip, then base64, as launch templates take user-data (under EC2's 16 KB)."""
    return script.pack(text, LIMIT)

"""The user-data: the core boot script with the AWS fetcher, packed under EC2's limit."""

from __future__ import annotations

import base64
import gzip
import re
import subprocess

from tpi_aws import userdata
from tpi_core.backend import Launch

STORAGE = "s3://tpi-123456789012-us-west-1/tpi-x-abcdefgh-12345678"
AGENT = "s3://tpi-123456789012-us-west-1/tpi-agent/0123456789abcdef0123456789abcdef"
LAUNCH = Launch(STORAGE, 0.0, agent_url=AGENT, agent_digest="0123456789abcdef0123456789abcdef",
                agent_wheels=("tpi-0.1.0-py3-none-any.whl",))
BOOT = userdata.machine_boot(LAUNCH, region="us-west-1", group="tpi-x-abcdefgh-12345678")


def test_round_trip_through_the_launch_template_encoding():
    script = userdata.render(BOOT)
    encoded = userdata.encode(script)
    raw = base64.b64decode(encoded)
    assert raw[:2] == b"\x1f\x8b" and len(raw) <= userdata.LIMIT  # gzip, as cloud-init takes
    assert gzip.decompress(raw).decode() == userdata.decode(encoded) == script
    assert userdata.parse(encoded) == userdata.parse(script) == BOOT.config()
    assert userdata.encode(script) == encoded  # no time inside: same template, same bytes


def test_fetcher_reads_the_task_bucket_and_the_shared_bundle():
    assert BOOT.fetcher_config == {"bucket": "tpi-123456789012-us-west-1", "region": "us-west-1",
                                   "group": "tpi-x-abcdefgh-12345678"}
    assert BOOT.bundle == "tpi-agent/0123456789abcdef0123456789abcdef"
    assert BOOT.failures == "tpi-x-abcdefgh-12345678/reports/boot-failed"
    script = userdata.render(BOOT)
    assert BOOT.fetcher.strip() in script
    assert "ExecStart=/opt/tpi/venv/bin/python -m tpi_core.agent --storage " + STORAGE in script
    assert "--hooks tpi_aws.agent:AwsHooks --machine-log /var/log/tpi/boot.log" in script
    assert "import tpi_core.agent, tpi_aws.agent" in script


def test_valid_bash_and_nothing_secret_or_installed_by_name():
    script = userdata.render(BOOT)
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "X-Amz-Signature", "tpi[aws]", "pip install tpi"):
        assert word not in script, word
    assert not re.search(r"pip install [^\\\n]*\btpi\b", script)

"""The bootstrap user-data: what it carries, and that the harness can read it back."""

from __future__ import annotations

import re
import subprocess

from tpi_aws import userdata
from tpi_aws.userdata import AgentLaunch, encode, parse, render

LAUNCH = AgentLaunch("s3://tpi-1-us-west-1/tpi-x-abcdefgh-12345678", "tpi-x-abcdefgh-12345678",
                     "us-west-1", "tpi[aws]==0.1.0")


def test_round_trip_plain_and_base64():
    script = render(LAUNCH)
    assert parse(script) == LAUNCH
    assert parse(encode(script)) == LAUNCH


def test_the_unit_runs_the_agent_with_the_aws_hooks():
    script = render(LAUNCH)
    command = " ".join(LAUNCH.argv())
    assert f"ExecStart={command}" in script
    assert LAUNCH.argv()[1:5] == ["-m", "tpi_core.agent", "--storage", LAUNCH.storage_url]
    assert LAUNCH.argv()[-2:] == ["--hooks", "tpi_aws.agent:AwsHooks"]
    assert "AWS_REGION=us-west-1" in script
    assert "'tpi[aws]==0.1.0'" in script  # quoted for the shell


def test_it_is_valid_bash_and_holds_no_credential_variable():
    script = render(LAUNCH)
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "RCLONE_REMOTE"):
        assert word not in script
    assert re.findall(r"export (\w+)=", script) == ["DEBIAN_FRONTEND"]


def test_package_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(userdata.PACKAGE_ENV, raising=False)
    assert userdata.package() == "tpi[aws]"
    monkeypatch.setenv(userdata.PACKAGE_ENV, "tpi[aws] @ https://example.invalid/tpi.whl")
    assert userdata.package().endswith("tpi.whl")

"""A task with no ``region`` follows the AWS CLI's region (environment, then profile)."""

from __future__ import annotations

import pytest
from tpi_aws.backend import AWSBackend

from tpi_core.cli._tasks import load_tasks, resolve
from tpi_core.index import Entry, Index

NO_REGION = '[task.t]\ncloud = "aws"\nscript = "echo hi"\n'
PROFILES = """\
[default]
region = ap-south-1

[profile work]
region = eu-west-1
output = json # 100% a comment
"""


@pytest.fixture(autouse=True)
def no_aws_settings(monkeypatch, tmp_path):
    """Nothing of the developer's AWS settings: no variables, a config file that is absent."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-aws-config"))


def loaded(tmp_path, text: str = NO_REGION):
    (tmp_path / "tasks.toml").write_text(text)
    (task,) = load_tasks(str(tmp_path / "tasks.toml"))
    return task.region, task.environment["TPI_REGION"]


def test_the_environment_gives_the_region(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert loaded(tmp_path) == ("eu-west-1", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # the AWS CLI's order: AWS_REGION first
    assert loaded(tmp_path) == ("eu-north-1", "eu-north-1")


def test_the_profile_gives_the_region(tmp_path, monkeypatch):
    config = tmp_path / "aws-config"
    config.write_text(PROFILES)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert loaded(tmp_path) == ("ap-south-1", "ap-south-1")
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert loaded(tmp_path) == ("eu-west-1", "eu-west-1")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    assert loaded(tmp_path) == ("us-west", "us-west")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")  # the environment before the file
    assert loaded(tmp_path) == ("us-east-2", "us-east-2")


def test_an_explicit_region_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert loaded(tmp_path, NO_REGION + 'region = "us-east"\n') == ("us-east", "us-east")


def test_with_neither_the_default_stays_us_west(tmp_path):
    assert AWSBackend.default_region() is None
    assert loaded(tmp_path) == ("us-west", "us-west")


def test_a_broken_config_file_is_left_to_botocore(tmp_path, monkeypatch):
    (tmp_path / "aws-config").write_text("region = no section\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    assert loaded(tmp_path) == ("us-west", "us-west")


def test_local_tasks_keep_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert loaded(tmp_path, '[task.t]\nscript = "echo hi"\n') == ("us-west", "us-west")


def test_a_launched_task_is_looked_for_where_it_was_launched(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    (tmp_path / "tasks.toml").write_text(NO_REGION)
    (task,) = load_tasks(str(tmp_path / "tasks.toml"))
    Index(tmp_path).put(Entry(task.name, task.id, task.cloud, "us-west"))  # applied before
    (target,) = resolve(str(tmp_path / "tasks.toml"), ())
    assert (target.ref.region, target.task.environment["TPI_REGION"]) == ("us-west", "us-west")

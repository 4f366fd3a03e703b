"""The no-botocore fast path resolves what botocore would, and steps aside when unsure."""

from __future__ import annotations

import pytest

from tpi_aws import _session


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_SECURITY_TOKEN", "AWS_CREDENTIAL_EXPIRATION", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    return tmp_path


@pytest.mark.anyio
async def test_env_settings_match_botocore(clean_env, monkeypatch):
    import botocore.session

    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-1")
    fast = _session.env_settings(None)
    slow = botocore.session.get_session()
    creds = slow.get_credentials().get_frozen_credentials()
    got = fast.credentials
    assert (got.access_key, got.secret_key, got.token) == (
        creds.access_key, creds.secret_key, creds.token)
    assert fast.region == slow.get_config_variable("region") == "eu-west-1"
    assert fast.endpoint == "http://127.0.0.1:9"


@pytest.mark.parametrize("setting", ["AWS_PROFILE", "AWS_CREDENTIAL_EXPIRATION"])
def test_profiles_and_expiring_credentials_go_to_botocore(clean_env, monkeypatch, setting):
    monkeypatch.setenv(setting, "x")
    assert _session.env_settings(None) is None


def test_a_config_file_goes_to_botocore(clean_env, monkeypatch):
    config = clean_env / "config"
    config.write_text("[default]\nregion = us-east-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert _session.env_settings(None) is None


def test_no_keys_go_to_botocore(clean_env, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert _session.env_settings(None) is None

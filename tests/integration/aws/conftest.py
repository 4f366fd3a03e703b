"""Fixtures for the AWS backend on moto server: one server per session, reset per test.

The server comes from :mod:`tpi_core.testing.emulators`, started with an AMI catalogue of its own
(amis.json: current Ubuntu LTS and Deep Learning images, which moto's bundled list lacks),
so image aliases resolve as they do on AWS. ``TPI_MOTO_URL`` names a server already running
(it must have been started with ``MOTO_AMIS_PATH`` pointing at amis.json).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpi_core.testing.emulators import Emulator, aws_env as emulator_env, missing, reset_moto, start_moto

HERE = Path(__file__).parent
REGION = "us-west-1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id",
                    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-leak"}


@pytest.fixture(scope="session")
def moto_url():
    """A moto server on 127.0.0.1 for the whole session, with amis.json as its images."""
    if os.environ.get("TPI_MOTO_URL"):
        yield os.environ["TPI_MOTO_URL"].rstrip("/")
        return
    try:
        server: Emulator = start_moto(env={"MOTO_AMIS_PATH": str(HERE / "amis.json")})
    except (OSError, RuntimeError) as exc:
        missing(f"moto server: {exc}")
    with server:
        yield server.url


@pytest.fixture
def aws_env(moto_url, monkeypatch, tmp_path):
    """Fake credentials and moto as every AWS endpoint; moto emptied first."""
    reset_moto(moto_url)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    env = {**emulator_env(moto_url, FAKE_CREDENTIALS, home=tmp_path),
           "AWS_DEFAULT_REGION": REGION}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env

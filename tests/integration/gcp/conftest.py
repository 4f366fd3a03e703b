"""Fixtures for the GCP backend: the Compute Engine fake and fake-gcs-server as every Google
endpoint the CLI reaches, for one project."""

from __future__ import annotations

import pytest

from .fake_gce import FakeGce

PROJECT = "tpi-test-project"
REGION = "europe-west1"


@pytest.fixture
def gce(monkeypatch, gcs_server):
    """The fake (emptied per test), fake-gcs-server and the project, in the environment."""
    with FakeGce() as fake:
        for name, value in {"TPI_GCE_ENDPOINT": fake.url, "GOOGLE_CLOUD_PROJECT": PROJECT,
                            "STORAGE_EMULATOR_HOST": gcs_server.url}.items():
            monkeypatch.setenv(name, value)
        yield fake

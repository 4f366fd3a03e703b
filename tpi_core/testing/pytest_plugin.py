"""pytest fixtures for tpi and its plugins, loaded by pytest itself (entry point ``pytest11``).

Tests name the fixtures, never import them::

    def test_upload(s3_env): ...

``moto_server``    a moto server on 127.0.0.1 for the session (or the one ``TPI_MOTO_URL`` names)
``s3_env``         moto emptied and every ``AWS_*`` variable replaced: fake keys, moto as endpoint
``gcs_server``     a fake-gcs-server on 127.0.0.1 for the session
``azurite_server`` Azurite's blob service on 127.0.0.1 for the session
``azurite_env``    ``AZURE_STORAGE_CONNECTION_STRING`` set to Azurite's well-known account

pytest loads this module in every project where tpi is installed, so it imports nothing but
pytest: the emulators are imported and started by the fixtures that use them. A missing
emulator skips the test, and fails it when ``CI`` is set (:func:`.emulators.missing`).
``-p no:tpi`` turns the plugin off.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tpi_core.testing.emulators import Emulator


@pytest.fixture(scope="session")
def moto_server() -> Emulator:
    """A moto server on 127.0.0.1 (or the one ``TPI_MOTO_URL`` names)."""
    from tpi_core.testing import emulators

    try:
        return emulators.shared_moto()
    except (OSError, RuntimeError) as exc:
        emulators.missing(f"moto server: {exc}")


@pytest.fixture(scope="session")
def gcs_server() -> Emulator:
    """A fake-gcs-server on 127.0.0.1 for this test process."""
    from tpi_core.testing import emulators

    try:
        return emulators.shared_gcs()
    except (OSError, RuntimeError) as exc:
        emulators.missing(f"fake-gcs-server: {exc}")


@pytest.fixture(scope="session")
def azurite_server(request: pytest.FixtureRequest) -> Emulator:
    """Azurite's blob service on 127.0.0.1 for this test process (installed under the
    project's ``tests/node``); its URL is the well-known account's blob endpoint."""
    from tpi_core.testing import emulators

    try:
        return emulators.shared_azurite(request.config.rootpath / "tests/node/node_modules")
    except (OSError, RuntimeError) as exc:
        emulators.missing(f"Azurite: {exc}")


@pytest.fixture
def azurite_env(azurite_server: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """``AZURE_STORAGE_CONNECTION_STRING`` naming Azurite's well-known account; returned."""
    from tpi_core.testing import emulators

    text = emulators.azurite_connection_string(azurite_server.url)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", text)
    return text


@pytest.fixture
def s3_env(moto_server: Emulator, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> dict[str, str]:
    """moto emptied, every ``AWS_*`` variable replaced: fake credentials, moto as endpoint."""
    from tpi_core.testing import emulators

    emulators.reset_moto(moto_server.url)
    return emulators.isolate_aws(emulators.aws_env(moto_server.url, home=tmp_path), monkeypatch)

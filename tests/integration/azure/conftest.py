"""Fixtures for the Azure backend: the ARM fake, a laptop's IMDS for DefaultAzureCredential,
and Azurite over TLS (Azurite takes Entra tokens over https only), for one subscription."""

from __future__ import annotations

import pytest
from tpi_azure.account import DEVELOPMENT

from tpi_core.testing import emulators

from .fake_arm import FakeArm
from .fake_imds import FakeImds

SUBSCRIPTION = "5b0f3c51-8a62-4f1e-9d1e-3a9c0c2b7e11"
LOCATION = "westeurope"


@pytest.fixture(scope="session")
def azurite_tls(request, tmp_path_factory):
    """Azurite on https with a CA of the test's own (trustme), taking Entra tokens; its
    URL, and the CA's file."""
    import trustme

    folder = tmp_path_factory.mktemp("azurite-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    try:
        azurite = emulators.start_azurite(
            request.config.rootpath / "tests/node/node_modules",
            tls=(str(files["cert"]), str(files["key"]), str(files["ca"])))
    except (OSError, RuntimeError) as exc:
        emulators.missing(f"Azurite: {exc}")
    yield azurite, str(files["ca"])
    azurite.stop()


@pytest.fixture
def azure(monkeypatch, azurite_tls):
    """The ARM fake (emptied per test) whose storage accounts are Azurite's, a laptop IMDS
    that DefaultAzureCredential gets its tokens from, and the subscription, in the
    environment; no storage connection string (the CLI reads the account's key from ARM, a
    machine signs with its identity's token)."""
    azurite, ca = azurite_tls
    with FakeArm(blob_endpoint=azurite.url + "/", account_key=DEVELOPMENT["AccountKey"]
                 ) as arm, FakeImds() as laptop:
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT",
                     "AZURE_STORAGE_KEY", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
                     "AZURE_CLIENT_SECRET"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {"TPI_AZURE_ENDPOINT": arm.url, "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
                            "AZURE_POD_IDENTITY_AUTHORITY_HOST": laptop.url,
                            "SSL_CERT_FILE": ca}.items():
            monkeypatch.setenv(name, value)
        arm.laptop = laptop
        yield arm

"""Where tpi's Azure tokens come from, and no credentials as one line."""

from __future__ import annotations

import pytest
from tpi_azure import auth

from tpi_core.errors import PermissionDenied

pytestmark = pytest.mark.anyio


async def test_no_usable_credentials_is_one_permission_denied_line(monkeypatch, tmp_path):
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
                 "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "MSI_ENDPOINT",
                 auth.MACHINE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # only the managed identity, at a closed port of this computer: no traffic leaves it
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
    tokens = auth.token_source()
    assert isinstance(tokens, auth.IdentityTokens)
    try:
        with pytest.raises(PermissionDenied) as raised:
            await tokens.get("https://management.azure.com/")
    finally:
        await tokens.close()
    assert str(raised.value).startswith("no usable Azure credentials")
    assert "\n" not in str(raised.value)


def test_a_task_machine_uses_its_identity_through_imds(monkeypatch):
    monkeypatch.setenv(auth.MACHINE_ENV, "client-1")
    tokens = auth.token_source()
    assert isinstance(tokens, auth.ImdsTokens) and tokens.imds.client_id == "client-1"

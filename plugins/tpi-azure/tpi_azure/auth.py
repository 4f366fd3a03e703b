"""Where tpi's Azure tokens come from.

On a task's machine (``TPI_AZURE_CLIENT_ID``, set by its boot: the task's user-assigned
identity), the managed identity's tokens come from the Instance Metadata Service through
tpi's own client (:class:`~tpi_azure.imds.AzureImds`): the machine needs no auth library, so
its agent bundle carries none. Anywhere else, ``DefaultAzureCredential`` (the ``identity``
extra, which ``tpi[azure]`` installs): the environment's service principal, workload
identity, a managed identity, the Azure CLI's login, as every Azure tool reads them. Without
azure-identity, an Azure VM still uses its IMDS; elsewhere that is said at once.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from tpi_azure.imds import AzureImds, on_azure
from tpi_core.errors import PermissionDenied

MACHINE_ENV = "TPI_AZURE_CLIENT_ID"


class ImdsTokens:
    """Tokens of the VM's managed identity (``client_id``: a user-assigned one)."""

    def __init__(self, client_id: str = "", imds: AzureImds | None = None):
        self.imds = imds or AzureImds(client_id=client_id)

    async def get(self, resource: str) -> str:
        return await self.imds.token(resource)

    async def close(self) -> None:
        await self.imds.aclose()


class IdentityTokens:
    """Tokens of azure-identity's ``DefaultAzureCredential`` (imported when first used)."""

    def __init__(self) -> None:
        self._credential: Any = None

    async def get(self, resource: str) -> str:
        # the Azure auth stack, imported on use
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity.aio import DefaultAzureCredential

        if self._credential is None:
            self._credential = DefaultAzureCredential()
        scope = resource.rstrip("/") + "/.default"
        try:
            return (await self._credential.get_token(scope)).token
        except ClientAuthenticationError as exc:  # one line, not its chain of attempts
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PermissionDenied(
                "no usable Azure credentials (DefaultAzureCredential: `az login`, or "
                "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, or a managed identity)"
                + (f": {first[:200]}" if first else "")) from None

    async def close(self) -> None:
        if self._credential is not None:
            await self._credential.close()


def token_source() -> ImdsTokens | IdentityTokens:
    """The token source of this process (see the module doc)."""
    if os.environ.get(MACHINE_ENV):
        return ImdsTokens(os.environ[MACHINE_ENV])
    if importlib.util.find_spec("azure.identity") is None:
        if on_azure():
            return ImdsTokens(os.environ.get("AZURE_CLIENT_ID", ""))
        raise PermissionDenied("no Azure credentials: azure-identity is not installed "
                               "(pip install 'tpi[azure]')") from None
    return IdentityTokens()

"""Where tpi's Google tokens come from, in Application Default Credentials' order.

A credentials file first (``GOOGLE_APPLICATION_CREDENTIALS``, then the file of ``gcloud auth
application-default login``), read by gcloud-aio-auth (the ``adc`` extra, which ``tpi[gcp]``
installs); else, on a Google machine, its metadata server, through tpi's own client
(:class:`~tpi_gcp.metadata.GceMetadata`): a task's machine needs no auth library, so its agent
bundle carries none. Anywhere else there are no credentials, said at once, before any
request (a laptop would otherwise wait on ``metadata.google.internal``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tpi_core.errors import PermissionDenied
from tpi_gcp.metadata import HOST_ENV, GceMetadata

ADC_FILE = "~/.config/gcloud/application_default_credentials.json"
FILE_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
PRODUCT = Path("/sys/class/dmi/id/product_name")
"""What a Google machine's firmware calls it (``Google Compute Engine``), as google-auth
checks it: no request needed to know."""


def credentials_file() -> str | None:
    """The credentials file ADC would read, if there is one."""
    named = os.environ.get(FILE_ENV)
    if named:
        return named
    default = os.path.expanduser(ADC_FILE)
    return default if os.path.exists(default) else None


def on_google_machine() -> bool:
    """Whether a metadata server is there: ``GCE_METADATA_HOST`` names one, or this is a
    Google machine."""
    if os.environ.get(HOST_ENV):
        return True
    try:
        return PRODUCT.read_text().strip().startswith("Google")
    except OSError:
        return False


class MetadataToken:
    """The machine's service-account token, as gcloud-aio-auth's ``Token`` is used."""

    def __init__(self, metadata: GceMetadata | None = None):
        self.metadata = metadata or GceMetadata()

    async def get(self) -> str:
        return str((await self.metadata.token())["access_token"])

    async def get_project(self) -> str | None:
        return await self.metadata.get("project/project-id")

    async def close(self) -> None:
        await self.metadata.aclose()


def token_source(scope: str) -> Any:
    """A token source (``get()``, ``get_project()``, ``close()``) for ``scope``; no
    credentials anywhere is PermissionDenied, before any session is opened."""
    if credentials_file():
        from gcloud.aio.auth import Token  # the Google auth stack: only for a file

        return Token(scopes=[scope])
    if on_google_machine():
        return MetadataToken()
    raise PermissionDenied("no GCP credentials: `gcloud auth application-default login`, "
                           f"or {FILE_ENV}")

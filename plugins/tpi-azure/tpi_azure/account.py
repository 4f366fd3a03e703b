"""Which storage account a storage reaches, and how it signs: the account's key (Shared
Key), a SAS, or a Microsoft Entra token.

The account comes, in this order, from ``AZURE_STORAGE_CONNECTION_STRING`` (as the az CLI
and adlfs read it; ``UseDevelopmentStorage=true`` is Azurite's well-known account), from the
URL's ``account`` option, or from ``AZURE_STORAGE_ACCOUNT``. With no key and no SAS, requests
carry a bearer token from ``DefaultAzureCredential`` (environment, workload or managed
identity, the Azure CLI's login). :func:`shared_key` is the Shared Key signature of the Blob
service (version 2015-02-21 and later: an empty Content-Length when it is 0).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import parse_qsl

from tpi_core.errors import UsageError

CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT"
KEY_ENV = "AZURE_STORAGE_KEY"
API_VERSION = "2025-11-05"
"""The Blob service version tpi speaks (Azurite 3.35 knows it; azure-storage-blob 12.31's
default is newer than any Azurite)."""
DEVELOPMENT = {  # Azurite's documented well-known account (no secret of anyone's)
    "AccountName": "devstoreaccount1",
    "AccountKey": "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
                  "KBHBeksoGMGw==",
    "BlobEndpoint": "http://127.0.0.1:10000/devstoreaccount1",
}
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5",
           "content-type", "date", "if-modified-since", "if-match", "if-none-match",
           "if-unmodified-since", "range")


@dataclass(frozen=True)
class Account:
    """A storage account: its name, its blob endpoint, and its key or SAS (either may be
    empty: then a bearer token signs)."""

    name: str
    endpoint: str
    key: str = ""
    sas: str = ""

    def __repr__(self) -> str:  # never the key or the SAS
        return f"Account(name={self.name!r}, endpoint={self.endpoint!r})"


def find_account(account: str = "", environ: Mapping[str, str] | None = None) -> Account:
    """The account of a storage (see the module doc)."""
    env = os.environ if environ is None else environ
    if text := env.get(CONNECTION_ENV, "").strip():
        found = parse_connection_string(text)
        if not account or account == found.name:
            return found
    name = account or env.get(ACCOUNT_ENV, "")
    if not name:
        raise UsageError("no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING or "
                         "AZURE_STORAGE_ACCOUNT, or name it in the URL "
                         "(az://container/prefix?account=NAME)")
    return Account(name, f"https://{name}.blob.core.windows.net", env.get(KEY_ENV, ""))


def parse_connection_string(text: str) -> Account:
    """An ``AccountName=...;AccountKey=...;...`` connection string, as the SDKs take it."""
    fields: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise UsageError(f"{CONNECTION_ENV}: {name[:20]!r} is not NAME=VALUE")
        fields[name.strip()] = value.strip()
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        fields = {**DEVELOPMENT, **{k: v for k, v in fields.items() if k == "BlobEndpoint"}}
    name = fields.get("AccountName", "")
    endpoint = fields.get("BlobEndpoint", "")
    if not endpoint and name:
        scheme = fields.get("DefaultEndpointsProtocol", "https")
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        endpoint = f"{scheme}://{name}.blob.{suffix}"
    if not name and endpoint:
        name = endpoint.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    if not name or not endpoint:
        raise UsageError(f"{CONNECTION_ENV}: it names no account (AccountName or "
                         "BlobEndpoint)")
    return Account(name, endpoint.rstrip("/"), fields.get("AccountKey", ""),
                   fields.get("SharedAccessSignature", "").lstrip("?"))


def shared_key(account: Account, method: str, path: str, query: str,
               headers: Mapping[str, str]) -> str:
    """The ``Authorization`` value of a request (``path`` and ``query`` as sent, encoded;
    ``headers`` all that is sent but Host and User-Agent, x-ms-date among them)."""
    lower = {k.lower(): v for k, v in headers.items()}
    signed = [lower.get(name, "") for name in _SIGNED]
    if signed[2] == "0":
        signed[2] = ""
    ms = "".join(f"{k}:{' '.join(v.split())}\n"
                 for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
    resource = f"/{account.name}{path}"
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name.lower(), []).append(value)
    resource += "".join(f"\n{k}:{','.join(sorted(v))}" for k, v in sorted(params.items()))
    text = "\n".join([method.upper(), *signed]) + "\n" + ms + resource
    digest = hmac.new(base64.b64decode(account.key), text.encode(), hashlib.sha256).digest()
    return f"SharedKey {account.name}:{base64.b64encode(digest).decode()}"


def now() -> str:
    """``x-ms-date``: the time in RFC 1123 form."""
    return formatdate(usegmt=True)

"""A fake Azure Instance Metadata Service on 127.0.0.1: one scale set instance's of
:mod:`.fake_arm`, or the user's computer's (a managed identity only).

It answers only a request with ``Metadata: true`` (400 without it, as the real one does:
azure-identity's probe relies on that) and an ``api-version`` (400 without):

- ``GET /metadata/identity/oauth2/token?resource=R`` (optionally ``client_id``,
  ``object_id``/``principal_id`` or ``msi_res_id``/``mi_res_id``): the identity's token, a JWT
  (``aud`` R without ``/.default`` and a trailing ``/``, ``iss`` ``https://sts.windows.net/{tenant}/``,
  ``iat``, ``nbf``, ``exp``, ``oid``, ``appid``, ``tid``; signature ``fake``) that FakeArm and
  Azurite's ``--oauth basic`` accept. :attr:`FakeImds.tokens` counts them per audience. The
  identities are the scale set's user-assigned ones (as the fake holds them), or
  ``identities`` (client id -> principal id; one made up by default); with no choice in the
  request the only one is used (none or several: 400, as the real service).
- ``GET /metadata/instance/compute``: the instance's name (``{vmss}_{instanceId}``), scale
  set, group, subscription, location, resource id, ``vmId``, ``vmSize``, ``priority``,
  ``evictionPolicy``, ``tags`` and ``tagsList``; ``/metadata/instance/compute/{field}`` with
  ``format=text`` one of them (404: unknown).
- ``GET /metadata/scheduledevents``: ``{"DocumentIncarnation", "Events"}``, the instance's
  events in FakeArm (a ``Preempt`` once evicted); ``POST`` with ``{"StartRequests":
  [{"EventId"}]}`` acknowledges one, and the eviction happens at once (400: not the
  instance's event). Without FakeArm there are no events.

azure-identity reaches it through ``AZURE_POD_IDENTITY_AUTHORITY_HOST={url}``. Left out:
system-assigned identities, the whole ``/metadata/instance`` document (network, attested data,
``userData``), events other than ``Preempt``, and the delays of the real service.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

from .fake_arm import TENANT, FakeArm

TOKEN_LIFETIME = 3599


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeImds:
    """One machine's metadata service, serving from construction until :meth:`close`."""

    def __init__(self, arm: FakeArm | None = None, vmss_id: str | None = None,
                 instance_id: str | None = None, location: str = "westeurope",
                 tenant: str = "", identities: Mapping[str, str] | None = None):
        self.arm, self.vmss_id, self.instance_id, self.location = (arm, vmss_id, instance_id,
                                                                    location)
        self.tenant = tenant or (arm.tenant if arm else TENANT)
        self.identities = dict(identities if identities is not None
                               else {str(uuid.uuid4()): str(uuid.uuid4())})
        """Client id -> principal id, for a machine outside the fake's scale sets."""
        self.tokens: Counter[str] = Counter()
        """Tokens handed out, per audience (``https://storage.azure.com``)."""
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: a connection per request
            def serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append((self.command, self.path, headers, body))
                status, doc = owner.answer(self.command, self.path, headers, body)
                data = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8"
                                 if isinstance(doc, str) else "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = serve

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-imds", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def answer(self, method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict | str]:
        """(HTTP status, a JSON document or plain text) for one request."""
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if headers.get("metadata", "").lower() != "true":
            return 400, {"error": "bad_request",
                         "error_description": "Required metadata header not specified"}
        if "api-version" not in query:
            return 400, {"error": "Bad request. api-version was not specified in the request."}
        if method == "GET" and path == "/metadata/identity/oauth2/token":
            return self._token(query)
        if method == "GET" and path.startswith("/metadata/instance/compute"):
            compute = self.compute()
            field = path.removeprefix("/metadata/instance/compute").strip("/")
            if compute is None or (field and field not in compute):
                return 404, {"error": "Not found"}
            if not field:
                return 200, compute
            if query.get("format") != "text":
                return 400, {"error": "Bad request. format=text is required for a leaf."}
            value = compute[field]
            return 200, value if isinstance(value, str) else json.dumps(value)
        if path == "/metadata/scheduledevents" and method == "GET":
            if self.arm is None:
                return 200, {"DocumentIncarnation": 0, "Events": []}
            return 200, self.arm.scheduled_events(self.vmss_id, self.instance_id)
        if path == "/metadata/scheduledevents" and method == "POST":
            try:
                ids = [r["EventId"] for r in json.loads(body or b"{}")["StartRequests"]]
                if self.arm is None:
                    raise KeyError(ids)
                self.arm.acknowledge(self.vmss_id, self.instance_id, ids)
            except (ValueError, KeyError, TypeError):
                return 400, {"error": "Bad request. Invalid StartRequests or EventId."}
            return 200, ""
        return 404, {"error": "Not found"}

    def _identities(self) -> list[tuple[str, str, str]]:
        """(client id, principal id, resource id) of each identity the machine has."""
        if self.arm is None or not self.vmss_id:
            return [(client, principal, "") for client, principal in self.identities.items()]
        vmss = self.arm.get(self.vmss_id) or {}
        found = []
        for rid in (vmss.get("identity") or {}).get("userAssignedIdentities") or {}:
            if props := (self.arm.get(rid) or {}).get("properties"):
                found.append((props["clientId"], props["principalId"], rid))
        return found

    def _token(self, query: dict[str, str]) -> tuple[int, dict]:
        resource = query.get("resource", "")
        if not resource:
            return 400, {"error": "invalid_request",
                         "error_description": "Required audience parameter not specified"}
        identities = self._identities()
        for index, names in enumerate((("client_id",), ("object_id", "principal_id"),
                                       ("msi_res_id", "mi_res_id"))):
            wanted = next((query[n] for n in names if n in query), None)
            if wanted is not None:
                identities = [i for i in identities if i[index].lower() == wanted.lower()]
        if len(identities) != 1:
            return 400, {"error": "invalid_request", "error_description": (
                "Multiple user assigned identities exist, please specify the clientId / "
                "resourceId of the identity in the token request") if identities else
                "Identity not found"}
        client, principal, _ = identities[0]
        audience = resource.removesuffix("/.default").rstrip("/")
        now = int(time.time())
        claims = {"aud": audience, "iss": f"https://sts.windows.net/{self.tenant}/",
                  "iat": now, "nbf": now - 60, "exp": now + TOKEN_LIFETIME, "oid": principal,
                  "sub": principal, "appid": client, "tid": self.tenant}
        token = ".".join((_b64(b'{"alg":"RS256","typ":"JWT"}'),
                          _b64(json.dumps(claims).encode()), _b64(b"fake")))
        self.tokens[audience] += 1
        return 200, {"access_token": token, "refresh_token": "",
                     "expires_in": str(TOKEN_LIFETIME), "expires_on": str(now + TOKEN_LIFETIME),
                     "not_before": str(now), "resource": resource, "token_type": "Bearer",
                     "client_id": client}

    def compute(self) -> dict | None:
        """The instance's ``/metadata/instance/compute`` document (None: no such instance)."""
        if self.arm is None or not self.vmss_id:
            return None
        vmss = self.arm.get(self.vmss_id)
        record = next((r for r in self.arm.instances(self.vmss_id)
                       if r["instanceId"] == self.instance_id), None)
        if vmss is None or record is None:
            return None
        _, _, subscription, _, group = vmss["id"].split("/")[:5]
        profile = vmss["properties"].get("virtualMachineProfile") or {}
        tags = vmss.get("tags") or {}
        return {"name": record["name"], "vmScaleSetName": vmss["name"],
                "resourceGroupName": group, "subscriptionId": subscription,
                "location": vmss.get("location", self.location),
                "resourceId": f"{vmss['id']}/virtualMachines/{record['instanceId']}",
                "vmId": record["vmId"], "vmSize": vmss.get("sku", {}).get("name", ""),
                "priority": profile.get("priority", ""),
                "evictionPolicy": profile.get("evictionPolicy", ""), "osType": "Linux",
                "azEnvironment": "AzurePublicCloud", "zone": "",
                "tags": ";".join(f"{k}:{v}" for k, v in tags.items()),
                "tagsList": [{"name": k, "value": v} for k, v in tags.items()]}

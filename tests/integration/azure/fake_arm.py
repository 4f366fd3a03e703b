"""A fake of Azure Resource Manager and of Key Vault's secrets API (a project fake, not an
emulator).

No emulator exists for ARM (EMULATORS.md). :class:`FakeArm` serves, in memory on one 127.0.0.1
port over plain HTTP, what the Azure backend uses: resource groups (put, get, patch, delete,
list by tag); resources of any provider in a group, nested ones too
(``.../blobServices/default/containers/{c}``): put, get, patch (a deep merge, ``tags``
replaced), delete, lists per group, per subscription and in ``/resources`` (by ``tagName`` and
``tagValue``, or ``resourceType``); a scale set's instances (list with
``$expand=instanceView``, get, ``instanceView``, delete, ``/delete``, ``simulateEviction``);
``listKeys``; role assignments at any scope; a provider's registration (get, ``/register``);
deleted vaults (get, ``/purge``); the operations all these answer; and, under each vault's
``vaultUri`` (``{url}/keyvault/{vault}/``), secrets: put, get (latest or a version), list,
delete, and ``deletedsecrets`` get, purge and ``/recover``.

Kept from the real services because a backend depends on it: ``api-version`` is required (400
``MissingApiVersionParameter``) and so is a bearer token (401 ``AuthenticationFailed``; Key
Vault 401 ``Unauthorized`` with its ``WWW-Authenticate`` challenge); a JWT's ``aud`` must be
ARM's or Key Vault's (401 ``InvalidAuthenticationTokenAudience``; Key Vault ``Unauthorized``)
and it must not have expired (401 ``ExpiredAuthenticationToken``). Fixed words and names are
case-insensitive; errors are ``{"error": {"code", "message"}}``. Long-running calls answer as
their provider does: scale sets, virtual networks, subnets and security groups PUT 201 (200:
an update) with ``Azure-AsyncOperation`` and ``Creating``/``Updating`` in the body, DELETE 202
with ``Location`` and ``Azure-AsyncOperation``, as do a scale set's PATCH and its instance
deletes; a storage account's first PUT 202 with ``Location`` only (the last poll gives the
account); a group's DELETE 202 with ``Location`` (202 while running, then 200); a new vault is
``RegisteringDns`` until its next GET when ``pending_operations`` is set. Anything else answers
at once (DELETE 200, of a missing resource 204). 404 ``ResourceGroupNotFound``,
``ResourceNotFound``, ``ParentResourceNotFound``; 400 ``LocationRequired``. Storage account
names (400 ``AccountNameInvalid``; 409 ``StorageAccountAlreadyTaken``) and vault names (409
``VaultAlreadyExists``, also while a deleted vault of that name is not purged: a vault deleted,
or its group, is soft-deleted with its secrets) are global. A group's delete takes everything
in it except role assignments. A scale set keeps ``sku.capacity`` instances (``instanceId`` 0,
1, ... never reused; the highest go first) and gets ``uniqueId``/``timeCreated``; an identity
gets ``principalId``/``clientId`` (stable per id) and ``tenantId``; a storage account
``primaryEndpoints.blob``; a vault ``vaultUri``; a virtual network's inline subnets become
nested resources. An unknown id in ``/delete`` is 400 ``InvalidParameter``.
``simulateEviction`` (Spot only, else 409 ``OperationNotAllowed``) puts a ``Preempt`` event on
the instance (served by :mod:`.fake_imds`); the instance goes when the event is acknowledged
(:meth:`FakeArm.acknowledge`) or its ``NotBefore`` passes, and then a scale set with
``spotRestorePolicy.enabled`` makes another after :attr:`FakeArm.restore_delay`, one without
lowers its capacity. Role assignment names are GUIDs (400 ``InvalidRoleAssignmentId``); another
principal or role under a name is 409 ``RoleAssignmentUpdateNotPermitted``, the same under
another name 409 ``RoleAssignmentExists``; a ``principalId`` list holds assignments at, above
and below the scope. A PUT in an unregistered namespace is 409
``MissingSubscriptionRegistration``. A ``/resources`` list by tag value leaves out the tags. A
secret deleted but not purged cannot be set (409 ``Conflict``). A list longer than
:attr:`FakeArm.page_size` comes in pages linked by ``nextLink``.

Left out: authorization (no role assignment is ever checked), etags and ``If-Match``, most
validation, other ``$filter``s (400) and ``$select``, ARM's view of Key Vault secrets,
system-assigned identities, deallocation (an eviction deletes), ``restoreTimeout``, autoscale
rules and recurrences (:meth:`FakeArm.tick` applies a profile whose ``fixedDate`` covers now),
purge protection, and every delay of the real services: effects happen at once, and with
``pending_operations=True`` an operation's first poll says it is still running. An unknown
path answers 501, so a missing route is never mistaken for a missing resource. Test hooks:
:attr:`~FakeArm.requests`, :meth:`~FakeArm.resources`, :meth:`~FakeArm.get`,
:meth:`~FakeArm.instances`, :meth:`~FakeArm.evict`, :meth:`~FakeArm.fail`,
:meth:`~FakeArm.unregister`, :meth:`~FakeArm.tick`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

TENANT = "5f0c7a12-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")  # Azurite's documented well-known account key
ARM_AUDIENCES = ("https://management.azure.com", "https://management.core.windows.net")
VAULT_AUDIENCE = "https://vault.azure.net"
GROUP = "Microsoft.Resources/resourceGroups"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"
VMSS = "Microsoft.Compute/virtualMachineScaleSets"
VM = f"{VMSS}/virtualMachines"
STORAGE, VAULT = "Microsoft.Storage/storageAccounts", "Microsoft.KeyVault/vaults"
IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities"
AUTOSCALE = "Microsoft.Insights/autoscalesettings"
NETWORK = ("Microsoft.Network/virtualNetworks", "Microsoft.Network/networkSecurityGroups")
NESTED = (f"{STORAGE}/blobServices/containers", f"{NETWORK[0]}/subnets")
ASYNC = {VMSS, *NETWORK, NESTED[1]}
"""Types whose PUT and DELETE answer an ``Azure-AsyncOperation``."""
CANON = {part.lower(): part for kind in (VM, STORAGE, VAULT, IDENTITY, AUTOSCALE, *NETWORK,
                                         *NESTED, ROLE_ASSIGNMENT) for part in kind.split("/")}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")
VAULT_NAME = re.compile(r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]")
SECRET_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
FILTER_TERM = re.compile(r"(\w+)\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


class ArmError(Exception):
    """An error answer: ``{"error": {"code", "message", ...extra}}`` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 **extra):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.extra = headers or {}, extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def not_found(kind: str, names: str, group: str) -> ArmError:
    return ArmError(404, "ResourceNotFound", f"The Resource '{kind}/{names}' under resource "
                    f"group '{group}' was not found. For more details please go to "
                    f"https://aka.ms/ARMResourceNotFoundFix")


def no_group(group: str) -> ArmError:
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")


def no_parent(name: str) -> ArmError:
    return ArmError(404, "ParentResourceNotFound", f"Can not perform requested operation on "
                    f"nested resource. Parent resource '{name}' not found.")


@dataclass
class Request:
    """One request as the fake saw it (:attr:`FakeArm.requests` keeps them all)."""

    method: str
    path: str
    """Percent-decoded, without the query."""
    query: dict[str, str]
    headers: dict[str, str]
    """Names lowercased."""
    body: bytes

    def json(self) -> dict:
        try:
            doc = json.loads(self.body) if self.body else {}
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid and "
                           "could not be deserialized.")
        return doc


def _now() -> str:
    return datetime.now(UTC).isoformat()


def canon(words: str) -> str:
    """ARM's spelling of a namespace and types (``microsoft.compute/virtualmachinescalesets``)."""
    return "/".join(CANON.get(part.lower(), part) for part in words.split("/"))


def jwt_claims(token: str) -> dict | None:
    """The payload of a JWT, unverified (None: the token is not a JWT)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def parse_filter(text: str, allowed: set[frozenset[str]]) -> dict[str, str]:
    """A ``$filter`` of ANDed ``name eq 'value'`` terms whose names make one of ``allowed``
    (lowercased names -> values)."""
    terms: dict[str, str] = {}
    for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        match = FILTER_TERM.fullmatch(part.strip())
        terms.update({match[1].lower(): match[2].replace("''", "'")} if match else {"": ""})
    if terms and frozenset(terms) not in allowed:
        raise ArmError(400, "InvalidFilterInQueryString", f"fake ARM: unsupported $filter "
                       f"{text!r}")
    return terms


def merge(base: dict, patch: dict) -> dict:
    """A PATCH body over a resource: dicts merge deeply, ``tags`` and the rest are replaced."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "tags":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeArm:
    """The fake: ``with FakeArm() as arm:`` serves on ``arm.url`` until the block ends.

    ``blob_endpoint`` is every storage account's ``primaryEndpoints.blob`` (Azurite's
    ``https://127.0.0.1:PORT/devstoreaccount1/``; default the real service's), ``account_key``
    what ``listKeys`` tells (default Azurite's well-known key)."""

    def __init__(self, *, pending_operations: bool = False, blob_endpoint: str = "",
                 account_key: str = AZURITE_KEY, tenant: str = TENANT):
        self.pending_operations = pending_operations
        self.blob_endpoint, self.account_key, self.tenant = blob_endpoint, account_key, tenant
        self.page_size = 100
        self.eviction_notice = 30.0
        """Seconds from a ``Preempt`` event to its ``NotBefore``."""
        self.restore_delay = 0.0
        """Seconds a scale set with ``spotRestorePolicy`` takes to replace an evicted instance."""
        self.url = ""
        self.requests: list[Request] = []
        self._items: dict[str, dict] = {}  # lowercased id -> group, resource, role assignment
        self._vms: dict[str, list[dict]] = {}  # scale set key -> instance records
        self._next_instance: dict[str, int] = {}
        self._events: dict[tuple[str, str], dict] = {}  # (scale set key, instanceId) -> event
        self._incarnations: dict[tuple[str, str], int] = {}
        self._restores: list[tuple[float, str]] = []  # (when, scale set key)
        self._operations: dict[str, dict] = {}
        self._settling: set[str] = set()  # vaults still RegisteringDns
        self._deleted_vaults: dict[str, dict] = {}  # name -> deleted vault
        self._secrets: dict[str, dict[str, dict]] = {}  # vault key -> name -> versions
        self._deleted_secrets: dict[str, dict[str, dict]] = {}
        self._unregistered: set[str] = set()
        self._faults: list[list] = []
        self._operation_fault: ArmError | None = None
        self._lock = threading.RLock()
        sub = r"/subscriptions/(?P<sub>[^/]+)"
        rg = sub + r"/resourcegroups/(?P<rg>[^/]+)"
        vmss = rg + r"/providers/microsoft\.compute/virtualmachinescalesets/(?P<vmss>[^/]+)"
        vm = vmss + r"/virtualmachines/(?P<iid>[^/]+)"
        kv, kv_deleted = r"/keyvault/(?P<vault>[^/]+)", r"/deletedsecrets/(?P<name>[^/]+)"
        gone_vault = (sub + r"/providers/microsoft\.keyvault/locations/[^/]+/deletedvaults/"
                            r"(?P<name>[^/]+)")
        roles = (r"(?P<scope>/subscriptions/.+?)/providers/microsoft\.authorization/"
                 r"roleassignments(?:/(?P<name>[^/]+))?")
        operation = (sub + r"/providers/[^/]+/locations/[^/]+/"
                           r"(?P<kind>operations|operationresults)/(?P<op>[^/]+)")
        self._routes = [(verbs, re.compile(pattern, re.IGNORECASE), handler)
                        for verbs, pattern, handler in (
            ("GET|PUT|DELETE", roles, self._role),
            ("GET", operation, self._operation_get),
            ("GET", sub + r"/operationresults/(?P<op>[^/]+)", self._operation_get),
            ("GET", gone_vault, self._deleted_vault),
            ("POST", gone_vault + "/purge", self._deleted_vault),
            ("GET", sub + r"/providers/(?P<ns>[^/]+)", self._provider),
            ("POST", sub + r"/providers/(?P<ns>[^/]+)/register", self._provider),
            ("GET", sub + r"/resources", self._list_tagged),
            ("GET", sub + r"/resourcegroups", self._groups),
            ("GET|PUT|PATCH|DELETE", rg, self._group),
            ("GET", sub + r"/providers/(?P<ns>[^/]+)/(?P<rest>[^/]+)", self._list),
            ("GET", vmss + r"/virtualmachines", self._vm_list),
            ("GET|DELETE", vm, self._vm),
            ("GET", vm + r"/instanceview", self._vm),
            ("POST", vm + r"/simulateeviction", self._simulate_eviction),
            ("POST", vmss + r"/delete", self._delete_instances),
            ("POST", rg + r"/providers/microsoft\.storage/storageaccounts/(?P<name>[^/]+)"
                          r"/listkeys", self._list_keys),
            ("GET", rg + r"/providers/(?P<ns>[^/]+)/(?P<rest>[^/]+(?:/[^/]+/[^/]+)*)", self._list),
            ("GET|PUT|PATCH|DELETE", rg + r"/providers/(?P<ns>[^/]+)/(?P<rest>[^/]+/[^/]+"
                                          r"(?:/[^/]+/[^/]+)*)", self._resource),
            ("GET", kv + r"/secrets", self._secret_list),
            ("GET|PUT|DELETE", kv + r"/secrets/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?",
             self._secret),
            ("GET|DELETE", kv + kv_deleted, self._deleted_secret),
            ("POST", kv + kv_deleted + "/recover", self._deleted_secret))]

    # --- server and test hooks ------------------------------------------------------------

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, doc, headers = fake.handle(self.command, self.path, dict(self.headers),
                                                   raw)
                data = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if doc is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = serve

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="fake-arm")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def handle(self, method: str, target: str, headers: dict[str, str],
               raw: bytes) -> tuple[int, dict | None, dict[str, str]]:
        """Answer one request: (HTTP status, JSON body or None, headers)."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(method, unquote(parts.path).rstrip("/") or "/", query,
                          {k.lower(): v for k, v in headers.items()}, raw)
        with self._lock:
            self.requests.append(request)
            self._advance()
            self._operation_fault = None
            try:
                self._authenticate(request)
                if "api-version" not in query:
                    raise ArmError(400, "MissingApiVersionParameter", "The api-version query "
                                   "parameter (?api-version=) is required for all requests.")
                for fault in self._faults:
                    if fault[0] == method and re.search(fault[1], request.path, re.IGNORECASE):
                        fault[3] -= 1
                        if fault[3] <= 0:
                            self._faults.remove(fault)
                        if not fault[4]:
                            raise fault[2]
                        self._operation_fault = fault[2]
                        break
                for verbs, pattern, handler in self._routes:
                    if match := pattern.fullmatch(request.path):
                        if method in verbs.split("|"):
                            return handler(request, **match.groupdict())
                        break
                raise ArmError(501, "NotImplemented", f"fake ARM: no route for {method} "
                               f"{request.path}")
            except ArmError as error:
                return error.status, error.body(), error.headers

    def resources(self) -> dict[str, list[str]]:
        """Every id held, by type: ``resourceGroups``, ``Namespace/type`` (scale set instances
        as ``Microsoft.Compute/virtualMachineScaleSets/virtualMachines``, role assignments as
        ``Microsoft.Authorization/roleAssignments``, soft-deleted vaults as
        ``Microsoft.KeyVault/deletedVaults``), and the URLs of Key Vault ``secrets`` and
        ``deletedsecrets``. Nothing left is ``resources() == {}``."""
        held: dict[str, list[str]] = {}
        with self._lock:
            for doc in self._items.values():
                held.setdefault("resourceGroups" if doc["type"] == GROUP else doc["type"],
                                []).append(doc["id"])
            for key, records in self._vms.items():
                held.setdefault(VM, []).extend(f"{self._items[key]['id']}/virtualMachines/"
                                               f"{r['instanceId']}" for r in records)
            held["Microsoft.KeyVault/deletedVaults"] = [
                doc["id"] for doc in self._deleted_vaults.values()]
            for kind, store in (("secrets", self._secrets),
                                ("deletedsecrets", self._deleted_secrets)):
                for vault_key, secrets in store.items():
                    uri = self._items[vault_key]["properties"]["vaultUri"]
                    held.setdefault(kind, []).extend(f"{uri}{kind}/{s['name']}"
                                                     for s in secrets.values())
        return {kind: ids for kind, ids in held.items() if ids}

    def get(self, resource_id: str) -> dict | None:
        """A copy of what is stored under an id (a group, resource or role assignment)."""
        with self._lock:
            return copy.deepcopy(self._items.get(resource_id.rstrip("/").lower()))

    def instances(self, vmss_id: str) -> list[dict]:
        """A scale set's instance records: ``instanceId``, ``name`` (``{vmss}_{instanceId}``),
        ``vmId``, ``timeCreated``, ``state``."""
        with self._lock:
            return copy.deepcopy(self._vms.get(vmss_id.lower(), []))

    def evict(self, vmss_id: str, instance_id: str) -> None:
        """What ``simulateEviction`` does: a ``Preempt`` event on the instance."""
        with self._lock:
            self._schedule_eviction(vmss_id.lower(), instance_id)

    def scheduled_events(self, vmss_id: str, instance_id: str) -> dict:
        """The instance's Scheduled Events document, as its metadata service serves it."""
        with self._lock:
            self._advance()
            key = (vmss_id.lower(), instance_id)
            event = self._events.get(key)
            return {"DocumentIncarnation": self._incarnations.get(key, 0),
                    "Events": [copy.deepcopy(event["doc"])] if event else []}

    def acknowledge(self, vmss_id: str, instance_id: str, event_ids: list[str]) -> None:
        """``StartRequests`` from the instance: its eviction happens now (KeyError: not the
        instance's event)."""
        with self._lock:
            self._advance()
            key = (vmss_id.lower(), instance_id)
            event = self._events.get(key)
            if any(not event or event["doc"]["EventId"].lower() != e.lower() for e in event_ids):
                raise KeyError(event_ids)
            if event_ids:
                self._evict_now(*key)

    def fail(self, method: str, pattern: str, status: int, code: str,
             message: str = "injected by the test", times: int = 1,
             operation: bool = False) -> None:
        """Make the next ``times`` ``method`` requests whose path matches regex ``pattern``
        answer this error; with ``operation=True`` the call is made but the operation it
        answers fails with it (a resource it puts is left ``Failed``)."""
        with self._lock:
            self._faults.append([method, pattern, ArmError(status, code, message), times,
                                 operation])

    def unregister(self, namespace: str) -> None:
        """The subscription is not registered for ``namespace`` (until a ``/register``)."""
        with self._lock:
            self._unregistered.add(namespace.lower())

    def tick(self) -> None:
        """What time does: due evictions and restores, and autoscale: a profile whose
        ``fixedDate`` covers now sets its scale set's capacity to its ``capacity.default``."""
        with self._lock:
            self._advance()
            now = datetime.now(UTC)
            for doc in [d for d in self._items.values() if d["type"] == AUTOSCALE]:
                props = doc["properties"]
                target = self._items.get(str(props.get("targetResourceUri", "")).lower())
                if props.get("enabled") is False or not target or target["type"] != VMSS:
                    continue
                for profile in props.get("profiles", []):
                    fixed = profile.get("fixedDate")
                    if fixed and _time(fixed["start"]) <= now < _time(fixed["end"]):
                        target["sku"]["capacity"] = int(profile["capacity"]["default"])
                        self._fill(target["id"].lower())
                        break

    # --- plumbing ---------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        """A bearer token is required; a JWT's audience must be the plane's, unexpired."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        claims = jwt_claims(token.strip()) or {}
        if request.path.lower().startswith("/keyvault/"):
            audiences, challenge = (VAULT_AUDIENCE,), {"WWW-Authenticate": (
                f'Bearer authorization="https://login.microsoftonline.com/{self.tenant}", '
                f'resource="{VAULT_AUDIENCE}"')}
            missing = wrong = expired = "Unauthorized"
            text = "AKV10000: Request is missing a Bearer or PoP token."
        else:
            audiences, challenge = ARM_AUDIENCES, {"WWW-Authenticate": (
                'Bearer authorization_uri="https://login.windows.net/", error="invalid_token"')}
            missing, wrong, expired = ("AuthenticationFailed", "InvalidAuthenticationTokenAudience",
                                       "ExpiredAuthenticationToken")
            text = "Authentication failed. The 'Authorization' header is missing."
        audience = str(claims.get("aud", audiences[0]))
        if scheme.lower() != "bearer" or not token.strip():
            raise ArmError(401, missing, text, challenge)
        if audience.rstrip("/") not in audiences:
            raise ArmError(401, wrong, f"The access token has been obtained for wrong audience "
                           f"or resource '{audience}'. It should match {audiences[0]}.", challenge)
        if isinstance(claims.get("exp"), int | float) and claims["exp"] < time.time():
            raise ArmError(401, expired, "The access token expiry UTC time is earlier than "
                           "current UTC time.", challenge)

    def _page(self, request: Request, items: list[dict]) -> tuple[int, dict, dict]:
        """A list answer, in pages of ``page_size`` linked by an absolute ``nextLink``."""
        token = request.query.get("$skiptoken", "")
        start = int(token) if token.isdigit() else 0
        doc = {"value": copy.deepcopy(items[start:start + self.page_size])}
        if start + self.page_size < len(items):
            query = {**request.query, "$skiptoken": str(start + self.page_size)}
            doc["nextLink"] = f"{self.url}{quote(request.path)}?{urlencode(query)}"
        return 200, doc, {}

    def _new_operation(self, result: str | None = None) -> str:
        """Record an operation (failing, if the test asked for it); its id."""
        op = str(uuid.uuid4())
        self._operations[op] = {"polls": 1 if self.pending_operations else 0,
                                "error": self._operation_fault, "result": result,
                                "start": _now()}
        return op

    def _operation(self, request: Request, sub: str, namespace: str, location: str, *,
                   result: str | None = None, location_header: bool = True,
                   async_header: bool = True) -> dict[str, str]:
        """A new operation and the headers that point to it: ``Azure-AsyncOperation`` (a
        status document) and ``Location`` (202 until done, then the result)."""
        op = self._new_operation(result)
        base = f"{self.url}/subscriptions/{sub}/providers/{namespace}/locations/{location}"
        query = f"?api-version={request.query['api-version']}"
        headers = {"Azure-AsyncOperation": f"{base}/operations/{op}{query}"} if async_header else {}
        if location_header:
            headers["Location"] = f"{base}/operationresults/{op}{query}"
        return headers

    def _operation_get(self, request: Request, sub: str, op: str,
                       kind: str = "operationresults"):
        state = self._operations.get(op)
        if state is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{op}' was not found.")
        pending, error = state["polls"] > 0, state["error"]
        state["polls"] -= pending
        if kind.lower() == "operations":
            doc = {"id": request.path, "name": op, "startTime": state["start"],
                   "status": "InProgress" if pending else "Failed" if error else "Succeeded"}
            if not pending:
                doc["endTime"] = _now()
                if error:
                    doc["error"] = {"code": error.code, "message": error.message}
            return 200, doc, {}
        if pending:
            return 202, None, {"Location": f"{self.url}{quote(request.path)}?"
                                           f"{urlencode(request.query)}"}
        if error:
            raise error
        return 200, copy.deepcopy(self._items.get(state["result"] or "")), {}

    def _advance(self) -> None:
        """Evictions whose ``NotBefore`` passed, and restores due."""
        now = time.time()
        for key, event in list(self._events.items()):
            if event["deadline"] <= now:
                self._evict_now(*key)
        due = [key for when, key in self._restores if when <= now]
        self._restores = [(when, key) for when, key in self._restores if when > now]
        for key in due:
            if key in self._items:
                self._fill(key)

    # --- resource groups and resources ------------------------------------------------------

    def _group(self, request: Request, sub: str, rg: str):
        key = f"/subscriptions/{sub}/resourcegroups/{rg}".lower()
        have = self._items.get(key)
        if request.method == "PUT":
            body = request.json()
            if not body.get("location"):
                raise ArmError(400, "LocationRequired", "The location property is required "
                               "for this definition.")
            if have and have["location"] != body["location"]:
                raise ArmError(409, "InvalidResourceGroupLocation", f"Invalid resource group "
                               f"location '{body['location']}'. The Resource group already "
                               f"exists in location '{have['location']}'.")
            self._items[key] = {
                "id": have["id"] if have else f"/subscriptions/{sub}/resourceGroups/{rg}",
                "name": have["name"] if have else rg, "type": GROUP,
                "location": body["location"], "tags": body.get("tags") or {},
                "properties": {"provisioningState": "Succeeded"}}
            return (200 if have else 201), self._items[key], {}
        if have is None:
            raise no_group(rg)
        if request.method == "PATCH" and "tags" in (body := request.json()):
            have["tags"] = body["tags"] or {}
        if request.method == "DELETE":
            self._delete(key)  # role assignments at or under it stay
            return 202, None, {"Location": f"{self.url}/subscriptions/{sub}/operationresults/"
                                           f"{self._new_operation()}?api-version="
                                           f"{request.query['api-version']}"}
        return 200, have, {}

    def _groups(self, request: Request, sub: str):
        terms = parse_filter(request.query.get("$filter", ""),
                             {frozenset({"tagname"}), frozenset({"tagname", "tagvalue"})})
        prefix = f"/subscriptions/{sub}/".lower()
        return self._page(request, [doc for key, doc in self._items.items() if doc["type"] ==
                                    GROUP and key.startswith(prefix) and _tagged(doc, terms)])

    def _list(self, request: Request, sub: str, ns: str, rest: str, rg: str = ""):
        """A list of one type: in a subscription, a group, or under a resource (nested)."""
        segments = rest.split("/")
        kind = canon(f"{ns}/{'/'.join(segments[0::2])}")
        scope = f"/subscriptions/{sub}/" + (f"resourcegroups/{rg}/" if rg else "")
        parent = f"{scope}providers/{ns}/{'/'.join(segments[:-1])}".lower()
        if len(segments) > 1 and kind not in NESTED:
            raise ArmError(501, "NotImplemented", f"fake ARM: no list of {kind}")
        if len(segments) > 1 and "/".join(parent.split("/")[:9]) not in self._items:
            raise no_parent(segments[1])
        return self._page(request, [doc for key, doc in self._items.items()
                                    if doc["type"] == kind and key.startswith(scope.lower())
                                    and (len(segments) == 1 or key.startswith(parent + "/"))])

    def _list_tagged(self, request: Request, sub: str):
        """``/resources``: top-level resources by tag or by type (without their tags when a
        tag value is asked for, as ARM answers)."""
        terms = parse_filter(request.query.get("$filter", ""), {
            frozenset({"tagname"}), frozenset({"tagname", "tagvalue"}),
            frozenset({"resourcetype"})})
        prefix = f"/subscriptions/{sub}/resourcegroups/".lower()
        found = [doc for key, doc in self._items.items() if key.startswith(prefix)
                 and key.count("/") == 8 and doc["type"] != ROLE_ASSIGNMENT and _tagged(doc, terms)
                 and doc["type"].lower() == terms.get("resourcetype", doc["type"]).lower()]
        if "tagvalue" in terms:
            found = [{k: v for k, v in doc.items() if k != "tags"} for doc in found]
        return self._page(request, found)

    def _resource(self, request: Request, sub: str, rg: str, ns: str, rest: str):
        segments = rest.split("/")
        kind = canon(f"{ns}/{'/'.join(segments[0::2])}")
        types, names = kind.split("/"), segments[1::2]
        group = self._items.get(f"/subscriptions/{sub}/resourcegroups/{rg}".lower())
        rid = (group["id"] if group else f"/subscriptions/{sub}/resourceGroups/{rg}") + \
            f"/providers/{types[0]}/" + "/".join(f"{t}/{n}" for t, n in zip(types[1:], names))
        key, have = rid.lower(), self._items.get(rid.lower())
        if request.method in ("GET", "PATCH") and have is None:
            raise not_found(kind, "/".join(names), rg)
        if request.method == "GET":
            if key in self._settling:
                self._settling.discard(key)
                have["properties"]["provisioningState"] = "Succeeded"
            return 200, have, {}
        if request.method == "DELETE":
            if have is None:
                return 204, None, {}
            location = self._location_of(key)
            self._delete(key)
            if kind in ASYNC:
                return 202, None, self._operation(request, sub, types[0], location)
            return 200, None, {}
        if types[0].lower() in self._unregistered:
            raise ArmError(409, "MissingSubscriptionRegistration", f"The subscription is not "
                           f"registered to use namespace '{types[0]}'. See "
                           f"https://aka.ms/rps-not-found for how to register subscriptions.")
        if group is None:
            raise no_group(rg)
        if len(segments) > 2 and "/".join(key.split("/")[:9]) not in self._items:
            raise no_parent(segments[1])
        body = merge(have, request.json()) if request.method == "PATCH" else request.json()
        doc = self._build(kind, rid, names[-1], body, have, top=len(segments) == 2)
        failed = self._operation_fault is not None and kind in ASYNC | {STORAGE}
        if failed:
            doc["properties"]["provisioningState"] = "Failed"
        self._items[key] = doc
        if kind == VMSS and not failed:
            self._fill(key)
        if kind == NETWORK[0]:  # inline subnets are nested resources
            for subnet in doc["properties"].get("subnets") or []:
                subnet["id"] = f"{doc['id']}/subnets/{subnet['name']}"
                self._items[subnet["id"].lower()] = merge(subnet, {
                    "type": NESTED[1], "properties": {"provisioningState": "Succeeded"}})
        if kind == STORAGE and not have:
            return 202, None, self._operation(request, sub, types[0], doc["location"],
                                              result=key, async_header=False)
        if kind in ASYNC:
            shown = copy.deepcopy(doc)
            shown["properties"]["provisioningState"] = "Updating" if have else "Creating"
            return (200 if have else 201), shown, self._operation(
                request, sub, types[0], self._location_of(key), location_header=False)
        return (200 if have else 201), doc, {}

    def _build(self, kind: str, rid: str, name: str, body: dict, have: dict | None,
               top: bool) -> dict:
        """A resource as stored: the body with its id, name, type and what its type adds."""
        key = rid.lower()
        if top and not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required for "
                           "this definition.")
        doc = {**copy.deepcopy(body), "id": have["id"] if have else rid,
               "name": have["name"] if have else name, "type": kind}
        props = doc["properties"] = {**(doc.get("properties") or {}),
                                     "provisioningState": "Succeeded"}
        taken = any(d["type"] == kind and k != key and d["name"].lower() == name.lower()
                    for k, d in self._items.items())
        if kind == IDENTITY:
            props.update(principalId=str(uuid.uuid5(uuid.NAMESPACE_URL, key + "#principal")),
                         clientId=str(uuid.uuid5(uuid.NAMESPACE_URL, key + "#client")),
                         tenantId=self.tenant)
        elif kind == STORAGE:
            if not ACCOUNT_NAME.fullmatch(name):
                raise ArmError(400, "AccountNameInvalid", f"{name} is not a valid storage "
                               f"account name. Storage account name must be between 3 and 24 "
                               f"characters in length and use numbers and lower-case letters "
                               f"only.")
            if taken:
                raise ArmError(409, "StorageAccountAlreadyTaken", f"The storage account named "
                               f"{name} is already taken.")
            props["primaryEndpoints"] = {
                "blob": self.blob_endpoint or f"https://{name}.blob.core.windows.net/"}
        elif kind == VAULT:
            if not VAULT_NAME.fullmatch(name):
                raise ArmError(400, "VaultNameNotValid", f"The vault name '{name}' is invalid.")
            if taken or name.lower() in self._deleted_vaults:
                raise ArmError(409, "VaultAlreadyExists", f"The vault name '{name}' is already "
                               f"in use. Vault names are globally unique so it is possible "
                               f"that the name is already taken. If you are sure that the "
                               f"vault name was not taken then it is possible that a vault "
                               f"with the same name was recently deleted but not purged after "
                               f"being placed in a recoverable state.")
            props["vaultUri"] = f"{self.url}/keyvault/{doc['name']}/"
            if self.pending_operations and not have:
                props["provisioningState"] = "RegisteringDns"
                self._settling.add(key)
        elif kind == VMSS:
            old = have["properties"] if have else {}
            props["uniqueId"] = old.get("uniqueId") or str(uuid.uuid4())
            props["timeCreated"] = old.get("timeCreated") or _now()
            doc["sku"] = {**(doc.get("sku") or {})}
            doc["sku"]["capacity"] = int(doc["sku"].get("capacity") or 0)
        return doc

    def _location_of(self, key: str) -> str:
        """A resource's location, or its top-level parent's (for an operation's URL)."""
        doc = self._items.get(key) or {}
        parent = self._items.get("/".join(key.split("/")[:9])) or {}
        return (doc.get("location") or parent.get("location") or "westeurope").replace(" ", "")

    def _delete(self, key: str) -> None:
        """A resource or group, what is nested in it and what goes with it (its instances;
        a vault's secrets, the vault soft-deleted), but no role assignment."""
        for other in [k for k, doc in self._items.items() if (
                k == key or k.startswith(key + "/")) and doc["type"] != ROLE_ASSIGNMENT]:
            doc = self._items.pop(other)
            for record in self._vms.pop(other, []):
                self._events.pop((other, record["instanceId"]), None)
            if doc["type"] == VAULT:
                self._secrets.pop(other, None)
                self._deleted_secrets.pop(other, None)
                self._settling.discard(other)
                self._deleted_vaults[doc["name"].lower()] = {
                    "id": f"/subscriptions/{other.split('/')[2]}/providers/Microsoft.KeyVault/"
                          f"locations/{doc['location']}/deletedVaults/{doc['name']}",
                    "name": doc["name"], "type": "Microsoft.KeyVault/deletedVaults",
                    "properties": {"vaultId": doc["id"], "location": doc["location"],
                                   "deletionDate": _now(), "tags": doc.get("tags", {})}}

    def _deleted_vault(self, request: Request, sub: str, name: str):
        doc = self._deleted_vaults.get(name.lower())
        if doc is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource 'Microsoft.KeyVault/"
                           f"deletedVaults/{name}' was not found.")
        if request.method == "GET":
            return 200, doc, {}
        del self._deleted_vaults[name.lower()]
        return 202, None, self._operation(request, sub, "Microsoft.KeyVault",
                                          doc["properties"]["location"], async_header=False)

    def _provider(self, request: Request, sub: str, ns: str):
        if request.method == "POST":
            self._unregistered.discard(ns.lower())
        state = "NotRegistered" if ns.lower() in self._unregistered else "Registered"
        return 200, {"id": f"/subscriptions/{sub}/providers/{canon(ns)}",
                     "namespace": canon(ns), "registrationState": state}, {}

    def _list_keys(self, request: Request, sub: str, rg: str, name: str):
        if f"/subscriptions/{sub}/resourcegroups/{rg}/providers/{STORAGE}/{name}".lower() \
                not in self._items:
            raise not_found(STORAGE, name, rg)
        return 200, {"keys": [{"keyName": "key1", "value": self.account_key,
                               "permissions": "FULL"}]}, {}

    # --- scale sets and their instances -----------------------------------------------------

    def _fill(self, key: str) -> None:
        """Remove (highest instanceId first) or add instances until the scale set has
        ``sku.capacity``."""
        vmss = self._items[key]
        records = self._vms.setdefault(key, [])
        while len(records) > vmss["sku"]["capacity"]:
            gone = max(records, key=lambda r: int(r["instanceId"]))
            records.remove(gone)
            self._events.pop((key, gone["instanceId"]), None)
        while len(records) < vmss["sku"]["capacity"]:
            number = self._next_instance.get(key, 0)
            self._next_instance[key] = number + 1
            records.append({"instanceId": str(number), "name": f"{vmss['name']}_{number}",
                            "vmId": str(uuid.uuid4()), "timeCreated": _now(),
                            "state": "running"})

    def _scale_set(self, sub: str, rg: str, vmss: str) -> tuple[str, dict]:
        key = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/{VMSS}/{vmss}".lower()
        if key not in self._items:
            raise not_found(VMSS, vmss, rg)
        return key, self._items[key]

    def _instance(self, key: str, iid: str) -> dict | None:
        return next((r for r in self._vms.get(key, []) if r["instanceId"] == iid), None)

    def _vm_doc(self, vmss: dict, record: dict, instance_view: bool = False) -> dict:
        doc = {"id": f"{vmss['id']}/virtualMachines/{record['instanceId']}",
               "instanceId": record["instanceId"], "name": record["name"], "type": VM,
               "location": vmss["location"], "tags": copy.deepcopy(vmss.get("tags", {})),
               "sku": copy.deepcopy(vmss["sku"]),
               "properties": {"provisioningState": "Succeeded", "vmId": record["vmId"],
                              "timeCreated": record["timeCreated"], "latestModelApplied": True}}
        if instance_view:
            doc["properties"]["instanceView"] = _instance_view(record)
        return doc

    def _vm_list(self, request: Request, sub: str, rg: str, vmss: str):
        key, doc = self._scale_set(sub, rg, vmss)
        if "$filter" in request.query:
            raise ArmError(400, "InvalidParameter", "fake ARM: $filter is not supported here")
        expand = request.query.get("$expand", "").lower() == "instanceview"
        return self._page(request, [self._vm_doc(doc, r, expand) for r in self._vms[key]])

    def _vm(self, request: Request, sub: str, rg: str, vmss: str, iid: str):
        key, doc = self._scale_set(sub, rg, vmss)
        record = self._instance(key, iid)
        if record is None and request.method == "DELETE":
            return 204, None, {}
        if record is None:
            raise not_found(VM, f"{vmss}/{iid}", rg)
        if request.method == "GET" and request.path.lower().endswith("/instanceview"):
            return 200, _instance_view(record), {}
        if request.method == "GET":
            expand = request.query.get("$expand", "").lower() == "instanceview"
            return 200, self._vm_doc(doc, record, expand), {}
        self._remove_instances(key, [iid])
        return 202, None, self._operation(request, sub, "Microsoft.Compute", doc["location"])

    def _delete_instances(self, request: Request, sub: str, rg: str, vmss: str):
        key, doc = self._scale_set(sub, rg, vmss)
        ids = request.json().get("instanceIds")
        if not isinstance(ids, list) or not ids:
            raise ArmError(400, "InvalidParameter", "Required parameter 'instanceIds' is "
                           "missing (null).", target="instanceIds")
        for iid in ids:
            if self._instance(key, str(iid)) is None:
                raise ArmError(400, "InvalidParameter", f"The provided instanceId {iid} is not "
                               f"an active Virtual Machine Scale Set VM instanceId.",
                               target="instanceIds")
        self._remove_instances(key, [str(iid) for iid in ids])
        return 202, None, self._operation(request, sub, "Microsoft.Compute", doc["location"])

    def _remove_instances(self, key: str, ids: list[str]) -> None:
        """Instances deleted by a call: gone, the capacity lowered by their number."""
        self._vms[key] = [r for r in self._vms[key] if r["instanceId"] not in ids]
        for iid in set(ids):
            self._events.pop((key, iid), None)
        sku = self._items[key]["sku"]
        sku["capacity"] = max(0, sku["capacity"] - len(set(ids)))

    def _simulate_eviction(self, request: Request, sub: str, rg: str, vmss: str, iid: str):
        key, _ = self._scale_set(sub, rg, vmss)
        if self._instance(key, iid) is None:
            raise not_found(VM, f"{vmss}/{iid}", rg)
        self._schedule_eviction(key, iid)
        return 204, None, {}

    def _schedule_eviction(self, key: str, iid: str) -> None:
        record = self._instance(key, iid)
        if record is None:
            raise KeyError(f"no instance {iid} in {key}")
        profile = self._items[key]["properties"].get("virtualMachineProfile") or {}
        if profile.get("priority") not in ("Spot", "Low"):
            raise ArmError(409, "OperationNotAllowed", "Simulate eviction is only supported "
                           "for Spot virtual machines.")
        if (key, iid) not in self._events:
            deadline = time.time() + self.eviction_notice
            self._events[(key, iid)] = {"deadline": deadline, "doc": {
                "EventId": str(uuid.uuid4()).upper(), "EventType": "Preempt",
                "ResourceType": "VirtualMachine", "Resources": [record["name"]],
                "EventStatus": "Scheduled", "NotBefore": formatdate(deadline, usegmt=True),
                "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}}
            self._incarnations[(key, iid)] = self._incarnations.get((key, iid), 0) + 1

    def _evict_now(self, key: str, iid: str) -> None:
        """The eviction: the instance goes; a restore policy replaces it, else the capacity
        drops by one."""
        self._events.pop((key, iid), None)
        self._incarnations[(key, iid)] = self._incarnations.get((key, iid), 0) + 1
        if self._instance(key, iid) is None:
            return
        self._vms[key] = [r for r in self._vms[key] if r["instanceId"] != iid]
        vmss = self._items[key]
        if not (vmss["properties"].get("spotRestorePolicy") or {}).get("enabled"):
            vmss["sku"]["capacity"] = max(0, vmss["sku"]["capacity"] - 1)
        elif self.restore_delay > 0:
            self._restores.append((time.time() + self.restore_delay, key))
        else:
            self._fill(key)

    # --- role assignments -------------------------------------------------------------------

    def _role(self, request: Request, scope: str, name: str | None = None):
        if name is None and request.method != "GET":
            raise ArmError(501, "NotImplemented", f"fake ARM: no route for {request.method} "
                           f"{request.path}")
        if name is None:
            terms = parse_filter(request.query.get("$filter", ""), {frozenset({"principalid"})})
            return self._page(request, [
                doc for doc in self._items.values() if doc["type"] == ROLE_ASSIGNMENT
                and _related(doc["properties"]["scope"].lower(), scope.lower())
                and doc["properties"]["principalId"].lower()
                == terms.get("principalid", doc["properties"]["principalId"]).lower()])
        if not GUID.fullmatch(name):
            raise ArmError(400, "InvalidRoleAssignmentId", f"The role assignment ID '{name}' is "
                           f"not valid. The role assignment ID must be a GUID.")
        rid = f"{scope}/providers/{ROLE_ASSIGNMENT}/{name}"
        have = self._items.get(rid.lower())
        if request.method == "GET" and have is None:
            raise ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not "
                           f"found.")
        if request.method == "GET":
            return 200, have, {}
        if request.method == "DELETE":
            return (200, self._items.pop(rid.lower()), {}) if have else (204, None, {})
        props = request.json().get("properties") or {}
        if not props.get("roleDefinitionId") or not props.get("principalId"):
            raise ArmError(400, "InvalidRequestContent", "properties.roleDefinitionId and "
                           "properties.principalId are required.")
        group = re.match(r"/subscriptions/[^/]+/resourcegroups/([^/]+)", scope, re.IGNORECASE)
        if group and group[0].lower() not in self._items:
            raise no_group(group[1])
        wanted = (props["roleDefinitionId"].lower(), props["principalId"].lower())

        def same(doc: dict) -> bool:
            p = doc["properties"]
            return (p["roleDefinitionId"].lower(), p["principalId"].lower()) == wanted
        if have and not same(have):
            raise ArmError(409, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application ID, "
                           "principal ID, and scope are not allowed to be updated.")
        if have:
            return 200, have, {}
        if any(doc["type"] == ROLE_ASSIGNMENT and same(doc) and doc["properties"]["scope"]
               .lower() == scope.lower() for doc in self._items.values()):
            raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
        stored = {k: props[k] for k in ("roleDefinitionId", "principalId", "principalType",
                                        "condition", "conditionVersion") if k in props}
        if stored.get("condition"):
            stored.setdefault("conditionVersion", "2.0")
        self._items[rid.lower()] = {"id": rid, "name": name, "type": ROLE_ASSIGNMENT,
                                    "properties": {**stored, "scope": scope,
                                                   "createdOn": _now(), "updatedOn": _now()}}
        return 201, self._items[rid.lower()], {}

    # --- Key Vault secrets ------------------------------------------------------------------

    def _vault(self, name: str) -> tuple[str, str]:
        """A live vault by name: (its key, its vaultUri)."""
        for key, doc in self._items.items():
            if doc["type"] == VAULT and doc["name"].lower() == name.lower():
                return key, doc["properties"]["vaultUri"]
        raise ArmError(404, "NotFound", f"fake ARM: no vault {name!r} (the real one's host "
                       f"would not resolve)")

    def _secret_list(self, request: Request, vault: str):
        key, uri = self._vault(vault)
        return self._page(request, [
            {k: v for k, v in s["versions"][-1].items() if k != "value"}
            | {"id": f"{uri}secrets/{s['name']}"} for s in self._secrets.get(key, {}).values()])

    def _secret(self, request: Request, vault: str, name: str, version: str | None = None):
        key, uri = self._vault(vault)
        secrets = self._secrets.setdefault(key, {})
        held = secrets.get(name.lower())
        if version and request.method != "GET":
            raise ArmError(501, "NotImplemented", f"fake ARM: no route for {request.method} "
                           f"{request.path}")
        if request.method == "PUT":
            body = request.json()
            if not SECRET_NAME.fullmatch(name) or not isinstance(body.get("value"), str):
                raise ArmError(400, "BadParameter", f"Invalid secret name {name!r} or value.")
            if len(body["value"].encode()) > 25 * 1024:
                raise ArmError(400, "BadParameter", "Secret value exceeds 25 KB.")
            if name.lower() in self._deleted_secrets.get(key, {}):
                raise ArmError(409, "Conflict", f"Secret {name} is currently in a deleted but "
                               f"recoverable state, and its name cannot be reused; in this "
                               f"state, the secret can only be recovered or purged.",
                               innererror={"code": "ObjectIsDeletedButRecoverable"})
            held = secrets.setdefault(name.lower(), {"name": name, "versions": []})
            now = int(time.time())
            bundle = {"value": body["value"],
                      "id": f"{uri}secrets/{held['name']}/{uuid.uuid4().hex}",
                      "attributes": {**body.get("attributes", {}), "enabled": True,
                                     "created": now, "updated": now, "recoverableDays": 90,
                                     "recoveryLevel": "Recoverable+Purgeable"},
                      **{k: body[k] for k in ("tags", "contentType") if k in body}}
            held["versions"].append(bundle)
            return 200, bundle, {}
        found = held and [v for v in held["versions"]
                          if not version or v["id"].endswith("/" + version)][-1:]
        if not found:
            raise ArmError(404, "SecretNotFound", f"A secret with (name/id) {name}"
                           f"{'/' + version if version else ''} was not found in this key "
                           f"vault. If you recently deleted this secret you may be able to "
                           f"recover it using the correct recovery command.")
        if request.method == "GET":
            return 200, found[0], {}
        del secrets[name.lower()]
        now = int(time.time())
        held.update(deletedDate=now, scheduledPurgeDate=now + 90 * 86400)
        self._deleted_secrets.setdefault(key, {})[name.lower()] = held
        return 200, _deleted_bundle(uri, held), {}

    def _deleted_secret(self, request: Request, vault: str, name: str):
        key, uri = self._vault(vault)
        deleted = self._deleted_secrets.setdefault(key, {})
        held = deleted.get(name.lower())
        if held is None:
            raise ArmError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        if request.method == "GET":
            return 200, _deleted_bundle(uri, held), {}
        del deleted[name.lower()]
        if request.method == "DELETE":  # purge
            return 204, None, {}
        self._secrets.setdefault(key, {})[name.lower()] = {"name": held["name"],
                                                            "versions": held["versions"]}
        return 200, {k: v for k, v in held["versions"][-1].items() if k != "value"}, {}


def _time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _tagged(doc: dict, terms: dict[str, str]) -> bool:
    """Whether a resource has the tag (and value) of a ``tagName``/``tagValue`` filter (tag
    names are case-insensitive)."""
    if "tagname" not in terms:
        return True
    tags = {k.lower(): v for k, v in (doc.get("tags") or {}).items()}
    value = tags.get(terms["tagname"].lower())
    return value is not None and value == terms.get("tagvalue", value)


def _related(scope: str, other: str) -> bool:
    """Whether two scopes are the same or one holds the other."""
    return scope == other or scope.startswith(other + "/") or other.startswith(scope + "/")


def _instance_view(record: dict) -> dict:
    return {"statuses": [
        {"code": "ProvisioningState/succeeded", "level": "Info",
         "displayStatus": "Provisioning succeeded", "time": record["timeCreated"]},
        {"code": "PowerState/running", "level": "Info", "displayStatus": "VM running"}]}


def _deleted_bundle(uri: str, held: dict) -> dict:
    return {**{k: v for k, v in held["versions"][-1].items() if k != "value"},
            "recoveryId": f"{uri}deletedsecrets/{held['name']}",
            "deletedDate": held["deletedDate"], "scheduledPurgeDate": held["scheduledPurgeDate"]}

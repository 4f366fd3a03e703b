"""A fake of the Google Cloud REST APIs the GCP backend calls (a project fake, not an emulator).

No emulator exists for Compute Engine, IAM or Secret Manager (EMULATORS.md). :class:`FakeGce`
serves, in memory on one 127.0.0.1 port, only what the backend uses: Compute v1 global
``firewalls`` and ``instanceTemplates`` (insert, get, list, delete), regional (and zonal)
``instanceGroupManagers`` (the same plus ``resize``, ``listManagedInstances``,
``deleteInstances``), ``zones/{z}/instances`` (get, list, delete), ``operations`` (get, ``wait``);
IAM v1 service accounts (create, get, delete); the Resource Manager v1 project policy
(``:getIamPolicy``, ``:setIamPolicy``); Secret Manager v1 secrets (create, get, list, delete,
``:addVersion``, ``versions/{v}:access``).

Kept from the real services because a backend depends on it: 409 ``alreadyExists`` and 404
``notFound``; a MIG keeps ``targetSize`` RUNNING instances named ``{baseInstanceName}-xxxx`` (in
its ``distributionPolicy`` zones, else ``{region}-a``) and replaces a deleted or preempted one
under a new name; ``deleteInstances`` lowers ``targetSize``; a template in use cannot be deleted
(400 ``resourceInUseByAnotherResource``); a MIG from a missing template answers an operation
that failed; a stale policy ``etag`` is refused (409 ABORTED); a deleted service account stays in
the policy as ``deleted:serviceAccount:...``. Bodies are stored as given (in Compute v1 only a
template's ``properties`` and instances have labels; firewalls and MIGs have none).

Left out: authentication, paging, project numbers, secret CRC32C, changes over time, most
validation (only names, account ids, secret ids, base64 payloads). ``filter`` takes only ANDed
``f = v``, ``f != v``, ``f eq regex``, ``f ne regex`` (else 400). An unknown path answers 501, so
a missing route is never mistaken for a missing resource. Operations end at once (``DONE``);
with ``pending_operations=True`` the call answers ``RUNNING`` and the first poll ``DONE``.
Test hooks: :attr:`~FakeGce.requests`, :meth:`~FakeGce.resources`, :meth:`~FakeGce.preempt`,
:meth:`~FakeGce.fail`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import random
import re
import secrets
import string
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

LINK = "https://www.googleapis.com/compute/v1/"
"""The prefix of every ``selfLink``/``targetLink``, as the real API writes them."""
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
ACCOUNT_ID = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
SECRET_ID = re.compile(r"[\w-]{1,255}")
SCOPE = r"projects/[^/]+/(?:global|regions/[^/]+|zones/[^/]+)"
COMPUTE = "firewalls|instanceTemplates|instanceGroupManagers|instances"
MIG_VERBS = "resize|listManagedInstances|deleteInstances"
FILTER_TERM = re.compile(r'([\w.-]+)\s*(!=|=|\beq\b|\bne\b)\s*("[^"]*"|[^\s()]+)')
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED",
          503: "UNAVAILABLE"}
DONE_ONLY = ("endTime", "error", "httpErrorStatusCode", "httpErrorMessage")


class ApiError(Exception):
    """An error answer, shaped as Google APIs send it (``error.errors[].reason`` for Compute,
    ``error.status`` for the newer APIs; both are always present)."""

    def __init__(self, code: int, reason: str, message: str, status: str = ""):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.status = status or STATUS.get(code, "UNKNOWN")

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status,
                          "errors": [{"reason": self.reason, "message": self.message,
                                      "domain": "global"}]}}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _id() -> str:
    return str(random.randrange(10**18, 10**19))


def _last(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[-1]


def _lookup(doc, dotted: str):
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def matches(doc: dict, expression: str) -> bool:
    """Whether ``doc`` passes a list ``filter`` made of ANDed ``=``/``!=``/``eq``/``ne`` terms
    (``eq``/``ne`` take a regular expression that must match the whole value, as in GCE)."""
    if not expression:
        return True
    if re.sub(r"\bAND\b|[\s()]", "", FILTER_TERM.sub("", expression)):
        raise ApiError(400, "invalid", f"fake GCE: unsupported filter {expression!r}")
    for field, op, value in FILTER_TERM.findall(expression):
        have, value = _lookup(doc, field), value.strip('"')
        have = "" if have is None else str(have).lower() if isinstance(have, bool) else str(have)
        hit = re.fullmatch(value, have) is not None if op in ("eq", "ne") else have == value
        if hit == (op in ("!=", "ne")):
            return False
    return True


class FakeGce:
    """The fake: ``with FakeGce() as gce:`` serves on ``gce.url`` until the block ends."""

    def __init__(self, pending_operations: bool = False):
        self.pending_operations = pending_operations
        self.url = ""
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path without query, percent-decoded)."""
        self._items: dict[str, dict[str, dict]] = {}  # collection path -> name -> resource
        self._members: dict[str, list[str]] = {}  # MIG path -> paths of its instances
        self._operations: dict[str, dict] = {}  # operation path -> finished operation
        self._policies: dict[str, dict] = {}  # project -> IAM policy
        self._versions: dict[str, list[dict]] = {}  # secret path -> versions with payload
        self._faults: list[tuple[str, str, ApiError]] = []
        self._addresses = itertools.count(2)
        self._lock = threading.RLock()
        c, v1, mig = "/compute/v1/", r"/v1/projects/(?P<project>[^/:]+)", "instanceGroupManagers"
        regional = rf"(?:regions|zones)/[^/]+/{mig}"
        insertable = rf"projects/[^/]+/(?:global/(?:firewalls|instanceTemplates)|{regional})"
        self._routes = [(verbs, re.compile(pattern), handler) for verbs, pattern, handler in (
            ("POST", rf"{c}(?P<coll>{insertable})", self._insert),
            ("GET", rf"{c}(?P<coll>{SCOPE}/(?:{COMPUTE}))", self._list),
            ("GET|DELETE", rf"{c}(?P<coll>{SCOPE}/(?:{COMPUTE}))/(?P<name>[^/]+)", self._item),
            ("POST", rf"{c}(?P<coll>{SCOPE}/{mig})/(?P<name>[^/]+)/(?P<verb>{MIG_VERBS})",
             self._mig_verb),
            ("GET|POST", rf"{c}(?P<scope>{SCOPE})/operations/(?P<name>[^/]+)(?P<wait>/wait)?",
             self._operation_get),
            ("POST", rf"{v1}/serviceAccounts", self._account_create),
            ("GET|DELETE", rf"{v1}/serviceAccounts/(?P<email>[^/:]+)", self._account),
            ("POST", rf"{v1}:(?P<verb>getIamPolicy|setIamPolicy)", self._policy),
            ("GET|POST", rf"{v1}/secrets", self._secrets),
            ("GET|DELETE", rf"{v1}/secrets/(?P<secret>[^/:]+)", self._secret),
            ("POST", rf"{v1}/secrets/(?P<secret>[^/:]+):addVersion", self._secret_add),
            ("GET", rf"{v1}/secrets/(?P<secret>[^/:]+)/versions/(?P<version>[^/:]+):access",
             self._secret_access))]

    # --- server and test hooks ------------------------------------------------------------

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, doc = fake.handle(self.command, self.path, raw)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = serve

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gce")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def handle(self, method: str, target: str, raw: bytes) -> tuple[int, dict]:
        """Answer one request: (HTTP status, JSON body)."""
        parts = urlsplit(target)
        path, query = unquote(parts.path), {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append((method, path))
            try:
                for fault in self._faults:
                    if fault[0] == method and re.search(fault[1], path):
                        self._faults.remove(fault)
                        raise fault[2]
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    raise ApiError(400, "parseError", "This API does not support parsing "
                                   "form-encoded input.") from None
                for verbs, pattern, handler in self._routes:
                    if method in verbs.split("|") and (match := pattern.fullmatch(path)):
                        return 200, handler(method, query, body, **match.groupdict())
                raise ApiError(501, "notImplemented", f"fake GCE: no route for {method} {path}")
            except ApiError as error:
                return error.code, error.body()

    def resources(self) -> dict[str, list[str]]:
        """Everything held, by kind (``{"firewalls": ["projects/p/global/firewalls/x"]}``, also
        ``instances``, ``serviceAccounts``, ``secrets``, and ``bindings`` as ``"projects/p ROLE
        MEMBER"``). Empty kinds are left out, so "nothing left" is ``resources() == {}``."""
        held: dict[str, list[str]] = {}
        with self._lock:
            for coll, items in self._items.items():
                for name in items:
                    held.setdefault(coll.rsplit("/", 1)[1], []).append(f"{coll}/{name}")
            for project, policy in self._policies.items():
                for binding in policy.get("bindings", []):
                    for member in binding.get("members", []):
                        held.setdefault("bindings", []).append(
                            f"projects/{project} {binding['role']} {member}")
        return held

    def preempt(self, name: str) -> str:
        """What a spot preemption does: managed instance ``name`` goes and its MIG creates a
        replacement (target size unchanged). Returns the replacement's name."""
        with self._lock:
            path = next((p for paths in self._members.values() for p in paths
                         if _last(p) == name), None)
            if path is None:
                raise KeyError(f"no managed instance {name!r}")
            return _last(self._remove_member(path))

    def fail(self, method: str, pattern: str, code: int, reason: str,
             message: str = "injected by the test", status: str = "") -> None:
        """Make the next ``method`` request whose path matches regex ``pattern`` answer this
        error (once; call again to fail more), e.g. 403 ``quotaExceeded`` or 503."""
        with self._lock:
            self._faults.append((method, pattern, ApiError(code, reason, message, status)))

    # --- Compute Engine -------------------------------------------------------------------

    def _find(self, coll: str, name: str) -> dict:
        item = self._items.get(coll, {}).get(name)
        if item is None:
            raise ApiError(404, "notFound", f"The resource '{coll}/{name}' was not found")
        return item

    def _operation(self, coll: str, op_type: str, target: str, error: ApiError | None = None):
        """Record a finished operation in ``coll``'s scope and answer it (``RUNNING`` with
        ``pending_operations``); a failed one carries ``error`` as GCE reports it."""
        scope = coll.rsplit("/", 1)[0]
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}"
        op = {"kind": "compute#operation", "id": _id(), "name": name, "operationType": op_type,
              "targetLink": LINK + target, "targetId": _id(), "status": "DONE", "progress": 100,
              "user": "fake@example.com", "insertTime": _now(), "startTime": _now(),
              "endTime": _now(), "selfLink": f"{LINK}{scope}/operations/{name}"}
        where = scope.split("/")[2]
        if where in ("regions", "zones"):
            op[where[:-1]] = LINK + scope
        if error:
            op.update(error={"errors": [{"code": error.status, "message": error.message}]},
                      httpErrorStatusCode=error.code,
                      httpErrorMessage=HTTPStatus(error.code).phrase.upper())
        self._operations[f"{scope}/operations/{name}"] = op
        if not self.pending_operations:
            return op
        return {k: v for k, v in op.items() if k not in DONE_ONLY} | {"status": "RUNNING",
                                                                          "progress": 0}

    def _insert(self, method, query, body, coll):
        name, kind = body.get("name", ""), coll.rsplit("/", 1)[1]
        if not NAME.fullmatch(name):
            raise ApiError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'. "
                           f"Must be a match of regex '{NAME.pattern}'")
        if name in self._items.get(coll, {}):
            raise ApiError(409, "alreadyExists", f"The resource '{coll}/{name}' already exists")
        path = f"{coll}/{name}"
        doc = {**body, "kind": f"compute#{kind[:-1]}", "id": _id(), "creationTimestamp": _now(),
               "selfLink": LINK + path}
        if kind == "instanceGroupManagers":
            link = body.get("instanceTemplate") or (body.get("versions") or [{}])[0].get(
                "instanceTemplate", "")
            template = f"projects/{coll.split('/')[1]}/global/instanceTemplates/{_last(link)}"
            if _last(link) not in self._items.get(template.rsplit("/", 1)[0], {}):
                missing = ApiError(404, "notFound", f"The resource '{template}' was not found",
                                   status="RESOURCE_NOT_FOUND")
                return self._operation(coll, "insert", path, missing)
            scope = coll.rsplit("/", 1)[0]
            doc.update(instanceTemplate=LINK + template, targetSize=body.get("targetSize", 0),
                       instanceGroup=f"{LINK}{scope}/instanceGroups/{name}",
                       status={"isStable": True}, fingerprint=secrets.token_urlsafe(8))
            doc[scope.split("/")[2][:-1]] = LINK + scope
        self._items.setdefault(coll, {})[name] = doc
        if kind == "instanceGroupManagers":
            self._fill(path)
        return self._operation(coll, "insert", path)

    def _list(self, method, query, body, coll):
        kind = coll.rsplit("/", 1)[1]
        items = [doc for doc in self._items.get(coll, {}).values()
                 if matches(doc, query.get("filter", ""))]
        return {"kind": f"compute#{kind[:-1]}List", "id": coll, "items": items,
                "selfLink": LINK + coll}

    def _item(self, method, query, body, coll, name):
        doc, path, kind = self._find(coll, name), f"{coll}/{name}", coll.rsplit("/", 1)[1]
        if method == "GET":
            return doc
        if kind == "instanceTemplates":
            users = [f"{mig_coll}/{mig}" for mig_coll, migs in self._items.items()
                     if mig_coll.endswith("/instanceGroupManagers")
                     for mig, mig_doc in migs.items() if mig_doc["instanceTemplate"] == LINK + path]
            if users:
                raise ApiError(400, "resourceInUseByAnotherResource", f"The instance_template "
                               f"resource '{path}' is already being used by '{users[0]}'")
        if kind == "instances" and self._remove_member(path):
            return self._operation(coll, "delete", path)
        del self._items[coll][name]
        for member in self._members.pop(path, []):
            self._drop(member)
        return self._operation(coll, "delete", path)

    def _mig_verb(self, method, query, body, coll, name, verb):
        mig, path = self._find(coll, name), f"{coll}/{name}"
        members = self._members.setdefault(path, [])
        if verb == "listManagedInstances":
            return {"managedInstances": [self._managed(mig, member) for member in members]}
        if verb == "resize":
            size = int(query.get("size", -1))
            if size < 0:
                raise ApiError(400, "invalid", f"Invalid value for field 'size': '{size}'. "
                               "Must be greater than or equal to 0")
            mig["targetSize"] = size
        else:
            by_name = {_last(member): member for member in members}
            names = [_last(link) for link in body.get("instances", [])]
            unknown = [n for n in names if n not in by_name]
            if unknown and not body.get("skipInstancesOnValidationError"):
                raise ApiError(400, "invalid", f"The instance '{unknown[0]}' is not a member of "
                               f"the managed instance group '{path}'")
            for gone in {n for n in names if n in by_name}:
                members.remove(by_name[gone])
                self._drop(by_name[gone])
                mig["targetSize"] -= 1
        self._fill(path)
        kind = "regionInstanceGroupManagers" if "/regions/" in coll else "instanceGroupManagers"
        return self._operation(coll, f"compute.{kind}.{verb}", path)

    def _operation_get(self, method, query, body, scope, name, wait):
        if (method == "POST") != bool(wait):
            raise ApiError(501, "notImplemented", f"fake GCE: no route for {method} operation")
        op = self._operations.get(f"{scope}/operations/{name}")
        if op is None:
            raise ApiError(404, "notFound", f"The resource '{scope}/operations/{name}' was "
                           "not found")
        return op

    # --- what the MIG does ------------------------------------------------------------------

    def _fill(self, mig_path: str) -> None:
        """Create or remove instances until the MIG at ``mig_path`` has ``targetSize``."""
        coll, name = mig_path.rsplit("/", 1)
        mig = self._items[coll][name]
        members = self._members.setdefault(mig_path, [])
        while len(members) > mig["targetSize"]:
            self._drop(members.pop())
        while len(members) < mig["targetSize"]:
            members.append(self._new_instance(coll, mig, len(members)))
        mig["currentActions"] = {"none": len(members)}

    def _new_instance(self, mig_coll: str, mig: dict, index: int) -> str:
        _, project, scope, where, _ = mig_coll.split("/")
        zones = [_last(z.get("zone", "")) for z in
                 mig.get("distributionPolicy", {}).get("zones", [])] or [f"{where}-a"]
        zone = where if scope == "zones" else zones[index % len(zones)]
        coll = f"projects/{project}/zones/{zone}/instances"
        taken = self._items.setdefault(coll, {})
        name = ""
        while not name or name in taken:
            name = (f"{mig.get('baseInstanceName') or mig['name']}-"
                    + "".join(random.choices(string.ascii_lowercase + string.digits, k=4)))
        template_coll, template = mig["instanceTemplate"][len(LINK):].rsplit("/", 1)
        props = self._items.get(template_coll, {}).get(template, {}).get("properties", {})
        n = next(self._addresses)
        nic = dict((props.get("networkInterfaces") or [{}])[0])
        nic["networkIP"] = f"10.128.{n // 250}.{n % 250 + 1}"
        nic["accessConfigs"] = [{**config, "natIP": f"203.0.113.{n % 250 + 1}"}
                                for config in nic.get("accessConfigs", [])]
        taken[name] = {
            **{key: props[key] for key in ("labels", "metadata", "scheduling", "tags",
                                           "guestAccelerators", "serviceAccounts", "disks")
               if key in props},
            "kind": "compute#instance", "id": _id(), "name": name, "status": "RUNNING",
            "creationTimestamp": _now(), "zone": f"{LINK}projects/{project}/zones/{zone}",
            "machineType": f"{LINK}projects/{project}/zones/{zone}/machineTypes/"
                           f"{_last(props.get('machineType', 'e2-medium'))}",
            "networkInterfaces": [nic], "selfLink": f"{LINK}{coll}/{name}"}
        return f"{coll}/{name}"

    def _managed(self, mig: dict, member: str) -> dict:
        coll, name = member.rsplit("/", 1)
        doc = self._items[coll][name]
        return {"name": name, "id": doc["id"], "instance": doc["selfLink"],
                "instanceStatus": doc["status"], "currentAction": "NONE",
                "targetStatus": "RUNNING", "version": {"instanceTemplate": mig["instanceTemplate"]}}

    def _drop(self, instance_path: str) -> None:
        coll, name = instance_path.rsplit("/", 1)
        self._items.get(coll, {}).pop(name, None)

    def _remove_member(self, instance_path: str) -> str | None:
        """A MIG's instance is gone (deleted, preempted): the MIG makes a new one, whose path
        this returns (None: the instance is in no MIG)."""
        for mig_path, members in self._members.items():
            if instance_path in members:
                members.remove(instance_path)
                self._drop(instance_path)
                self._fill(mig_path)
                return members[-1]
        return None

    # --- IAM and Resource Manager ------------------------------------------------------------

    def _account_create(self, method, query, body, project):
        account_id = body.get("accountId", "")
        if not ACCOUNT_ID.fullmatch(account_id):
            raise ApiError(400, "invalid", f"Invalid account ID '{account_id}': it must match "
                           f"{ACCOUNT_ID.pattern} (6 to 30 characters)")
        accounts = self._items.setdefault(f"projects/{project}/serviceAccounts", {})
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in accounts:
            raise ApiError(409, "alreadyExists", f"Service account {account_id} already exists "
                           f"within project projects/{project}.")
        unique_id = _id() + "123"
        account = body.get("serviceAccount", {})
        accounts[email] = {**account, "name": f"projects/{project}/serviceAccounts/{email}",
                           "projectId": project, "uniqueId": unique_id, "email": email,
                           "etag": "MDEwMjE5MjA=", "oauth2ClientId": unique_id}
        return accounts[email]

    def _account(self, method, query, body, project, email):
        if project == "-":
            project = email.partition("@")[2].split(".")[0]
        accounts = self._items.get(f"projects/{project}/serviceAccounts", {})
        if email not in accounts:
            raise ApiError(404, "notFound", f"Unknown service account: "
                           f"projects/{project}/serviceAccounts/{email}")
        if method == "GET":
            return accounts[email]
        gone, member = accounts.pop(email), f"serviceAccount:{email}"
        for policy in self._policies.values():
            for binding in policy.get("bindings", []):
                binding["members"] = [f"deleted:{m}?uid={gone['uniqueId']}" if m == member else m
                                      for m in binding.get("members", [])]
        return {}

    def _policy(self, method, query, body, project, verb):
        policy = self._policies.setdefault(project, {"version": 1, "etag": "BwAAAAAAAAA="})
        if verb == "setIamPolicy":
            new = body.get("policy", {})
            if new.get("etag") and new["etag"] != policy["etag"]:
                raise ApiError(409, "aborted", "There were concurrent policy changes. Please "
                               "retry the whole read-modify-write with exponential backoff.",
                               status="ABORTED")
            bindings = [b for b in new.get("bindings", []) if b.get("members")]
            policy = {"version": new.get("version", 1),
                      "etag": base64.b64encode(secrets.token_bytes(8)).decode()}
            self._policies[project] = policy | ({"bindings": bindings} if bindings else {})
        return self._policies[project]

    # --- Secret Manager ---------------------------------------------------------------------

    def _find_secret(self, project: str, secret: str) -> tuple[str, dict]:
        path = f"projects/{project}/secrets/{secret}"
        doc = self._items.get(f"projects/{project}/secrets", {}).get(secret)
        if doc is None:
            raise ApiError(404, "notFound", f"Secret [{path}] not found or has no versions.")
        return path, doc

    def _secrets(self, method, query, body, project):
        coll = f"projects/{project}/secrets"
        items = self._items.setdefault(coll, {})
        if method == "GET":
            found = [doc for doc in items.values() if matches(doc, query.get("filter", ""))]
            return {"secrets": found, "totalSize": len(found)} if found else {}
        secret_id = query.get("secretId", "")
        if not SECRET_ID.fullmatch(secret_id):
            raise ApiError(400, "invalid", f"Invalid secret id '{secret_id}'.")
        if "replication" not in body:
            raise ApiError(400, "invalid", "Secret.replication is required.")
        if secret_id in items:
            raise ApiError(409, "alreadyExists", f"Secret [{coll}/{secret_id}] already exists.")
        items[secret_id] = {**body, "name": f"{coll}/{secret_id}", "createTime": _now(),
                            "etag": '"1"'}
        self._versions[f"{coll}/{secret_id}"] = []
        return items[secret_id]

    def _secret(self, method, query, body, project, secret):
        path, doc = self._find_secret(project, secret)
        if method == "GET":
            return doc
        del self._items[f"projects/{project}/secrets"][secret]
        del self._versions[path]
        return {}

    def _secret_add(self, method, query, body, project, secret):
        path, _ = self._find_secret(project, secret)
        data = body.get("payload", {}).get("data", "")
        try:
            size = len(base64.b64decode(data, validate=True))
        except binascii.Error:
            raise ApiError(400, "invalid", "Invalid value at 'payload.data': not base64") from None
        if size > 65536:
            raise ApiError(400, "invalid", "Secret payload data length must be at most 65536.")
        versions = self._versions[path]
        versions.append({"name": f"{path}/versions/{len(versions) + 1}", "createTime": _now(),
                         "state": "ENABLED", "payload": {"data": data}})
        return {k: v for k, v in versions[-1].items() if k != "payload"}

    def _secret_access(self, method, query, body, project, secret, version):
        path, _ = self._find_secret(project, secret)
        versions = self._versions[path]
        wanted = versions[-1:] if version == "latest" else [
            v for v in versions if _last(v["name"]) == version]
        if not wanted:
            raise ApiError(404, "notFound", f"Secret Version [{path}/versions/{version}] not "
                           "found.")
        return {"name": wanted[0]["name"], "payload": wanted[0]["payload"]}

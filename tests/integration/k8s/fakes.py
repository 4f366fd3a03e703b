"""A fake of the API server's parts that kmock lacks, in front of kmock (a project fake).

kmock 0.8 keeps Kubernetes objects over real HTTP but ignores label and field selectors, has
no pod proxy, no pod logs without a canned reaction, no delete-collection, and stores objects
without uid, namespace or creation time (EMULATORS.md). :class:`FakeApiServer` listens on
127.0.0.1, checks the kubeconfig's bearer token, and forwards every request to kmock except:

- list requests: forwarded without selectors and paging, then filtered here by
  ``labelSelector`` (``k=v``, ``k!=v``, ``k``, ``!k``) and ``fieldSelector`` (``a.b=v``);
- creates: ``metadata`` gets namespace, uid, creationTimestamp, resourceVersion first;
- ``DELETE`` of a collection: each selected object is deleted;
- ``pods/NAME[:PORT]/proxy/...``: forwarded, body streamed both ways, to the port the fake
  kubelet mapped for that pod (503 when the pod is not running, as the API server answers);
- ``pods/NAME/log``: the log file the fake kubelet writes for a container (``container``,
  ``tailLines``);
- ``/version``: a configurable server version (:attr:`FakeApiServer.version`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/:]+)(?::(\d+))?/proxy(/.*)?$")
LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
OBJECT = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?$")
HOP_HEADERS = {"host", "authorization", "content-length", "transfer-encoding", "connection"}


def status(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes ``Status`` answer."""
    return web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                              "code": code, "reason": reason, "message": message}, status=code)


def _get_path(doc: dict, dotted: str):
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def selected(item: dict, labels: str, fields: str) -> bool:
    """Whether an object matches a label selector and a field selector (equality only)."""
    have = (item.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in labels.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if have.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if have.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!") == (term.lstrip("!") in have):
            return False
    for term in filter(None, (t.strip() for t in fields.split(","))):
        key, _, value = term.partition("=")
        if str(_get_path(item, key) or "") != value.lstrip("="):
            return False
    return True


class FakeApiServer:
    """The fake front of kmock (see the module docstring); an async context manager."""

    def __init__(self, upstream: str, token: str):
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.ports: dict[tuple[str, str, int], int] = {}
        """(namespace, pod, container port) -> local port, filled by the fake kubelet."""
        self.logs: dict[tuple[str, str, str], Path] = {}
        """(namespace, pod, container) -> its log, filled by the fake kubelet."""
        self.version = {"major": "1", "minor": "31"}
        """What ``/version`` answers (``None``: a 404, as some proxies do)."""
        self.proxied: list[tuple[str, str, str]] = []
        """(method, pod, path) of every proxied request, for assertions."""
        self.on_request: Callable[[web.Request], web.Response | None] | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeApiServer:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return status(401, "Unauthorized", "Unauthorized")
        if self.on_request is not None and (canned := self.on_request(request)) is not None:
            return canned
        if found := PROXY.match(request.path):
            return await self._proxy(request, *found.groups())
        if request.path == "/version":
            if self.version is None:
                return status(404, "NotFound", "the server could not find the version")
            return web.json_response({**self.version, "gitVersion": "v1.x-fake"})
        if found := LOG.match(request.path):
            return await self._log(request, *found.groups())
        found = OBJECT.match(request.path)
        if found and request.method == "GET" and found.group(3) is None:
            return await self._list(request)
        if found and request.method == "POST" and found.group(3) is None:
            return await self._create(request, found.group(1))
        if found and request.method == "DELETE" and found.group(3) is None:
            return await self._delete_collection(request)
        return await self._forward(request, request.path, await request.read())

    async def _forward(self, request: web.Request, path: str, body: bytes,
                       query: dict | None = None) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self.http.request(request.method, self.upstream + path, data=body or None,
                                     params=request.query if query is None else query,
                                     headers=headers) as reply:
            payload = await reply.read()
            return web.Response(body=payload, status=reply.status,
                                content_type=reply.content_type)

    async def _upstream_json(self, path: str, query: dict | None = None) -> tuple[int, dict]:
        async with self.http.get(self.upstream + path, params=query or {}) as reply:
            return reply.status, await reply.json(content_type=None)

    async def _list(self, request: web.Request) -> web.Response:
        code, doc = await self._upstream_json(request.path)
        if code == 404 and "Resource" in json.dumps(doc):
            doc, code = {"kind": "List", "metadata": {}, "items": []}, 200  # none made yet
        if code != 200:
            return web.json_response(doc, status=code)
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        doc["items"] = [i for i in doc.get("items", []) if selected(i, labels, fields)]
        doc.setdefault("metadata", {}).pop("continue", None)
        return web.json_response(doc)

    async def _create(self, request: web.Request, namespace: str | None) -> web.Response:
        body = await request.json()
        meta = body.setdefault("metadata", {})
        if namespace:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(time.time_ns()),
                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return await self._forward(request, request.path, json.dumps(body).encode())

    async def _delete_collection(self, request: web.Request) -> web.Response:
        code, doc = await self._upstream_json(request.path)
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        for item in doc.get("items", []) if code == 200 else []:
            if selected(item, labels, fields):
                await self.http.delete(f"{self.upstream}{request.path}/"
                                       f"{item['metadata']['name']}")
        return web.json_response({"kind": "Status", "status": "Success"})

    async def _pod(self, namespace: str, name: str) -> dict | None:
        code, doc = await self._upstream_json(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return doc if code == 200 else None

    async def _proxy(self, request: web.Request, namespace: str, name: str, port: str | None,
                     rest: str | None) -> web.StreamResponse:
        pod = await self._pod(namespace, name)
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        local = self.ports.get((namespace, name, int(port or 80)))
        if (pod.get("status") or {}).get("phase") != "Running" or local is None:
            return status(503, "ServiceUnavailable", f"pod {name} is not running")
        self.proxied.append((request.method, name, rest or "/"))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            async with self.http.request(request.method, f"http://127.0.0.1:{local}{rest or '/'}",
                                         params=request.query, headers=headers,
                                         data=request.content.iter_chunked(1 << 16)
                                         if request.body_exists else None) as reply:
                answer = web.StreamResponse(status=reply.status, headers={
                    k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS})
                await answer.prepare(request)
                async for chunk in reply.content.iter_chunked(1 << 16):
                    await answer.write(chunk)
                await answer.write_eof()
                return answer
        except aiohttp.ClientConnectionError as exc:
            return status(503, "ServiceUnavailable", f"error dialing pod {name}: {exc}")

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.Response:
        if await self._pod(namespace, name) is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        container = request.query.get("container") or "task"
        path = self.logs.get((namespace, name, container))
        if path is None or not path.exists():
            return status(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                          "waiting to start")
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        tail = int(request.query.get("tailLines") or len(lines) or 1)
        return web.Response(text="".join(lines[-tail:]))

"""The storage server: a task's claim as an object store, reached through the pod proxy.

``python -m tpi_k8s.server --root DIR --port 8080`` serves the files under ``DIR`` (the
claim at the task's sub-path) to :class:`tpi_k8s.storage.K8sStorage`, which reaches it
through the API server (``/api/v1/namespaces/NS/pods/POD:8080/proxy/...``), so the workdir
travels with the user's Kubernetes credentials and no port is published. Every request but
the health check carries the task's token (``X-Tpi-Token``, from ``$TPI_STORAGE_TOKEN``):
the pod network is shared by every workload of the cluster.

    GET  /v1/health            readiness (no token)
    GET  /v1/list?prefix=P     one JSON line per object under P, streamed
    GET  /v1/object?key=K      the object's bytes
    PUT  /v1/object?key=K      create or replace (written to a temporary file, then renamed)
    POST /v1/delete            {"keys": [...]}; missing keys are fine

Keys are checked as the core checks them (no ``..``, no absolute key), and no request may
leave the root through a symlink planted on the claim.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
from pathlib import Path

import anyio
from aiohttp import web

from tpi_core.errors import UnsafePathError
from tpi_core.storage import cut_name
from tpi_core.storage.local import LocalStorage, checked_key
from tpi_k8s.storage import CHUNK, MARK_HEADER, TOKEN_HEADER

_TMP_MARK = ".tpi-tmp-"
_ROOT = web.AppKey("root", Path)
_TOKEN = web.AppKey("token", str)


def build_app(root: Path, token: str) -> web.Application:
    """The server's application, serving ``root`` to requests that carry ``token``."""
    app = web.Application(middlewares=[_guard], client_max_size=0)
    app[_ROOT], app[_TOKEN] = Path(root).resolve(), token
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/v1/list", _list)
    app.router.add_get("/v1/object", _get)
    app.router.add_put("/v1/object", _put)
    app.router.add_post("/v1/delete", _delete)
    return app


def _failure(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers={MARK_HEADER: "1"})


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    if request.path != "/v1/health":
        sent = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), request.app[_TOKEN].encode()):
            return _failure(401, "unauthorized", "missing or wrong storage token")
    try:
        response = await handler(request)
    except UnsafePathError as exc:
        return _failure(400, "unsafe", str(exc))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return _failure(404, "not_found", request.query.get("key", ""))
    response.headers[MARK_HEADER] = "1"
    return response


def _inside(root: Path, key: str) -> Path:
    """The path of ``key`` under ``root``, refusing keys and symlinks that lead out."""
    path = root / checked_key(key)
    if not path.parent.resolve().is_relative_to(root) or path.is_symlink():
        raise UnsafePathError(f"storage key {key!r} leads out of the storage root")
    return path


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _list(request: web.Request) -> web.StreamResponse:
    root, prefix = request.app[_ROOT], request.query.get("prefix", "")
    top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    if top:
        _inside(root, top + "/x")
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           MARK_HEADER: "1"})
    await response.prepare(request)
    async for info in LocalStorage(root).list(prefix):
        line = {"key": info.key, "size": info.size, "mtime": info.mtime}
        await response.write(json.dumps(line).encode() + b"\n")
    await response.write_eof()
    return response


async def _get(request: web.Request) -> web.StreamResponse:
    path = _inside(request.app[_ROOT], request.query.get("key", ""))
    if not await anyio.Path(path).is_file():
        raise FileNotFoundError(path)
    return web.FileResponse(path, chunk_size=CHUNK)


async def _put(request: web.Request) -> web.Response:
    path = _inside(request.app[_ROOT], request.query.get("key", ""))
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    _inside(request.app[_ROOT], request.query["key"])  # again, now that the parents exist
    temp = path.with_name(f"{_TMP_MARK}{os.getpid()}-{id(request)}-{cut_name(path.name)}")
    try:
        handle = await anyio.open_file(temp, "wb")
        async with handle:
            async for chunk in request.content.iter_chunked(CHUNK):
                await handle.write(chunk)
        await anyio.to_thread.run_sync(os.replace, temp, path)
    finally:
        await anyio.Path(temp).unlink(missing_ok=True)
    return web.Response(status=204)


async def _delete(request: web.Request) -> web.Response:
    root = request.app[_ROOT]
    keys = (await request.json()).get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return _failure(400, "bad_request", "expected {\"keys\": [...]}")
    for key in keys:
        _inside(root, key)
    await LocalStorage(root).delete(keys)
    return web.Response(status=204)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tpi_k8s.server",
                                     description="Serve a tpi task's claim to the pod proxy.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    token = os.environ.get("TPI_STORAGE_TOKEN", "")
    if not token:
        print("tpi storage server: TPI_STORAGE_TOKEN is not set", file=sys.stderr)
        return 2
    args.root.mkdir(parents=True, exist_ok=True)
    web.run_app(build_app(args.root, token), host=args.host, port=args.port, print=None,
                access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

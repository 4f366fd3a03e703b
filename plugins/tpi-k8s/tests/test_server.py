"""The storage server on its own: token, health, listing stream, refusal to start."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from tpi_k8s.server import MARK_HEADER, TOKEN_HEADER, build_app, main


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server(tmp_path):
    runner = web.AppRunner(build_app(tmp_path / "root", "tok"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{runner.addresses[0][1]}") as http:
        yield http
    await runner.cleanup()


@pytest.mark.anyio
async def test_health_needs_no_token_everything_else_does(server):
    async with server.get("/v1/health") as reply:
        assert reply.status == 200
    async with server.get("/v1/list") as reply:
        assert reply.status == 401 and reply.headers[MARK_HEADER] == "1"
    async with server.get("/v1/list", headers={TOKEN_HEADER: "wrong"}) as reply:
        assert reply.status == 401


@pytest.mark.anyio
async def test_put_list_get_delete(server):
    auth = {TOKEN_HEADER: "tok"}
    for key in ("a/1.txt", "a/2.txt", "b.txt"):
        async with server.put("/v1/object", params={"key": key}, data=key.encode(),
                              headers=auth) as reply:
            assert reply.status == 204
    async with server.get("/v1/list", params={"prefix": "a/"}, headers=auth) as reply:
        lines = [json.loads(line) for line in (await reply.text()).splitlines()]
    assert sorted((d["key"], d["size"]) for d in lines) == [("a/1.txt", 7), ("a/2.txt", 7)]
    async with server.get("/v1/object", params={"key": "b.txt"}, headers=auth) as reply:
        assert await reply.read() == b"b.txt"
    async with server.post("/v1/delete", json={"keys": ["b.txt", "nope"]}, headers=auth) as reply:
        assert reply.status == 204
    async with server.get("/v1/object", params={"key": "b.txt"}, headers=auth) as reply:
        assert reply.status == 404 and (await reply.json())["error"] == "not_found"
    async with server.get("/v1/list", params={"prefix": "../"}, headers=auth) as reply:
        assert reply.status == 400


def test_the_server_refuses_to_start_without_a_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TPI_STORAGE_TOKEN", raising=False)
    assert main(["--root", str(tmp_path)]) == 2
    assert "TPI_STORAGE_TOKEN" in capsys.readouterr().err

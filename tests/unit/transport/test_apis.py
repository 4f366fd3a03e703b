"""ApiPools: a cloud API's request retried on the network's failures and on what the cloud
says is worth it, waiting what ``Retry-After`` asks."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tpi_core.errors import TransientError
from tpi_core.transport.apis import ApiPools, retry_after

pytestmark = pytest.mark.anyio


class _Server:
    def __init__(self, statuses):
        self.statuses, self.seen = list(statuses), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.seen.append(self.path)
                status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_503_and_429_are_tried_again_and_the_last_answer_is_returned():
    server = _Server([503, 429])
    apis = ApiPools()
    try:
        answer = await apis.exchange(server.url, "GET", "/x", {}, None, "read x")
        assert answer.status == 200 and answer.headers["retry-after"] == "0"
        assert len(server.seen) == 3
        server.statuses = [500] * 5
        last = await apis.exchange(server.url, "GET", "/y", {}, None, "read y", attempts=2)
        assert last.status == 500 and len(server.seen) == 5
        server.statuses = [403]
        refused = await apis.exchange(server.url, "GET", "/z", {}, None, "read z")
        assert refused.status == 403 and len(server.seen) == 6  # not busy: not tried again
    finally:
        await apis.aclose()
        server.server.shutdown()
        server.server.server_close()


async def test_a_network_failure_is_transient_and_names_what():
    apis = ApiPools()
    try:
        with pytest.raises(TransientError, match="read nothing"):
            await apis.exchange("http://127.0.0.1:9", "GET", "/", {}, None, "read nothing",
                                attempts=1)
    finally:
        await apis.aclose()


def test_retry_after_is_bounded_and_tolerant():
    assert retry_after({"retry-after": "3"}, 1) == 3.0
    assert retry_after({"retry-after": "3600"}, 1) == 60.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 2) == 2
    assert retry_after({}, 1.5) == 1.5

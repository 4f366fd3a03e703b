"""Fakes of a GCE machine's surroundings on 127.0.0.1, for the fetcher's and agent's tests.

:class:`FakeMetadata` is the metadata server: ``/computeMetadata/v1/`` paths, answered only
to a request with ``Metadata-Flavor: Google`` (403 without it, as the real one does), the
service account's token, the instance's name, zone and ``created-by``, and
``instance/preempted``, whose ``?wait_for_change=true`` blocks until the test flips it (or
``timeout_sec`` passes). :class:`FakeCompute` takes ``deleteInstances`` calls: it records
each request and answers a DONE operation (or the error a test sets).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PROJECT, PROJECT_NUMBER = "tpi-test-project", "123456789012"
REGION, ZONE = "europe-west1", "europe-west1-b"
GROUP, INSTANCE = "tpi-g", "tpi-g-x7k2"


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose handler calls ``self.answer``."""

    def __init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: a connection per request
            def do_GET(self):
                owner._handle(self, "GET")

            def do_POST(self):
                owner._handle(self, "POST")

            def do_PUT(self):
                owner._handle(self, "PUT")

            def log_message(self, *args):
                pass

        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def _handle(self, handler, method):
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append((method, handler.path, headers, body))
        status, text, extra = self.answer(method, handler.path, headers, body)
        data = text.encode()
        handler.send_response(status)
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, method, path, headers, body) -> tuple[int, str, dict[str, str]]:
        raise NotImplementedError

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeMetadata(_Server):
    """The metadata server; ``token`` is the access token it hands out (a new one per
    request: ``tokens`` counts them), ``expires_in`` its lifetime."""

    def __init__(self):
        self.token = "ya29.fake-token-" + os.urandom(12).hex()
        self.expires_in, self.tokens, self.waits = 3599, 0, 0
        self.values = {
            "instance/name": INSTANCE,
            "instance/zone": f"projects/{PROJECT_NUMBER}/zones/{ZONE}",
            "instance/attributes/created-by":
                f"projects/{PROJECT_NUMBER}/regions/{REGION}/instanceGroupManagers/{GROUP}",
            "instance/preempted": "FALSE",
            "project/project-id": PROJECT,
        }
        self._changed = threading.Condition()
        self._closing = False
        super().__init__()

    def set(self, path: str, value: str) -> None:
        """Change a value; a request waiting for its change gets it."""
        with self._changed:
            self.values[path] = value
            self._changed.notify_all()

    def access_token(self, n: int) -> str:
        return f"{self.token}-{n}"

    def answer(self, method, path, headers, body):
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google":
            return 403, "Missing required header: Metadata-Flavor", {}
        parts = urlsplit(path)
        key = parts.path.removeprefix("/computeMetadata/v1/")
        if method != "GET" or key == parts.path:
            return 404, "Not Found", flavor
        if key == "instance/service-accounts/default/token":
            self.tokens += 1
            return 200, json.dumps({"access_token": self.access_token(self.tokens),
                                    "expires_in": self.expires_in,
                                    "token_type": "Bearer"}), {
                **flavor, "Content-Type": "application/json"}
        query = parse_qs(parts.query)
        with self._changed:
            if key not in self.values:
                return 404, "Not Found", flavor
            if query.get("wait_for_change") == ["true"]:
                seen = query.get("last_etag", [_etag(self.values[key])])[0]
                end = time.monotonic() + min(float(query.get("timeout_sec", ["30"])[0]), 30)
                self.waits += 1
                while (_etag(self.values[key]) == seen and not self._closing
                       and time.monotonic() < end):
                    self._changed.wait(min(0.1, max(0.0, end - time.monotonic())))
            value = self.values[key]
        return 200, value, {**flavor, "ETag": _etag(value), "Content-Type": "text/plain"}

    def close(self):
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        super().close()


class FakeCompute(_Server):
    """Compute Engine's ``deleteInstances`` of a regional MIG: records each request
    (``requests``) and answers a DONE operation, or ``error`` = (status, message)."""

    def __init__(self):
        self.error: tuple[int, str] | None = None
        super().__init__()

    def answer(self, method, path, headers, body):
        if self.error:
            status, message = self.error
            return status, json.dumps({"error": {"code": status, "message": message, "errors": [
                {"message": message, "domain": "global", "reason": "notFound"}]}}), {
                "Content-Type": "application/json"}
        if method != "POST" or not path.endswith("/deleteInstances"):
            return 404, "Not Found", {}
        target = path.removesuffix("/deleteInstances").removeprefix("/compute/v1/")
        return 200, json.dumps({
            "kind": "compute#operation", "id": "1234567890", "name": "operation-fake-1",
            "operationType": "compute.instanceGroupManagers.deleteInstances",
            "targetLink": f"https://www.googleapis.com/compute/v1/{target}",
            "status": "DONE", "progress": 100, "region": REGION}), {
            "Content-Type": "application/json"}


def _etag(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()[:16]

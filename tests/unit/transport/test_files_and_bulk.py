"""File bodies (:mod:`tpi_core.transport.files`) and the threaded reader
(:mod:`tpi_core.transport.bulk`), against files and a blocking server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading

import pytest

from tpi_core.transport import bulk, files
from tpi_core.transport.exceptions import ConnectError

MiB = 1 << 20


@pytest.mark.anyio
async def test_a_file_that_grows_while_it_streams_is_sent_as_it_was(tmp_path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"0123456789")
    digest = hashlib.md5()
    chunks = [chunk async for chunk in files.file_chunks(path, 6, digest, None)]
    assert b"".join(chunks) == b"012345"
    assert digest.hexdigest() == hashlib.md5(b"012345").hexdigest()



def test_idle_threaded_connections_are_reused_until_they_are_old(monkeypatch) -> None:
    pool = bulk.BulkPool("http://127.0.0.1:9")  # nothing is ever sent here
    first = pool.take()
    pool.give(first)
    assert pool.take() is first  # fresh: reused
    pool.give(first)
    monkeypatch.setattr(bulk, "KEEPALIVE", 0.0)
    assert pool.take() is not first  # too old: a new one
    pool.close()


def test_write_at_finishes_short_writes_and_works_without_pwritev(tmp_path, monkeypatch):
    pieces = [os.urandom(n) for n in (10, 0, 4096, 7)]
    real = os.pwritev

    def short(fd, buffers, offset):  # writes only part of what it is given
        return real(fd, [bytes(b"".join(buffers)[:13])], offset)

    for patch in ({"pwritev": short}, {"_PWRITEV": False}):
        path = tmp_path / "f"
        path.write_bytes(b"x" * 5)
        if "pwritev" in patch:
            monkeypatch.setattr(files.os, "pwritev", patch["pwritev"])
        else:
            monkeypatch.setattr(files, "_PWRITEV", False)
        fd = os.open(path, os.O_WRONLY)
        try:
            files.write_at(fd, pieces, 5)
        finally:
            os.close(fd)
        assert path.read_bytes() == b"x" * 5 + b"".join(pieces)
        monkeypatch.undo()


def test_a_whole_body_is_taken_as_the_answer_to_bytes_0_only(tmp_path) -> None:
    """A server that ignores Range answers 200 with the whole object: that is what a listed
    object's ``bytes=0-`` asks for, but not the rest after a first part."""
    body = os.urandom(3 * MiB)

    class Whole(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.md5(body).hexdigest()}"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pool = bulk.BulkPool(f"http://127.0.0.1:{server.server_address[1]}")
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        digest, stop = hashlib.md5(), threading.Event()
        written, headers = bulk.fetch_into(pool, "/b/k", {"Range": "bytes=0-"}, fd, 0,
                                            digest, None, stop, expect=(200, 206))
        assert written == len(body) and headers["etag"].strip('"') == digest.hexdigest()
        failed = bulk.fetch_into(pool, "/b/k", {"Range": f"bytes={MiB}-"}, fd, MiB,
                                  hashlib.md5(), None, stop, expect=(206,))
        assert isinstance(failed, bulk.Failed) and failed.status == 200
    finally:
        os.close(fd)
        pool.close()
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == body


def test_a_refused_connection_is_a_transport_error(tmp_path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    pool = bulk.BulkPool(f"http://127.0.0.1:{port}")
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(ConnectError, match="ConnectionRefusedError"):
            bulk.fetch_into(pool, "/b/k", {}, fd, 0, None, None, threading.Event())
    finally:
        os.close(fd)
        pool.close()

"""The pool (:mod:`tpi_core.transport.pool`) on the real network seam, against servers on
127.0.0.1 scripted byte for byte.

Each test's server counts the TCP connections it accepts, which tells whether the pool
reused a connection, and records every request it read (request line, headers, body).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from tpi_core.transport.exceptions import BodyMismatch, ConnectionLost, ProtocolError, Timeout
from tpi_core.transport.pool import Pool, Stream

pytestmark = pytest.mark.anyio
MiB = 1 << 20
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n",
           b"6\r\n world\r\n", b"0\r\nX-Trailer: t\r\n\r\n")


@dataclass
class Request:
    line: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class Server:
    handler: Callable[[Peer], Awaitable[None]]
    url: str = ""
    accepts: int = 0
    eofs: int = 0
    closed: int = 0
    requests: list[Request] = field(default_factory=list)
    tasks: set[asyncio.Task] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self.handler(Peer(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            writer.close()
            self.closed += 1


@dataclass
class Peer:
    server: Server
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> Request | None:
        """The next request on this connection; None once the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.server.eofs += 1
            return None
        line, *lines = head.decode("latin-1").strip().split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, v in (x.split(":", 1) for x in lines)]
        body = await self.reader.readexactly(int(dict(headers).get("content-length", 0)))
        self.server.requests.append(Request(line, headers, body))
        return self.server.requests[-1]

    async def send(self, *parts: bytes) -> None:
        """Write the parts one after the other, so the client gets them in separate reads."""
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()
            if len(parts) > 1:
                await asyncio.sleep(0.01)


def ok(body: bytes = b"", head: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head, body)


def replying(*answers: bytes | tuple[bytes, ...], then_close: bool = False):
    """A handler answering requests, on any connection, in turn (the last answer repeats)."""
    queue = list(answers)

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            await peer.send(*(answer if isinstance(answer, tuple) else (answer,)))
            if then_close:
                return
    return handler


async def hang(peer: Peer) -> None:
    await peer.request()
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def setup(handler, *, limit: int = 4, **options) -> AsyncIterator[tuple[Server, Pool]]:
    """A server running ``handler`` per connection and a Pool to it; both closed after."""
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.url = "http://127.0.0.1:%d" % listener.sockets[0].getsockname()[1]
    pool = Pool(server.url, limit=limit, **options)
    try:
        yield server, pool
    finally:
        await pool.aclose()
        listener.close()
        await asyncio.sleep(0.01)  # lets the server see the client's EOFs
        for task in server.tasks:
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()
        await asyncio.sleep(0)  # transports close their sockets on the next loop turn


async def get(pool: Pool, method: str = "GET", body: bytes | Stream | None = None,
              headers: dict[str, str] | None = None) -> bytes:
    async with pool.request(method, "/key", headers or {}, body) as response:
        return await response.read()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not condition():
            await asyncio.sleep(0.005)


def stream(parts: list[bytes], length: int | None = None, opened: list | None = None) -> Stream:
    async def produce() -> AsyncIterator[bytes]:
        if opened is not None:
            opened.append(1)
        for part in parts:
            yield part
    return Stream(sum(map(len, parts)) if length is None else length, produce)


async def test_content_length_body_by_read_pieces_and_exact_counts_on_one_connection():
    async with setup(replying(ok(b"0123456789"))) as (server, pool):
        assert await get(pool) == b"0123456789"
        async with pool.request("GET", "/", {}) as response:
            assert response.content_length == 10
            pieces = [await response.read_chunk(4) for _ in range(4)]
        assert pieces == [b"0123", b"4567", b"89", b""]
        async with pool.request("GET", "/", {}) as response:
            assert await response.readexactly(3) == b"012"
            assert await response.readexactly(7) == b"3456789"
            assert await response.read_chunk() == b""
        assert server.accepts == 1 and len(server.requests) == 3


async def test_headers_case_insensitive_and_repeated_ones_joined():
    answer = ok(b"x", b"X-Thing: a\r\nContent-Type: text/plain\r\nx-thing: b\r\n")
    async with setup(replying(answer)) as (_, pool), pool.request("GET", "/", {}) as response:
        assert response.status == 200 and response.reason == "OK"
        assert response.headers["X-THING"] == "a, b"
        assert response.headers.get("content-type") == "text/plain"
        assert "Content-Length" in response.headers and "missing" not in response.headers
        assert dict(response.headers) == {"content-length": "1", "x-thing": "a, b",
                                          "content-type": "text/plain"}
        await response.read()


async def test_chunked_body_with_trailer_whole_and_in_pieces_keeps_the_connection():
    async with setup(replying(CHUNKED)) as (server, pool):
        async with pool.request("GET", "/", {}) as response:
            assert response.content_length is None
            assert await response.read() == b"hello world"
        async with pool.request("GET", "/", {}) as response:
            pieces = [await response.read_chunk(3) for _ in range(5)]
        assert pieces == [b"hel", b"lo", b" wo", b"rld", b""]
        async with pool.request("GET", "/", {}) as response:
            assert await response.readexactly(11) == b"hello world"
            assert await response.read_chunk() == b""
        assert server.accepts == 1


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
async def test_close_delimited_body_read_to_the_end_and_not_reused(version):
    answer = (b"HTTP/%s 200 OK\r\n\r\n" % version, b"first ", b"second")
    async with setup(replying(answer, then_close=True)) as (server, pool):
        assert await get(pool) == b"first second"
        assert await get(pool) == b"first second"
        assert server.accepts == 2


@pytest.mark.parametrize(("method", "answer"), [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"),
])
async def test_answers_without_body_read_nothing_and_keep_the_connection(method, answer):
    async with setup(replying(answer, ok(b"next"))) as (server, pool):
        async with pool.request(method, "/", {}) as response:
            assert response.content_length == (None if b"204" in answer else 100)
            assert await response.read() == b""
        assert await get(pool) == b"next"
        assert server.accepts == 1


async def test_informational_answer_is_skipped():
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")
    async with setup(replying(answer)) as (server, pool):
        async with pool.request("GET", "/", {}) as response:
            assert response.status == 200 and await response.read() == b"done"


@pytest.mark.parametrize("read", [0, 10])
async def test_body_not_read_to_the_end_closes_its_connection(read):
    async with setup(replying(ok(b"x" * 1000))) as (server, pool):
        async with pool.request("GET", "/", {}) as response:
            await response.read_chunk(read) if read else None
        assert await get(pool) == b"x" * 1000
        assert server.accepts == 2 and len(server.requests) == 2  # not sent on the first
        await until(lambda: server.eofs == 1)  # the server saw the first one closed


async def test_connection_close_in_the_answer_is_honoured():
    async with setup(replying(ok(b"a", b"Connection: close\r\n"), ok(b"b"))) as (server, pool):
        assert [await get(pool), await get(pool), await get(pool)] == [b"a", b"b", b"b"]
        assert server.accepts == 2


async def test_kept_connection_closed_while_idle_is_replaced():
    async with setup(replying(ok(b"a"), then_close=True)) as (server, pool):
        assert await get(pool) == b"a"
        await until(lambda: server.closed == 1)
        await asyncio.sleep(0.01)
        assert await get(pool) == b"a"
        assert server.accepts == 2


async def test_kept_connection_closed_without_answer_sends_the_request_again_once():
    async def handler(peer: Peer) -> None:
        if peer.server.accepts == 1:
            await peer.request()
            await peer.send(ok(b"a"))
            await peer.request()  # read, then closed without an answer
            return
        await replying(ok(b"b"))(peer)

    opened: list[int] = []
    async with setup(handler) as (server, pool):
        assert await get(pool) == b"a"
        assert await get(pool, "PUT", stream([b"12", b"345"], opened=opened)) == b"b"
        assert server.accepts == 2 and len(opened) == 2
        assert [r.body for r in server.requests] == [b"", b"12345", b"12345"]


async def test_fresh_connection_closed_without_answer_raises():
    async def handler(peer: Peer) -> None:
        await peer.request()

    async with setup(handler) as (server, pool):
        with pytest.raises(ConnectionLost, match="without an answer"):
            await get(pool)
        assert server.accepts == 1  # not sent again


async def test_answer_sent_on_an_idle_connection_is_not_taken_for_the_next_one():
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"a"))  # then, idle, a server may time the connection out so:
        await peer.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n")

    async with setup(handler) as (server, pool):
        assert await get(pool) == b"a"
        await until(lambda: server.closed == 1)
        await asyncio.sleep(0.02)  # the client has the 408 in its buffer
        async with pool.request("GET", "/", {}) as response:
            assert response.status == 200 and await response.read() == b"a"
        assert server.accepts == 2


async def test_idle_connection_older_than_keepalive_is_not_reused():
    async with setup(replying(ok(b"a")), keepalive=0.05) as (server, pool):
        assert await get(pool) == b"a"
        assert await get(pool) == b"a"
        assert server.accepts == 1
        await asyncio.sleep(0.1)
        assert await get(pool) == b"a"
        assert server.accepts == 2
        await until(lambda: server.eofs == 1)


@pytest.mark.parametrize("how", ["read_chunk", "readexactly", "read"])
async def test_body_shorter_than_its_length_raises_and_is_not_reused(how):
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345"
    async with setup(replying(short, ok(b"next"), then_close=True)) as (server, pool):
        async with pool.request("GET", "/", {}) as response:
            with pytest.raises(ConnectionLost, match="short"):
                if how == "read_chunk":
                    while await response.read_chunk(3):
                        pass
                else:
                    await getattr(response, how)(*([10] if how == "readexactly" else []))
        assert await get(pool) == b"next"
        assert server.accepts == 2


async def test_chunked_body_cut_off_raises_and_is_not_reused():
    async with setup(replying(CHUNKED[:2], ok(b"next"), then_close=True)) as (server, pool):
        async with pool.request("GET", "/", {}) as response:
            assert await response.read_chunk() == b"hello"
            with pytest.raises(ProtocolError, match="incomplete chunked read"):
                await response.read_chunk()
        assert await get(pool) == b"next"
        assert server.accepts == 2


async def test_limit_bounds_the_requests_in_flight():
    counts = {"now": 0, "peak": 0}

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            counts["now"] += 1
            counts["peak"] = max(counts["peak"], counts["now"])
            await asyncio.sleep(0.05)
            counts["now"] -= 1
            await peer.send(ok(b"x"))

    async with setup(handler, limit=2) as (server, pool):
        assert await asyncio.gather(*(get(pool) for _ in range(6))) == [b"x"] * 6
        assert counts["peak"] == 2 and server.accepts == 2


@pytest.mark.parametrize("body", [b"small body", bytes(range(256)) * (3 * MiB // 256) + b"!",
                                  stream([b"a" * MiB, b"b" * 70_000, b"", b"c"])],
                         ids=["small", "3MiB", "stream"])
async def test_request_body_arrives_exact_with_its_length(body):
    async with setup(replying(ok(b"stored"))) as (server, pool):
        assert await get(pool, "PUT", body) == b"stored"
        expected = body if isinstance(body, bytes) else b"a" * MiB + b"b" * 70_000 + b"c"
        assert server.requests[0].body == expected
        assert server.requests[0].values("content-length") == [str(len(expected))]


@pytest.mark.parametrize("length", [4, 6])
async def test_stream_giving_another_length_than_announced_raises(length):
    async with setup(replying(ok(b"first"), ok(b"stored"))) as (server, pool):
        assert await get(pool) == b"first"  # a kept connection: still not sent again
        with pytest.raises(BodyMismatch):
            await get(pool, "PUT", stream([b"12", b"345"], length=length))
        assert server.accepts == 1
        assert await get(pool) == b"stored"
        assert server.accepts == 2
        # the server got no whole PUT: the surplus was not even sent
        assert [r.line for r in server.requests] == ["GET /key HTTP/1.1"] * 2


async def test_request_heads_length_and_default_headers():
    async with setup(replying(ok())) as (server, pool):
        await get(pool, "PUT")
        await get(pool, "GET", headers={"Host": "example.test", "X-Amz-Date": "now"})
        await get(pool, "DELETE", headers={"User-Agent": "mine"})
    put, fetch, delete = server.requests
    assert put.line == "PUT /key HTTP/1.1" and put.values("content-length") == ["0"]
    assert put.values("host") == [server.url.removeprefix("http://")]
    assert fetch.values("content-length") == [] and fetch.values("host") == ["example.test"]
    assert fetch.values("user-agent") == ["tpi"] and fetch.values("x-amz-date") == ["now"]
    assert delete.values("user-agent") == ["mine"] and len(delete.values("host")) == 1


@pytest.mark.parametrize("kept", [False, True])
async def test_server_that_never_answers_times_out_once(kept):
    async def answer_then_hang(peer: Peer) -> None:
        await peer.request()
        await peer.send(ok(b"a"))
        await hang(peer)

    async with setup(answer_then_hang if kept else hang, read_timeout=0.2) as (server, pool):
        if kept:
            assert await get(pool) == b"a"
        started = time.monotonic()
        with pytest.raises(Timeout):
            await get(pool)
        assert 0.15 < time.monotonic() - started < 1.0
        assert server.accepts == 1 and len(server.requests) == 1 + kept  # not sent again


async def test_aclose_closes_idle_connections():
    async with setup(replying(ok(b"a"))) as (server, pool):
        assert await get(pool) == b"a"
        await pool.aclose()
        await until(lambda: server.eofs == 1)

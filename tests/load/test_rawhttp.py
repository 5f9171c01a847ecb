"""The load test's device transport (loadtest/rawhttp.py) against a small HTTP server of the
test's own on 127.0.0.1: one kept-alive connection per device, answers read by length or by
chunks, Retry-After kept, a connection the server closed while idle replaced without a
failure, and a request without an answer ended by its deadline (status 0), never hung."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from iotcore.core import Request

from loadtest.rawhttp import KeepAliveTransport, split_host

Handler = Callable[[bytes], bytes | None]  # request bytes -> answer (None: say nothing)


class Server:
    """Answers each request on a connection with ``handler``; counts connections."""

    def __init__(self, handler: Handler, close_after: int = 0) -> None:
        self.handler = handler
        self.close_after = close_after  # close a connection after this many answers (0: never)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        answered = 0
        with conn:
            buf = b""
            while not self.stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    continue
                self.requests.append(head + sep + rest[:length])
                buf = rest[length:]
                answer = self.handler(self.requests[-1])
                if answer is None:
                    time.sleep(5)
                    return
                conn.sendall(answer)
                answered += 1
                if self.close_after and answered >= self.close_after:
                    return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, close_after: int = 0) -> Server:
        servers.append(Server(handler, close_after))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _json(status: int, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


POLL = Request("polls", "GET", "/commands", {"wait": 0, "limit": 10}, timeout_ms=2000)


def test_requests_share_one_kept_alive_connection_and_carry_the_device_token(serve):
    server = serve(lambda req: _json(201, b'{"accepted":1}'))
    seen = []
    t = KeepAliveTransport(
        "127.0.0.1", server.port, "tok-1", observe=lambda *a: seen.append(a[1].status)
    )
    body = {"readings": [{"sensor": "t", "value": 1.5}]}
    for _ in range(3):
        r = t.request(Request("readings", "POST", "/sensors", body=body))
        assert r.status == 201 and r.json() == {"accepted": 1}
    assert server.connections == 1 and t.connects == 1 and seen == [201, 201, 201]
    first = server.requests[0]
    assert first.startswith(b"POST /sensors HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer tok-1\r\n" in first
    assert first.endswith(b'{"readings":[{"sensor":"t","value":1.5}]}')
    t.request(POLL)
    assert server.requests[-1].startswith(b"GET /commands?limit=10&wait=0 HTTP/1.1\r\n")
    t.close()


def test_answers_by_chunks_no_content_and_retry_after_are_read(serve):
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n',
            b"HTTP/1.1 204 No Content\r\n\r\n",
            _json(503, b'{"detail":"retry"}', b"Retry-After: 7\r\n"),
        ]
    )
    server = serve(lambda req: next(answers))
    t = KeepAliveTransport("127.0.0.1", server.port, "tok")
    assert t.request(POLL).json() == {"a": 1}
    assert t.request(POLL).status == 204
    r = t.request(POLL)
    assert r.status == 503 and r.headers == {"retry-after": "7"}
    assert server.connections == 1
    t.close()


def test_a_connection_the_server_closed_is_replaced_without_a_failure(serve):
    server = serve(lambda req: _json(204, b""), close_after=1)
    t = KeepAliveTransport("127.0.0.1", server.port, "tok")
    assert [t.request(POLL).status for _ in range(3)] == [204, 204, 204]
    assert server.connections == 3
    t.close()


def test_a_request_without_an_answer_ends_at_its_deadline(serve):
    server = serve(lambda req: None)  # reads the request, never answers
    t = KeepAliveTransport("127.0.0.1", server.port, "tok")
    watchdog = threading.Thread(
        target=lambda: [time.sleep(0.1) or t.expire(time.monotonic()) for _ in range(30)],
        daemon=True,
    )
    watchdog.start()
    started = time.monotonic()
    r = t.request(Request("polls", "GET", "/commands", timeout_ms=300))
    assert r.status == 0 and "no answer within 300 ms" in r.error
    assert time.monotonic() - started < 2.5  # the watchdog ended it, not the server
    assert len(server.requests) == 1  # not sent again


def test_no_server_is_status_0_and_only_plain_http_is_spoken():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    r = KeepAliveTransport("127.0.0.1", port, "tok").request(POLL)
    assert r.status == 0 and "ConnectionRefused" in r.error
    assert split_host("http://127.0.0.1:8080/") == ("127.0.0.1", 8080)
    with pytest.raises(ValueError, match="plain http"):
        split_host("https://127.0.0.1:8443")

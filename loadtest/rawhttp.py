"""A lean HTTP/1.1 transport for emulated devices: one keep-alive connection per device,
request bytes built by hand, only what a device needs read from the answer (status,
Content-Length or chunks, Retry-After, Connection: close).

Why not locust's ``FastHttpUser``: its session builds a request object, a cookie jar, a
response wrapper and a header dictionary per request, about 1 ms of CPU per device request
here, more than the product spends answering it (docs/decisions.md, "A generator that costs
less than the product"). This transport costs a few tens of microseconds.

It speaks to the firmware's protocol core: ``request(Request) -> Response`` (``iotcore``),
the same contract as the board's ``HttpTransport``; it never raises for network errors
(status 0, ``error`` says why). It uses the ``socket`` module as it finds it: inside locust
that is gevent's (patched), so thousands of devices share one thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import orjson
from iotcore.core import Request, Response

# (request, response, elapsed ms, start time): told after every request, answered or not
Observer = Callable[[Request, Response, float, float], None]

_CRLF2 = b"\r\n\r\n"


def split_host(url: str) -> tuple[str, int]:
    """``http://host[:port][/]`` -> (host, port).

    Raises:
        ValueError: not an http URL (the devices of the load test speak plain HTTP to nginx).
    """
    scheme, _, rest = url.partition("://")
    if scheme != "http":
        raise ValueError(f"the load test's devices speak plain http, not {scheme!r}: {url}")
    hostport = rest.split("/", 1)[0]
    host, _, port = hostport.partition(":")
    return host, int(port) if port else 80


class KeepAliveTransport:
    """One device's connection. ``observe`` hears every request's outcome and time."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        observe: Observer | None = None,
        source: str | None = None,
    ) -> None:
        self.address = (host, port)
        self.source = source  # a local address to connect from (spreads ephemeral ports)
        self._fixed = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n".encode()
        self.observe = observe
        self.sock: socket.socket | None = None
        self.connects = 0
        # When the request in flight must have its answer (time.monotonic()), else None. The
        # socket itself has no timeout (under gevent each timed wait costs a timer): a
        # watchdog calls :meth:`expire` now and then, which closes a connection past it.
        self.deadline: float | None = None
        self.timed_out = False

    def expire(self, now: float) -> bool:
        """Shut the connection if its request is past its deadline (the waiting request then
        ends with status 0, "timed out"). True if it did."""
        sock = self.sock
        if self.deadline is None or now <= self.deadline or sock is None:
            return False
        self.deadline = None
        self.timed_out = True
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked on it, in any thread
        except OSError:
            pass
        return True

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock = sock
        try:
            if self.source:
                sock.bind((self.source, 0))
            sock.connect(self.address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            self.close()
            raise
        self.connects += 1
        return sock

    def encode(self, req: Request) -> bytes:
        """The request's bytes: request line, the device's fixed headers, the JSON body."""
        target = req.url("")
        if req.body is None:
            return b"%s %s HTTP/1.1\r\n%s\r\n" % (req.method.encode(), target.encode(), self._fixed)
        body = orjson.dumps(req.body)
        return (
            b"%s %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (
                req.method.encode(),
                target.encode(),
                self._fixed,
                len(body),
                body,
            )
        )

    def request(self, req: Request) -> Response:
        data = self.encode(req)
        started, t0 = time.time(), time.perf_counter()
        self.deadline = time.monotonic() + req.timeout_ms / 1000
        self.timed_out = False
        response = self._exchange(data, retry_stale=True)
        self.deadline = None
        if self.timed_out:
            self.close()
            response = Response(0, error=f"no answer within {req.timeout_ms} ms")
        if self.observe is not None:
            self.observe(req, response, (time.perf_counter() - t0) * 1000, started)
        return response

    def _exchange(self, data: bytes, retry_stale: bool) -> Response:
        reused = self.sock is not None
        try:
            sock = self.sock if self.sock is not None else self._connect()
            try:
                sent = sock.send(data)  # a device's request fits the socket's buffer at once
                if sent < len(data):
                    sock.sendall(data[sent:])
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _Stale() from exc
            return self._read(sock)
        except _Stale:
            self.close()
            # The server closed an idle kept-alive connection before reading this request
            # (nothing came back): send it once more on a new one, as HTTP clients do.
            if reused and retry_stale and not self.timed_out:
                return self._exchange(data, retry_stale=False)
            return Response(0, error="connection closed without an answer")
        except (OSError, ValueError) as exc:
            self.close()
            return Response(0, error=f"{type(exc).__name__}: {exc}")

    def _read(self, sock: socket.socket) -> Response:
        # Under gevent, wait until the answer is there before reading: a read right after the
        # request would find nothing, and cost a system call and an exception, every time.
        wait = getattr(sock, "_wait", None)
        if wait is not None:
            wait(sock._read_event)  # type: ignore[attr-defined]
        try:
            buf = sock.recv(65536)
        except ConnectionResetError as exc:
            raise _Stale() from exc
        if not buf:
            raise _Stale()
        end = buf.find(_CRLF2)
        while end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside the answer's head")
            buf += chunk
            end = buf.find(_CRLF2)
        head = buf[:end].lower()
        status = int(head[9:12])
        headers: dict[str, str] = {}
        if status >= 300:
            after = _header(head, b"retry-after")
            if after is not None:
                headers["retry-after"] = after.decode()
        body = buf[end + 4 :]
        length = _header(head, b"content-length")
        if length is not None:
            n = int(length)
            while len(body) < n:
                chunk = sock.recv(max(65536, n - len(body)))
                if not chunk:
                    raise ConnectionError("connection closed inside the answer's body")
                body += chunk
        elif b"\r\ntransfer-encoding: chunked" in head:
            body = _unchunk(sock, body)
        elif status not in (204, 304):  # the body runs until the server closes
            while chunk := sock.recv(65536):
                body += chunk
            self.close()
        if b"\r\nconnection: close" in head:
            self.close()
        return Response(status, headers, body)


class _Stale(Exception):
    """The connection was closed before any byte of an answer came."""


def _header(head: bytes, name: bytes) -> bytes | None:
    """A header's value from a lower-cased head (first occurrence), or None."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    stop = head.find(b"\r\n", start)
    return head[start : stop if stop >= 0 else len(head)].strip()


def _unchunk(sock: socket.socket, data: bytes) -> bytes:
    """The body of a chunked answer, ``data`` being what already came after the head."""
    out = b""
    while True:
        while b"\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("connection closed inside a chunk")
            data += more
        line, data = data.split(b"\r\n", 1)
        size = int(line.split(b";")[0].strip(), 16)
        while len(data) < size + 2:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("connection closed inside a chunk")
            data += more
        if size == 0:
            return out
        out += data[:size]
        data = data[size + 2 :]


class GeventHttpClientTransport:
    """The same contract over geventhttpclient's low-level ``HTTPClient`` (the library under
    locust's ``FastHttpUser``, without locust's session around it): one kept-alive connection
    per device. Kept to compare generators (``LOAD_DEVICE_TRANSPORT=geventhttpclient``); the
    raw transport above is the default because it costs less (docs/decisions.md)."""

    def __init__(self, host: str, port: int, token: str, observe: Observer | None = None) -> None:
        from geventhttpclient import HTTPClient

        self.client = HTTPClient(host, port, concurrency=1, network_timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.observe = observe

    def expire(self, now: float) -> bool:
        return False  # the client's own network timeout applies

    def close(self) -> None:
        self.client.close()

    def request(self, req: Request) -> Response:
        body = orjson.dumps(req.body) if req.body is not None else b""
        started, t0 = time.time(), time.perf_counter()
        try:
            r = self.client.request(req.method, req.url(""), body=body, headers=self.headers)
            data = r.read()
            after = r.get("retry-after")
            response = Response(r.status_code, {"retry-after": after} if after else {}, data)
            r.release()
        except (OSError, ValueError) as exc:
            response = Response(0, error=f"{type(exc).__name__}: {exc}")
        if self.observe is not None:
            self.observe(req, response, (time.perf_counter() - t0) * 1000, started)
        return response

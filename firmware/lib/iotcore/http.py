"""A small blocking HTTP/1.1 transport over sockets, with TLS for https URLs. Written for
MicroPython on the board; it runs on CPython too (the tests use it there against the API).
One connection per request (``Connection: close``)."""

try:
    import json
except ImportError:
    import ujson as json  # type: ignore[no-redef]

from iotcore.effects import Response


def split_url(url):
    """(scheme, host, port, base path) of ``http[s]://host[:port][/base]``."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise ValueError("unsupported URL scheme: " + scheme)
    hostport, _, base = rest.partition("/")
    host, _, port = hostport.partition(":")
    port = int(port) if port else (443 if scheme == "https" else 80)
    return scheme, host, port, ("/" + base).rstrip("/")


class HttpTransport:
    """``request(Request) -> Response``; never raises for network errors (status 0).

    ``cadata``: the server's CA certificate(s) (DER bytes on MicroPython, PEM text on CPython)
    to verify against; without it a https connection is encrypted but not verified.
    """

    def __init__(self, base_url, token, cadata=None):
        self.scheme, self.host, self.port, self.base = split_url(base_url)
        self.token = token
        self.cadata = cadata

    def _connect(self, timeout_s):
        import socket

        addr = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket()
        sock.settimeout(timeout_s)
        sock.connect(addr)
        if self.scheme == "https":
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if self.cadata:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cadata=self.cadata)
            else:
                if hasattr(ctx, "check_hostname"):
                    ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        return sock

    def request(self, req):
        body = b""
        if req.body is not None:
            body = json.dumps(req.body).encode()
        path = req.url(self.base)
        head = (
            "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (req.method, path, self.host, self.token, len(body))
        )
        sock = None
        try:
            sock = self._connect(req.timeout_ms / 1000)
            stream = sock.makefile("rwb") if hasattr(sock, "makefile") else sock
            stream.write(head.encode() + body)
            if hasattr(stream, "flush"):
                stream.flush()
            return _read_response(stream)
        except (OSError, ValueError, IndexError) as exc:
            return Response(0, error="%s: %s" % (type(exc).__name__, exc))
        finally:
            if sock is not None:
                sock.close()


def _read_response(stream):
    line = stream.readline()
    if not line:
        raise OSError("connection closed without an answer")
    status = int(line.split(None, 2)[1])
    headers = {}
    while True:
        line = stream.readline()
        if not line or line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        chunks, got = [], 0
        while got < n:
            chunk = stream.read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        body = b"".join(chunks)
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = _read_chunked(stream)
    else:
        body = stream.read() or b""
    return Response(status, headers, body)


def _read_chunked(stream):
    chunks = []
    while True:
        size = int(stream.readline().split(b";")[0].strip(), 16)
        if size == 0:
            stream.readline()
            return b"".join(chunks)
        data = b""
        while len(data) < size:
            part = stream.read(size - len(data))
            if not part:
                raise OSError("connection closed inside a chunk")
            data += part
        chunks.append(data)
        stream.readline()

"""CPython adapters for the core (never copied to a board): httpx transports, blocking and
asyncio, and an asyncio driver for the core's loops, so many devices share one thread."""

import asyncio

import httpx

from iotcore.effects import Response, Sleep


def _response(r):
    out = Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)
    out.raw = r
    return out


def _error(exc):
    return Response(0, error=type(exc).__name__)


def _kwargs(req, token):
    kw = {
        "headers": {"Authorization": "Bearer " + token},
        "timeout": req.timeout_ms / 1000,
    }
    if req.query:
        kw["params"] = req.query
    if req.body is not None:
        kw["json"] = req.body
    return kw


class HttpxTransport:
    """Blocking: ``request(Request) -> Response`` over an ``httpx.Client`` with a base URL."""

    def __init__(self, client, token):
        self.client, self.token = client, token

    def request(self, req):
        try:
            return _response(self.client.request(req.method, req.path, **_kwargs(req, self.token)))
        except httpx.HTTPError as exc:
            return _error(exc)


class AsyncHttpxTransport:
    """The same over an ``httpx.AsyncClient``."""

    def __init__(self, client, token):
        self.client, self.token = client, token

    async def request(self, req):
        try:
            r = await self.client.request(req.method, req.path, **_kwargs(req, self.token))
        except httpx.HTTPError as exc:
            return _error(exc)
        return _response(r)


async def drive_async(loop, transport, stopped=None, max_sleep_ms=500):
    """Run a core loop on asyncio; returns when it ends or ``stopped()`` is true."""
    answer = None
    while stopped is None or not stopped():
        try:
            effect = loop.send(answer)
        except StopIteration:
            return
        if isinstance(effect, Sleep):
            left = effect.ms
            while left > 0 and (stopped is None or not stopped()):
                step = min(left, max_sleep_ms)
                await asyncio.sleep(step / 1000)
                left -= step
            answer = None
        else:
            answer = await transport.request(effect)

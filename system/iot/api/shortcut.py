"""The hot path of a fleet of devices: an idle short poll (``GET /commands?wait=0`` with nothing
pending), answered before FastAPI's routing, validation and dependency injection.

It answers only when everything is already known: a valid device token in this replica's auth
cache, parameters that are plainly valid, and a device this replica knows has nothing to claim
(a claim found nothing, no lease of its runs, and no new-command notification came since).
Anything else goes through the full route, which gives the same answer (or the error) the
slow way.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from iot import security

_ROUTE = SimpleNamespace(path="/commands")  # the route label metrics use
_PREFIX = b"bearer " + security.DEVICE_TOKEN_PREFIX.encode()


def _plainly_valid(query: bytes) -> bool:
    try:
        for key, value in parse_qsl(query.decode("ascii"), strict_parsing=False):
            if key == "wait" and float(value) != 0:
                return False
            elif key == "limit" and not 1 <= int(value) <= 100:
                return False
            elif key == "lease" and not 1 <= float(value) <= 3600:
                return False
            elif key not in ("wait", "limit", "lease"):
                return False
    except ValueError:
        return False
    return True


class IdlePollShortcut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"] == "/commands"
            and self._idle(scope)
        ):
            scope["route"] = _ROUTE
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _idle(scope: Scope) -> bool:
        if not _plainly_valid(scope.get("query_string", b"")):
            return False
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if auth[:11].lower() != _PREFIX:
            return False
        state: Any = getattr(scope["app"].state, "iot", None)
        if state is None or state.commands is None:
            return False
        hit = state.device_cache.get(security.hash_device_token(auth[7:].decode("latin-1")))
        if hit is None or hit[0] <= time.monotonic():
            return False
        return bool(state.commands.surely_idle(str(hit[1]["id"])))

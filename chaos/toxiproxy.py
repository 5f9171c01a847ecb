"""A small client of toxiproxy's HTTP API. Every failed call raises :class:`ToxiproxyError`."""

from __future__ import annotations

from typing import Any

import httpx


class ToxiproxyError(RuntimeError):
    """toxiproxy refused or did not answer; the message says what was asked."""


class Toxiproxy:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self._client = httpx.Client(base_url=url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: toxiproxy unreachable: {exc}") from exc
        if r.status_code >= 300:
            raise ToxiproxyError(f"{method} {path}: HTTP {r.status_code} {r.text.strip()}")
        return r.json() if r.content else None

    def proxies(self) -> dict[str, Any]:
        return self._call("GET", "/proxies")  # type: ignore[no-any-return]

    def proxy(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/proxies/{name}")  # type: ignore[no-any-return]

    def create_proxy(self, name: str, listen: str, upstream: str) -> None:
        self._call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream})

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disable: the proxy closes its connections and refuses new ones (the service is down)."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(
        self,
        proxy: str,
        toxic_type: str,
        attributes: dict[str, Any],
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> str:
        """Add a toxic (latency, bandwidth, timeout, reset_peer, ...); returns its name."""
        name = name or f"{toxic_type}_{stream}"
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": name,
                "type": toxic_type,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

"""HTTPS through nginx: TLS 1.2 with forward-secret AEAD suites or TLS 1.3 only, HSTS on HTTPS,
and the security headers on the API's and the web app's answers."""

from __future__ import annotations

import socket
import ssl
import warnings

import httpx
import pytest

from iot.settings import Settings

pytestmark = pytest.mark.integration

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000"


def handshake(
    settings: Settings, version: ssl.TLSVersion, ciphers: str | None = None
) -> tuple[str, str]:
    """(protocol, cipher) agreed with nginx at exactly ``version``; raises ssl.SSLError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the protocol is tested here, not the self-signed cert
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are deprecated
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")  # offer even what OpenSSL would not
    with (
        socket.create_connection((settings.host, settings.https_port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0]


def test_modern_tls_is_agreed(settings: Settings) -> None:
    assert handshake(settings, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    version, cipher = handshake(settings, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_protocols_are_refused_by_the_server(settings: Settings, version: str) -> None:
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):  # nginx's alert, not ours
        handshake(settings, getattr(ssl.TLSVersion, version), "DEFAULT")


@pytest.mark.parametrize(
    "ciphers",
    [
        "AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384",  # no forward secrecy
        "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA",  # CBC
    ],
)
def test_weak_tls12_suites_are_refused(settings: Settings, ciphers: str) -> None:
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):  # nginx's alert
        handshake(settings, ssl.TLSVersion.TLSv1_2, ciphers)


@pytest.mark.parametrize("path", ["/ping", "/health", "/openapi.json", "/devices", "/app/"])
def test_security_headers_on_https_with_hsts(settings: Settings, path: str) -> None:
    r = httpx.get(f"https://{settings.host}:{settings.https_port}{path}", verify=False)
    assert r.status_code in (200, 401), r.text
    for name, value in {**HEADERS, "Strict-Transport-Security": HSTS}.items():
        assert r.headers.get(name) == value, (path, name, dict(r.headers))
    if path == "/app/":
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/ping", "/devices", "/app/", "/no-such-route"])
def test_security_headers_on_http_without_hsts(settings: Settings, path: str) -> None:
    r = httpx.get(f"{settings.base_url}{path}")
    for name, value in HEADERS.items():
        assert r.headers.get(name) == value, (path, name, dict(r.headers))
    assert "Strict-Transport-Security" not in r.headers  # HSTS means nothing over plain HTTP

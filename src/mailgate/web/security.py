"""Headers on every response, and the Host check (DNS rebinding), as one ASGI layer.

`create_app` puts `Shield` outside everything else, error pages included.

The pages load their scripts and styles from /static only (no inline script, style or
event handler), so the Content-Security-Policy allows 'self' and nothing inline. No page
may be framed (clickjacking), nothing is sniffed into another type, and the Referer does
not leave the site.

A web page elsewhere can make a browser talk to this server under the page's own name
(DNS rebinding: the name first resolves to the page's server, then to this one). The
browser then sends that name in Host. So a request is served only when Host names this
server: the configured web address; for a loopback address also `localhost`, 127.0.0.1
and ::1; for 0.0.0.0 or :: any IP address; `hostname`; and `[web] allowed_hosts`. Any
port is accepted (a proxy may use another one). A request without Host (HTTP/1.0) is
served: browsers always send one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from ipaddress import ip_address

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailgate.config import Config

__all__ = ["CSP", "SECURITY_HEADERS", "HostCheck", "Shield"]

log = logging.getLogger("mailgate.web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_REFUSED = b"The Host header does not name this server; the request was refused.\n"


def _host_of(value: str) -> str:
    """The name in a Host header value, without port or brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


class HostCheck:
    """Which Host header values name this server."""

    def __init__(self, config: Config) -> None:
        names = {config.hostname.lower(), *config.web.allowed_hosts}
        self.any_ip = False
        try:
            bound = ip_address(config.web.host)
        except ValueError:
            names.add(config.web.host.lower())
        else:
            names.add(str(bound))
            if bound.is_unspecified:
                self.any_ip = True
                names.add("localhost")
            elif bound.is_loopback:
                names |= {"localhost", "127.0.0.1", "::1"}
        self.names = frozenset(n for n in names if n)

    def allows(self, value: str) -> bool:
        host = _host_of(value)
        if not host:
            return False
        if host in self.names:
            return True
        try:
            addr = ip_address(host)
        except ValueError:
            return False
        return self.any_ip or str(addr) in self.names


class Shield:
    """ASGI: refuse a foreign Host with 400; add the security headers to every response."""

    def __init__(self, app: ASGIApp, hosts: HostCheck) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in _pairs(scope["headers"]) if k == b"host"]
        if len(hosts) > 1 or (hosts and not self.hosts.allows(hosts[0].decode("latin-1"))):
            client = scope.get("client") or ("?", 0)
            shown = b", ".join(hosts).decode("latin-1")[:100]
            log.info("web: refused a request from %s for Host %r", client[0], shown)
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_REFUSED)).encode()),
                (b"connection", b"close"), *SECURITY_HEADERS]})
            await send({"type": "http.response.body", "body": _REFUSED})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _pairs(headers: Iterable[tuple[bytes, bytes]]) -> Iterable[tuple[bytes, bytes]]:
    return ((k.lower(), v) for k, v in headers)

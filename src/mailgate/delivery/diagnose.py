"""`mailgate check` and `mailgate probe`: where mail for a domain goes, and what its server says.

`check(domain, resolver, config)` asks DNS for the Route delivery would take (mailgate.dns)
and explains it: the MX hosts with preferences and addresses, an implicit MX, a null MX
(RFC 7505: no mail at all, recipients fail at once with 556 5.1.10, nothing is connected),
or a DNS failure and what delivery does about it (deferred with 4.4.3 and retried, or
bounced with its code). With a Config it also says when the domain is local, or when a
`[routes]` entry or the relayhost sends its mail somewhere else.

`probe(target, ...)` does what a delivery does up to the point of no return: resolves the
domain (or takes HOST[:PORT] / [IP]:PORT as it is), connects to the hosts in order until
one answers, says EHLO, STARTTLS when offered (unless told not to), optionally MAIL FROM
and RCPT TO, then RSET and QUIT. It never sends DATA: the client session runs in its
verify-only mode (`ClientConfig.verify_only`), which stops every transaction after the
RCPT replies. Every command and the reply that answered it are kept, with the
explanation of each code, the TLS version and cipher, the server's capabilities, and a
verdict. A null-MX domain is reported without connecting anywhere.

Both reports render as plain text and as JSON (docs/cli.md), with headings and verdicts
in any of the knowledge base's languages (codes/data/<lang>/diagnostics.toml); the
explanations come from the codes knowledge base.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import ssl
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mailgate.codes import registry as reg
from mailgate.codes.reply import Reply, ReplyError, parse_reply, parse_reply_line
from mailgate.delivery.transport import close, opportunistic_context, tls_failure
from mailgate.dns import (
    ImplicitMX,
    MXHost,
    MXHosts,
    NullMX,
    PermFail,
    Resolver,
    Route,
    TempFail,
)
from mailgate.smtp.client import (
    NEED_DATA,
    Capabilities,
    ClientConfig,
    ClientSession,
    Closed,
    Envelope,
    Established,
    MessageResult,
    Outcome,
    StartTLS,
)

if TYPE_CHECKING:
    from mailgate.config import Config

__all__ = [
    "EX_TEMPFAIL",
    "Attempt",
    "CheckReport",
    "Exchange",
    "ProbeReport",
    "TLSInfo",
    "Target",
    "check",
    "parse_target",
    "probe",
]

EX_TEMPFAIL = 75  # sysexits.h: temporary failure, try again later

StartTLSPolicy = Literal["may", "require", "never"]

# --- words ------------------------------------------------------------------------------

# The words are data: codes/data/<lang>/diagnostics.toml, read through the registry.


def _t(lang: str, key: str, **kw: object) -> str:
    table = reg.words(lang if lang in reg.languages() else "en", "diagnostics")
    return table[key].format(**kw)


def _label(lang: str, key: str) -> str:
    return _t(lang, key) + _t(lang, "sep")


# --- shared pieces ----------------------------------------------------------------------


def _explain(reply: Reply, lang: str) -> list[dict[str, str]]:
    """The knowledge base on each code of `reply`: code, title, summary, fix."""
    from mailgate.codes.explain import explain_code
    from mailgate.codes.registry import DataError

    parts: list[dict[str, str]] = []
    codes = [str(reply.code)] + ([reply.enhanced] if reply.enhanced else [])
    for code in codes:
        try:
            x = explain_code(code, lang)
        except (ReplyError, DataError):  # e.g. an enhanced code with an undefined subject
            continue
        parts.append({"code": x.code, "title": x.title, "summary": x.summary, "fix": x.fix})
    return parts


def _reply_json(reply: Reply | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    return {"code": reply.code, "enhanced": reply.enhanced, "lines": list(reply.lines)}


def _reply_wire(reply: Reply) -> list[str]:
    """The reply as the server sent it (the enhanced code on every line), one str a line."""
    return reply.to_bytes(enhanced=True).decode("utf-8", "replace").splitlines()


def _explanation_lines(reply: Reply, lang: str, indent: str) -> list[str]:
    parts = _explain(reply, lang)
    out: list[str] = []
    for p in parts:
        if reply.is_success or reply.is_intermediate:
            out.append(f"{indent}{p['code']} {p['title']}")
        else:
            out.append(f"{indent}{p['code']} {p['title']}: {p['summary']}")
    if parts and (reply.is_transient or reply.is_permanent):
        out.append(f"{indent}{_t(lang, 'fix')}{_t(lang, 'sep')}{parts[-1]['fix']}")
    return out


def _is_literal(domain: str) -> bool:
    return domain.startswith("[")


def _route_hosts(route: Route) -> tuple[MXHost, ...]:
    if isinstance(route, ImplicitMX | MXHosts):
        return route.hosts
    return ()  # the failures have none


def _route_kind(route: Route, direct: bool) -> str:
    return "host" if direct and isinstance(route, ImplicitMX) else route.kind


def _meaning(route: Route, lang: str, direct: bool = False) -> str:
    domain = route.domain
    if isinstance(route, ImplicitMX):
        if direct:
            return _t(lang, "mean.host", domain=domain)
        key = "mean.literal" if _is_literal(domain) else "mean.implicit_mx"
        return _t(lang, key, domain=domain)
    if isinstance(route, TempFail | PermFail):
        return _t(lang, f"mean.{route.kind}", domain=domain, reason=route.reason)
    return _t(lang, f"mean.{route.kind}", domain=domain)


def _delivery(route: Route, lang: str, port: int) -> str:
    reply = route.reply()
    code, enhanced = (reply.code, reply.enhanced) if reply is not None else (0, None)
    return _t(lang, f"do.{route.kind}", port=port, code=code, enhanced=enhanced or "")


def _route_json(route: Route, lang: str, port: int, direct: bool = False) -> dict[str, Any]:
    reply = route.reply()
    return {
        "kind": _route_kind(route, direct),
        "domain": route.domain,
        "meaning": _meaning(route, lang, direct),
        "delivery": _delivery(route, lang, port),
        "hosts": [
            {"name": h.name, "preference": h.preference, "addresses": list(h.addresses)}
            for h in _route_hosts(route)
        ],
        "reason": getattr(route, "reason", None),
        "reply": _reply_json(reply),
        "explanation": _explain(reply, lang) if reply is not None else [],
    }


def _route_text(route: Route, lang: str, port: int, direct: bool = False,
                heading: str = "route") -> list[str]:
    kind = _route_kind(route, direct)
    lines = [f"{_label(lang, heading)}{_t(lang, 'kind.' + kind)} ({kind})"]
    hosts = _route_hosts(route)
    if hosts:
        lines.append(_label(lang, "hosts").rstrip())
        width = max(len(h.name) for h in hosts)
        for h in hosts:
            addresses = ", ".join(h.addresses) or _t(lang, "no_address")
            pref = f"{h.preference:>5}  " if isinstance(route, MXHosts) else ""
            lines.append(f"  {pref}{h.name:<{width}}  {addresses}")
    lines.append(f"{_label(lang, 'meaning')}{_meaning(route, lang, direct)}")
    lines.append(f"{_label(lang, 'delivery')}{_delivery(route, lang, port)}")
    reply = route.reply()
    if reply is not None:
        lines.append(_label(lang, "codes").rstrip())
        lines.extend(_explanation_lines(reply, lang, "  "))
    return lines


# --- check ------------------------------------------------------------------------------

CheckResult = Literal["local", "deliverable", "null_mx", "temp_fail", "perm_fail"]


@dataclass
class CheckReport:
    """The route mailgate would take for `domain`, and what that means."""

    domain: str
    route: Route  # what the domain's DNS says
    port: int = 25  # the port delivery connects to ([delivery] smtp_port, or the next hop's)
    local: bool = False  # a [domains] local domain: Maildirs, no DNS
    via: Literal["", "route", "relayhost"] = ""  # a [routes] entry or the relayhost
    nexthop: str = ""  # as the configuration writes it: smtp:[127.0.0.2]:2526
    nexthop_route: Route | None = None  # where that next hop resolves to
    nexthop_direct: bool = False  # [host]: its addresses, no MX lookup
    tls: str = ""  # the outbound TLS level (Config.tls_level_for), with a configuration

    @property
    def effective(self) -> Route | None:
        """The route delivery really takes; None for a local domain."""
        if self.local:
            return None
        return self.nexthop_route if self.nexthop_route is not None else self.route

    @property
    def result(self) -> CheckResult:
        route = self.effective
        if route is None:
            return "local"
        if isinstance(route, NullMX | TempFail | PermFail):
            return route.kind  # type: ignore[return-value]  # the kind strings match
        return "deliverable"

    @property
    def exit_status(self) -> int:
        """0 deliverable (or local), 1 null MX or permanent failure, 75 temporary failure."""
        return {"local": 0, "deliverable": 0, "null_mx": 1, "perm_fail": 1,
                "temp_fail": EX_TEMPFAIL}[self.result]

    def verdict(self, lang: str = "en") -> str:
        route = self.effective
        reply = route.reply() if route is not None else None
        return _t(lang, f"check.{self.result}", domain=self.domain,
                  reply=str(reply) if reply is not None else "")

    def notes(self, lang: str = "en") -> list[str]:
        if self.local:
            return [_t(lang, "cfg.local", domain=self.domain)]
        notes = []
        if self.via:
            notes.append(_t(lang, f"cfg.{self.via}", domain=self.domain, nexthop=self.nexthop))
        if self.tls:
            notes.append(_t(lang, f"cfg.tls.{self.tls}"))
        return notes

    def to_json(self, lang: str = "en") -> dict[str, Any]:
        nexthop: dict[str, Any] | None = None
        if self.via and self.nexthop_route is not None:
            nexthop = {
                "via": self.via,
                "nexthop": self.nexthop,
                "route": _route_json(self.nexthop_route, lang, self.port, self.nexthop_direct),
            }
        return {
            "domain": self.domain,
            "lang": lang,
            "route": _route_json(self.route, lang, self.port),
            "local": self.local,
            "nexthop": nexthop,
            "tls_level": self.tls or None,
            "notes": self.notes(lang),
            "verdict": {"result": self.result, "text": self.verdict(lang)},
            "exit_status": self.exit_status,
        }

    def render(self, fmt: str = "text", lang: str = "en") -> str:
        if fmt == "json":
            return json.dumps(self.to_json(lang), ensure_ascii=False, indent=2) + "\n"
        lines = [f"{_label(lang, 'domain')}{self.domain}"]
        notes = self.notes(lang)
        if notes:
            lines.extend(f"{_label(lang, 'config')}{n}" for n in notes)
        if self.via and self.nexthop_route is not None:
            lines.extend(_route_text(self.nexthop_route, lang, self.port, self.nexthop_direct,
                                     heading="nexthop"))
            lines.extend(_route_text(self.route, lang, self.port, heading="dns_unused"))
        elif self.local:
            lines.extend(_route_text(self.route, lang, self.port, heading="dns_unused"))
        else:
            lines.extend(_route_text(self.route, lang, self.port))
        lines.append(f"{_label(lang, 'verdict')}{self.verdict(lang)}")
        return "\n".join(lines) + "\n"


async def check(domain: str, resolver: Resolver, config: Config | None = None) -> CheckReport:
    """The route for `domain`, with the configuration's say when a Config is given.

    ValueError when `domain` is not a domain name (or an address literal).
    """
    domain = _valid_domain(domain)
    route = await resolver.resolve(domain)
    report = CheckReport(domain, route)
    if config is None:
        return report
    report.port = config.delivery.smtp_port
    if config.domains.is_local(domain):
        report.local = True
        return report
    report.tls = config.tls_level_for(domain)
    override = config.route_for(domain)
    relay = config.delivery.relayhost
    if override is not None:
        report.via, report.nexthop = "route", override.nexthop
        host, port, mx_lookup = override.host, override.port, override.mx_lookup
    elif relay is not None:
        report.via = "relayhost"
        report.nexthop = ("smtps:" if relay.implicit_tls else "") + relay.address
        host, port, mx_lookup = relay.host, relay.port, relay.mx_lookup
    else:
        return report
    report.port = port
    report.nexthop_direct = not mx_lookup
    report.nexthop_route = (
        await resolver.resolve(host) if mx_lookup else await resolver.host_route(host)
    )
    return report


# --- names and targets ------------------------------------------------------------------

_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _valid_domain(text: str) -> str:
    """`text` stripped, if it is a domain name (U- or A-labels) or an address literal."""
    domain = text.strip()
    if not domain:
        raise ValueError("no domain given.")
    if "@" in domain:
        raise ValueError(
            f"{domain!r} is an address; give its domain ({domain.rpartition('@')[2]})."
        )
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise ValueError(f"{domain!r} has '[' without ']'.")
        inner = domain[1:-1]
        try:
            ipaddress.ip_address(inner[5:] if inner[:5].lower() == "ipv6:" else inner)
        except ValueError:
            raise ValueError(f"{domain!r} is not an address literal such as [192.0.2.1].") from None
        return domain
    if _ascii(domain) is None:
        raise ValueError(f"{domain!r} is not a valid domain name.")
    return domain


def _ascii(name: str) -> str | None:
    """The A-label form of a host or domain name, or None when it is not one."""
    name = name.rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    if not ascii_name or len(ascii_name) > 253:
        return None
    if not all(_LABEL_RE.match(label) for label in ascii_name.split(".")):
        return None
    return ascii_name


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe: a mail `domain` (MX lookup), or a `host` connected to directly."""

    kind: Literal["domain", "host"]
    name: str  # the domain, the host name, or the IP address (no brackets)
    port: int


def parse_target(text: str, default_port: int = 25) -> Target:
    """DOMAIN, HOST:PORT, IP, IP:PORT, [IP]:PORT, [IPv6:addr]:PORT or [HOST]:PORT.

    A bare name is a mail domain (MX, then implicit MX), as a delivery treats it; a port
    or brackets make it a host to connect to directly. ValueError names the problem.
    """
    s = text.strip()
    if not s:
        raise ValueError("no target given: a domain, HOST:PORT or [IP]:PORT.")
    if not 0 < default_port < 65536:
        raise ValueError(f"port {default_port} is not between 1 and 65535.")
    if "@" in s:
        raise ValueError(
            f"{s!r} is an address; probe its domain ({s.rpartition('@')[2]}) with --rcpt {s}."
        )
    port_text = ""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{s!r} has '[' without ']'.")
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{s!r}: expected [HOST]:PORT after the brackets.")
            port_text = rest[1:]
        if host[:5].lower() == "ipv6:":
            host = host[5:]
        bracketed = True
    else:
        with contextlib.suppress(ValueError):
            return Target("host", str(ipaddress.ip_address(s)), default_port)  # bare IP
        if s.count(":") > 1:
            raise ValueError(f"{s!r}: an IPv6 address with a port needs brackets, [::1]:25.")
        host, _, port_text = s.partition(":")
        bracketed = ":" in s
        if bracketed and not port_text:
            raise ValueError(f"{s!r}: the port after ':' is missing.")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{s!r}: the port must be a number from 1 to 65535.")
        port = int(port_text)
    try:
        return Target("host" if bracketed else "domain", str(ipaddress.ip_address(host)), port)
    except ValueError:
        pass
    if _ascii(host) is None:
        raise ValueError(f"{host!r} is not a valid domain or host name.")
    return Target("host" if bracketed else "domain", host.rstrip("."), port)


# --- probe: one conversation ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The server's certificate, as far as a reader needs it to see why it is (not)
    trusted: whom it is for, the names it covers, who signed it, until when."""

    subject: str  # RFC 4514: "CN=mx1.example.org"
    names: tuple[str, ...]  # subjectAltName DNS names and IP addresses
    issuer: str  # RFC 4514
    not_after: str  # ISO 8601, UTC

    @classmethod
    def from_der(cls, der: bytes) -> CertInfo | None:
        from cryptography import x509

        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        names: list[str] = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError):
            pass
        else:
            names += san.get_values_for_type(x509.DNSName)
            names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        return cls(cert.subject.rfc4514_string(), tuple(names), cert.issuer.rfc4514_string(),
                   cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "names": list(self.names), "issuer": self.issuer,
                "not_after": self.not_after}


@dataclass(frozen=True, slots=True)
class TLSInfo:
    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int | None
    certificate: CertInfo | None = None
    verified: bool = False  # the handshake checked the chain and the host name (--verify)

    def __str__(self) -> str:
        bits = f" ({self.bits} bits)" if self.bits else ""
        return f"{self.version} {self.cipher}{bits}"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "cipher": self.cipher, "bits": self.bits,
                "verified": self.verified,
                "certificate": self.certificate.to_json() if self.certificate else None}


@dataclass(frozen=True, slots=True)
class Exchange:
    """One step of the transcript: a command and the reply that answered it.

    `sent` is None for the greeting (and for the TLS handshake); `reply` is None when no
    reply came; `remote` is False for a reply mailgate decided itself (a timeout, a lost
    connection, a failed handshake), which the server never sent.
    """

    stage: str
    sent: str | None
    reply: Reply | None
    remote: bool = True
    note: str = ""

    def to_json(self, lang: str) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "sent": self.sent,
            "reply": _reply_json(self.reply),
            "remote": self.remote,
            "note": self.note or None,
            "explanation": _explain(self.reply, lang) if self.reply is not None else [],
        }


@dataclass
class Attempt:
    """One connection attempt: to which address, and everything said on it."""

    host: str
    preference: int | None  # None: not an MX host (an implicit MX, or a host target)
    address: str
    port: int
    error: str = ""  # why no connection could be made ("" when one was)
    transcript: list[Exchange] = field(default_factory=list)
    tls: TLSInfo | None = None
    capabilities: Capabilities | None = None
    established: bool = False  # EHLO/HELO (and STARTTLS when required) went through
    outcome: Outcome | None = None  # the recipient's outcome, when there was a RCPT
    end: Outcome | None = None  # why the session ended, when it was not a plain QUIT

    @property
    def connected(self) -> bool:
        return not self.error

    @property
    def answered(self) -> bool:
        """Whether a delivery would stop here rather than try the next host.

        Not after a connection failure, a timeout or a 4xx before the session was
        established (greeting, EHLO, STARTTLS): those move delivery on to the next host.
        """
        if not self.connected:
            return False
        if self.established:
            return True
        return self.end is not None and self.end.is_permanent

    @property
    def server(self) -> str:
        where = f"[{self.address}]:{self.port}"
        return where if self.host.strip("[]") == self.address else f"{self.host} {where}"

    def to_json(self, lang: str) -> dict[str, Any]:
        return {
            "host": self.host,
            "preference": self.preference,
            "address": self.address,
            "port": self.port,
            "connected": self.connected,
            "error": self.error or None,
            "established": self.established,
            "tls": self.tls.to_json() if self.tls else None,
            "capabilities": _caps_json(self.capabilities),
            "transcript": [x.to_json(lang) for x in self.transcript],
        }


def _caps_json(caps: Capabilities | None) -> dict[str, Any] | None:
    if caps is None:
        return None
    return {
        "esmtp": caps.esmtp,
        "keywords": [f"{k} {p}".strip() for k, p in caps.keywords],
        "starttls": caps.starttls,
        "pipelining": caps.pipelining,
        "size_limit": caps.size_limit,
        "8bitmime": caps.eightbitmime,
        "smtputf8": caps.smtputf8,
        "dsn": caps.dsn,
        "chunking": caps.chunking,
        "enhanced_status_codes": caps.enhanced_status_codes,
        "auth": sorted(caps.auth),
    }


_STAGE_OF = {"EHLO": "ehlo", "HELO": "helo", "STARTTLS": "starttls", "MAIL": "mail",
             "RCPT": "rcpt", "RSET": "rset", "QUIT": "quit", "DATA": "data", "BDAT": "bdat"}


def _stage(command: str) -> str:
    verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
    return _STAGE_OF.get(verb, verb.lower())


class _Recorder:
    """Pairs the commands the session sends with the replies that come back, in order.

    It reads the same bytes as the session, reply by reply (SMTP answers in order, also
    when pipelined), and, like the session, drops what follows a 220 to STARTTLS.
    """

    def __init__(self) -> None:
        self.awaiting: deque[tuple[str, str | None]] = deque([("greeting", None)])
        self.exchanges: list[Exchange] = []
        self._buf = bytearray()
        self._lines: list[str] = []
        self._broken = False

    def sent(self, data: bytes) -> None:
        # In verify-only mode everything the session writes is a command line.
        for raw in data.split(b"\r\n")[:-1]:
            line = raw.decode("utf-8", "replace")
            self.awaiting.append((_stage(line), line))

    def received(self, data: bytes) -> None:
        if self._broken:
            return
        self._buf += data
        while (nl := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:nl]).removesuffix(b"\r")
            del self._buf[: nl + 1]
            line = raw.decode("utf-8", "replace")
            try:
                _, last, _ = parse_reply_line(line)
            except ReplyError:
                self._broken = True  # the session ends it with a protocol error
                return
            self._lines.append(line)
            if not last:
                continue
            text = "\n".join(self._lines)
            self._lines.clear()
            try:
                reply = parse_reply(text)
            except ReplyError:
                self._broken = True
                return
            stage, command = self.awaiting.popleft() if self.awaiting else ("connection", None)
            self.exchanges.append(Exchange(stage, command, reply))
            if stage == "starttls" and reply.code == 220:
                self._buf.clear()  # RFC 3207 5: nothing read before the handshake counts
                return

    def note(self, stage: str, note: str) -> None:
        self.exchanges.append(Exchange(stage, None, None, note=note))

    def closed(self, reason: Outcome | None) -> None:
        """The session ended: a local reason answers what was waiting; the rest got nothing."""
        if reason is not None and not reason.remote:
            stage, command = (
                self.awaiting.popleft() if self.awaiting and reason.stage != "tls"
                else (reason.stage, None)
            )
            self.exchanges.append(Exchange(stage, command, reason.reply, remote=False))
        while self.awaiting:
            stage, command = self.awaiting.popleft()
            self.exchanges.append(Exchange(stage, command, None))


def _tls_info(writer: asyncio.StreamWriter, verified: bool) -> TLSInfo | None:
    obj = writer.get_extra_info("ssl_object")
    if obj is None:
        return None
    cipher = obj.cipher()
    der = obj.getpeercert(binary_form=True)
    return TLSInfo(obj.version() or "", cipher[0] if cipher else "",
                   cipher[2] if cipher else None,
                   CertInfo.from_der(der) if der else None, verified)


def _verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    """As delivery's `verify`: a chain to a trusted CA (`ca_file`, else the system's
    store) and a certificate naming the host."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"--ca-file {ca_file}: not a PEM file of CA certificates ({exc})."
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def _converse(attempt: Attempt, config: ClientConfig, envelope: Envelope | None,
                    timeout: float, verifying: ssl.SSLContext | None = None) -> None:
    """Connect to the attempt's address and run the verify-only session to its end."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(attempt.address, attempt.port, limit=1 << 20), timeout
        )
    except TimeoutError:
        attempt.error = f"no connection within {timeout:g} s"
        return
    except OSError as exc:
        code = exc.errno
        known = isinstance(code, int) and code > 0
        attempt.error = os.strerror(code) if code and known else str(exc) or type(exc).__name__
        return
    session = ClientSession(config)
    rec = _Recorder()
    attempt.transcript = rec.exchanges
    if envelope is not None:
        session.send(envelope, b"")
    session.quit()
    sni = None if attempt.host.strip("[]") == attempt.address else attempt.host
    if verifying is not None:
        sni = attempt.host.strip("[]")  # an IP address is checked against the IP SANs

    async def flush() -> None:
        out = session.data_to_send()
        if out:
            rec.sent(out)
            writer.write(out)
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.drain()

    tls_broken = False
    try:
        while True:
            while (ev := session.next_event()) is not NEED_DATA:
                if isinstance(ev, StartTLS):
                    await flush()
                    try:
                        await asyncio.wait_for(
                            writer.start_tls(verifying or opportunistic_context(),
                                             server_hostname=sni),
                            timeout,
                        )
                    except (OSError, ssl.SSLError, TimeoutError) as exc:
                        tls_broken = True
                        session.tls_failed(tls_failure(exc))
                    else:
                        attempt.tls = _tls_info(writer, verifying is not None)
                        rec.note("tls", str(attempt.tls or ""))
                        session.tls_established()
                elif isinstance(ev, Established):
                    attempt.established = True
                    attempt.capabilities = ev.capabilities
                elif isinstance(ev, MessageResult):
                    attempt.outcome = ev.results[0].outcome
                elif isinstance(ev, Closed):
                    attempt.end = ev.reason
                    rec.closed(ev.reason)
            await flush()
            if session.closed:
                break
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                session.abort()
                continue
            except (OSError, ssl.SSLError):
                data = b""
            if data:
                rec.received(data)
            session.receive_data(data)
    finally:
        await close(writer, tls_broken, 2.0)
    if attempt.capabilities is None and session.capabilities.esmtp:
        attempt.capabilities = session.capabilities


# --- probe: the report ------------------------------------------------------------------

ProbeResult = Literal["accepted", "ready", "refused", "temporary", "no_answer", "null_mx",
                      "dns_temp_fail", "dns_perm_fail"]

_PROBE_EXIT: dict[str, int] = {
    "accepted": 0, "ready": 0, "refused": 1, "null_mx": 1, "dns_perm_fail": 1,
    "temporary": EX_TEMPFAIL, "no_answer": EX_TEMPFAIL, "dns_temp_fail": EX_TEMPFAIL,
}


@dataclass
class ProbeReport:
    """What a probe found: the route, each connection attempt, and the verdict."""

    target: Target
    route: Route
    starttls: StartTLSPolicy = "may"
    mail_from: str | None = None
    rcpt: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        """The attempt that decided: the one that answered, else the last that connected."""
        return next((a for a in reversed(self.attempts) if a.connected), None)

    @property
    def result(self) -> ProbeResult:
        return self._decide()[0]

    @property
    def stage(self) -> str | None:
        """Where the verdict was decided: greeting, ehlo, starttls, mail, rcpt, ..."""
        return self._decide()[1]

    @property
    def reply(self) -> Reply | None:
        """The reply the verdict rests on (a remote one, or one mailgate decided)."""
        return self._decide()[2]

    @property
    def exit_status(self) -> int:
        """0 accepted (or ready), 1 refused (or null MX, no route), 75 temporary."""
        return _PROBE_EXIT[self.result]

    def _decide(self) -> tuple[ProbeResult, str | None, Reply | None]:
        route = self.route
        if isinstance(route, NullMX):
            return "null_mx", None, route.reply()
        if isinstance(route, TempFail):
            return "dns_temp_fail", None, route.reply()
        if isinstance(route, PermFail):
            return "dns_perm_fail", None, route.reply()
        final = self.final
        if final is None:
            return "no_answer", "connection", None
        out = final.outcome if final.established and self.rcpt is not None else final.end
        if final.established and self.rcpt is None:
            return "ready", None, None
        if out is None:  # defensive: an established session with a RCPT always has one
            return "temporary", "connection", None
        if out.is_success:
            return "accepted", out.stage, out.reply
        return ("refused" if out.is_permanent else "temporary"), out.stage, out.reply

    def verdict(self, lang: str = "en") -> str:
        result, stage, reply = self._decide()
        final = self.final
        server = final.server if final is not None else self.target.name
        kw: dict[str, object] = {
            "server": server, "rcpt": self.rcpt or "", "sender": self.mail_from or "",
            "reply": str(reply) if reply is not None else "", "stage": stage or "",
            "domain": self.route.domain, "target": self.target.name,
            "tried": len(self.attempts), "reason": getattr(self.route, "reason", ""),
            "code": reply.code if reply is not None else "",
            "enhanced": (reply.enhanced or "") if reply is not None else "",
            "tls": str(final.tls) if final is not None and final.tls else _t(lang, "tls_none"),
        }
        if result == "refused":
            which = stage if stage in ("rcpt", "mail") else "session"
            return _t(lang, f"probe.refused.{which}", **kw)
        if result == "no_answer":
            return _t(lang, f"probe.no_answer.{self.target.kind}", **kw)
        return _t(lang, f"probe.{result}", **kw)

    def to_json(self, lang: str = "en") -> dict[str, Any]:
        final = self.final
        direct = self.target.kind == "host"
        return {
            "target": {"name": self.target.name, "kind": self.target.kind,
                       "port": self.target.port},
            "lang": lang,
            "starttls": self.starttls,
            "mail_from": self.mail_from,
            "rcpt": self.rcpt,
            "route": _route_json(self.route, lang, self.target.port, direct),
            "attempts": [a.to_json(lang) for a in self.attempts],
            "server": None if final is None else {
                "host": final.host, "address": final.address, "port": final.port,
            },
            "tls": final.tls.to_json() if final is not None and final.tls else None,
            "capabilities": _caps_json(final.capabilities if final is not None else None),
            "verdict": {
                "result": self.result,
                "stage": self.stage,
                "reply": _reply_json(self.reply),
                "text": self.verdict(lang),
                "explanation": _explain(self.reply, lang) if self.reply is not None else [],
            },
            "exit_status": self.exit_status,
        }

    def render(self, fmt: str = "text", lang: str = "en") -> str:
        if fmt == "json":
            return json.dumps(self.to_json(lang), ensure_ascii=False, indent=2) + "\n"
        t = self.target
        kind = _t(lang, f"kind_{t.kind}", port=t.port)
        lines = [f"{_label(lang, 'target')}{t.name}{_t(lang, 'paren', x=kind)}"]
        direct = t.kind == "host"
        route = self.route
        if isinstance(route, NullMX | TempFail | PermFail):
            lines.extend(_route_text(route, lang, t.port, direct))
        else:
            kind_name = _route_kind(route, direct)
            lines.append(f"{_label(lang, 'route')}{_t(lang, 'kind.' + kind_name)} ({kind_name})"
                         f": {_meaning(route, lang, direct)}")
        for i, a in enumerate(self.attempts, 1):
            pref = (_t(lang, "paren", x=f"{_t(lang, 'preference')} {a.preference}")
                    if a.preference is not None else "")
            lines.append(f"{_t(lang, 'attempt')} {i}{_t(lang, 'sep')}{a.server}{pref}")
            if not a.connected:
                lines.append(f"  {_t(lang, 'cannot_connect')}{_t(lang, 'sep')}{a.error}")
                continue
            lines.extend(_transcript_text(a.transcript, lang))
        final = self.final
        if final is not None:
            tls = str(final.tls) if final.tls else _t(lang, "not_used")
            lines.append(f"{_label(lang, 'tls')}{tls}")
            cert = final.tls.certificate if final.tls else None
            if cert is not None:
                lines.append(f"{_label(lang, 'certificate')}" + _t(
                    lang, "cert_line", subject=cert.subject or "-",
                    names=", ".join(cert.names) or "-", issuer=cert.issuer or "-",
                    until=cert.not_after))
                assert final.tls is not None
                check = (_t(lang, "cert_verified", host=final.host.strip("[]"))
                         if final.tls.verified else _t(lang, "cert_unverified"))
                lines.append(f"  {check}")
            caps = final.capabilities
            words = ", ".join(f"{k} {p}".strip() for k, p in caps.keywords) if caps else ""
            lines.append(f"{_label(lang, 'capabilities')}{words or _t(lang, 'none')}")
        lines.append(f"{_label(lang, 'verdict')}{self.verdict(lang)}")
        return "\n".join(lines) + "\n"


def _transcript_text(exchanges: list[Exchange], lang: str) -> list[str]:
    out: list[str] = []
    for x in exchanges:
        if x.note:
            out.append(f"  == {_t(lang, 'tls_up', tls=x.note)}")
            continue
        if x.sent is not None:
            out.append(f"  C: {x.sent}")
        if x.reply is None:
            out.append(f"  S: {_t(lang, 'no_reply')}")
            continue
        if x.remote:
            wire = _reply_wire(x.reply)
            out.append(f"  S: {wire[0]}")
            out.extend(f"     {w}" for w in wire[1:])
        else:
            out.append(f"  *  {x.reply} {_t(lang, 'local_reply')}")
        out.extend(_explanation_lines(x.reply, lang, "       = "))
    return out


async def probe(
    target: str,
    *,
    resolver: Resolver,
    port: int = 25,
    helo: str = "localhost",
    mail_from: str | None = None,
    rcpt: str | None = None,
    starttls: StartTLSPolicy = "may",
    timeout: float = 30.0,
    verify: bool = False,
    ca_file: Path | None = None,
) -> ProbeReport:
    """Probe a domain's mail hosts (or one host) as a delivery would, without DATA.

    `verify` requires TLS and checks the certificate as the TLS level `verify` does
    (against `ca_file`, or the system's CAs): a certificate that does not check out ends
    the attempt with 451 4.7.5 and OpenSSL's reason, and the next host is tried.
    ValueError names bad input: the target, the addresses, the HELO name, the timeout.
    `mail_from` needs `rcpt` (MAIL alone proves little and the session pairs them);
    `rcpt` without `mail_from` uses the null sender `<>`, as a bounce would.
    """
    if timeout <= 0:
        raise ValueError(f"the timeout must be positive, not {timeout:g} seconds.")
    if verify and starttls == "never":
        raise ValueError("--verify checks the certificate TLS shows: it cannot go with "
                         "--no-starttls.")
    if ca_file is not None and not verify:
        raise ValueError("--ca-file is what --verify trusts: give --verify too.")
    verifying = _verifying_context(ca_file) if verify else None
    if verify:
        starttls = "require"
    t = parse_target(target, port)
    if mail_from is not None and rcpt is None:
        raise ValueError("--from needs --rcpt: the probe sends MAIL FROM only with a RCPT TO.")
    envelope: Envelope | None = None
    if rcpt is not None:
        try:
            envelope = Envelope.make(mail_from or "", [rcpt])
        except ValueError as exc:
            which = "--rcpt" if _bad_address(rcpt) else "--from"
            value = rcpt if which == "--rcpt" else mail_from
            raise ValueError(f"{which} {value!r}: {exc}") from None
    try:
        config = ClientConfig(helo_name=helo, tls=starttls, verify_only=True)
    except ValueError as exc:
        raise ValueError(f"--helo: {exc}") from None
    route = (await resolver.resolve(t.name) if t.kind == "domain"
             else await resolver.host_route(t.name))
    report = ProbeReport(t, route, starttls, mail_from if rcpt is not None else None, rcpt)
    if isinstance(route, NullMX | TempFail | PermFail):
        return report  # RFC 7505: a null MX is never connected to; no route, no connection
    mx = t.kind == "domain" and not isinstance(route, ImplicitMX)
    for host in _route_hosts(route):
        for address in host.addresses:
            attempt = Attempt(host.name, host.preference if mx else None, address, t.port)
            report.attempts.append(attempt)
            await _converse(attempt, config, envelope, timeout, verifying)
            if attempt.answered:
                return report
    return report


def _bad_address(address: str) -> bool:
    try:
        Envelope.make("", [address])
    except ValueError:
        return True
    return False

"""`mailgate probe TARGET`: what a mail server says to a delivery, short of a message.

`probe(target, ...)` does what a delivery does up to the point of no return: resolves the
domain (or takes HOST[:PORT] / [IP]:PORT as it is), connects to the hosts in order until
one answers, says EHLO, STARTTLS when offered (unless told not to), optionally MAIL FROM
and RCPT TO, then RSET and QUIT. It never sends DATA: the client session runs in its
verify-only mode (`ClientConfig.verify_only`), which stops every transaction after the
RCPT replies, and it runs in delivery's own shell, `transport.run_client`, with the TLS
contexts delivery uses. Every command and the reply that answered it are kept (a
recorder taps the bytes), with the explanation of each code, the TLS version and cipher,
the certificate, the server's capabilities, and a verdict. A null-MX domain is reported
without connecting anywhere.

The report renders as plain text and as JSON (docs/cli.md), in any of the knowledge
base's languages (diagnostics.py has the words and the route layout check shares).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import ssl
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailgate.codes.reply import Reply
from mailgate.delivery.diagnostics import (
    EX_TEMPFAIL,
    _ascii,
    _explain,
    _explanation_lines,
    _label,
    _meaning,
    _reply_json,
    _route_hosts,
    _route_json,
    _route_kind,
    _route_text,
    _t,
)
from mailgate.delivery.transport import (
    STAGE_TIMEOUTS,
    ConnectError,
    run_client,
    verifying_context,
)
from mailgate.dns import ImplicitMX, NullMX, PermFail, Resolver, Route, TempFail
from mailgate.smtp.client import (
    Capabilities,
    ClientConfig,
    ClientSession,
    Closed,
    Envelope,
    Established,
    Event,
    MessageResult,
    Outcome,
)

__all__ = [
    "EX_TEMPFAIL",
    "CertInfo",
    "Exchange",
    "HostTry",
    "ProbeReport",
    "ProbeResult",
    "StartTLSPolicy",
    "TLSInfo",
    "Target",
    "parse_target",
    "probe",
]

StartTLSPolicy = Literal["may", "require", "never"]


# --- targets ----------------------------------------------------------------------------


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



# --- one conversation ---------------------------------------------------------------


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
class HostTry:
    """One connection attempt: to which address, and everything said on it.

    (Not the queue's Attempt, a delivery attempt recorded for a message.)"""

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

    It is the session's observer (`ClientSession(observer=...)`): the session says each
    command line it writes and each reply it reads, so the transcript comes from the
    protocol core and no second reply parser is needed. It is also run_client's Tap, for
    the TLS handshake, which happens outside the session.
    """

    def __init__(self, attempt: HostTry, verified: bool) -> None:
        self.attempt = attempt
        self.verified = verified  # the handshake checks the certificate (--verify)
        self.awaiting: deque[tuple[str, str | None]] = deque([("greeting", None)])
        self.exchanges: list[Exchange] = []

    # ClientObserver
    def command(self, line: str, stage: str) -> None:
        self.awaiting.append((_stage(line), line))

    def reply(self, reply: Reply, stage: str) -> None:
        stage_, command = self.awaiting.popleft() if self.awaiting else ("connection", None)
        self.exchanges.append(Exchange(stage_, command, reply))

    # Tap: the bytes themselves are the session's business
    def sent(self, data: bytes) -> None:
        pass

    def received(self, data: bytes) -> None:
        pass

    def tls_up(self, ssl_object: Any) -> None:
        self.attempt.tls = _tls_info(ssl_object, self.verified)
        self.note("tls", str(self.attempt.tls or ""))

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


def _tls_info(obj: Any, verified: bool) -> TLSInfo | None:
    """What the handshake on `obj` (an ssl.SSLObject, or None) agreed on."""
    if obj is None:
        return None
    cipher = obj.cipher()
    der = obj.getpeercert(binary_form=True)
    return TLSInfo(obj.version() or "", cipher[0] if cipher else "",
                   cipher[2] if cipher else None,
                   CertInfo.from_der(der) if der else None, verified)


async def _converse(attempt: HostTry, config: ClientConfig, envelope: Envelope | None,
                    timeout: float, verifying: ssl.SSLContext | None = None) -> None:
    """Run the verify-only session with the attempt's address to its end (run_client),
    `timeout` seconds at most for the connection and for each reply."""
    rec = _Recorder(attempt, verifying is not None)
    session = ClientSession(config, observer=rec)
    if envelope is not None:
        session.send(envelope, b"")
    session.quit()  # once the RCPT is answered (RSET first), or right after EHLO
    attempt.transcript = rec.exchanges
    name = attempt.host.strip("[]")
    # No SNI for an address, and an address is checked against the IP SANs (--verify).
    sni = name if verifying is not None or name == attempt.address else attempt.host

    def on_event(ev: Event) -> None:
        if isinstance(ev, Established):
            attempt.established = True
            attempt.capabilities = ev.capabilities
        elif isinstance(ev, MessageResult):
            attempt.outcome = ev.results[0].outcome
        elif isinstance(ev, Closed):
            attempt.end = ev.reason
            rec.closed(ev.reason)

    try:
        await run_client(attempt.address, attempt.port, session, [], tls_context=verifying,
                         server_hostname=sni,
                         timeouts={**dict.fromkeys(STAGE_TIMEOUTS, timeout), "close": 2.0},
                         on_event=on_event, tap=rec)
    except ConnectError as exc:
        attempt.error = _connect_error(exc.__cause__, timeout)
        return
    if attempt.capabilities is None and session.capabilities.esmtp:
        attempt.capabilities = session.capabilities


def _connect_error(exc: BaseException | None, timeout: float) -> str:
    """Why no connection could be made, in words (the OS's for a socket error)."""
    if isinstance(exc, TimeoutError):
        return f"no connection within {timeout:g} s"
    code = exc.errno if isinstance(exc, OSError) else None
    known = isinstance(code, int) and code > 0
    return os.strerror(code) if code and known else str(exc) or type(exc).__name__


# --- the report ------------------------------------------------------------------------

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
    attempts: list[HostTry] = field(default_factory=list)

    @property
    def final(self) -> HostTry | None:
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


def _reply_wire(reply: Reply) -> list[str]:
    """The reply as the server sent it (the enhanced code on every line), one str a line."""
    return reply.to_bytes(enhanced=True).decode("utf-8", "replace").splitlines()


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
    verifying: ssl.SSLContext | None = None
    if verify:
        try:
            verifying = verifying_context(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"--ca-file {ca_file}: not a PEM file of CA certificates ({exc}).") from None
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
            attempt = HostTry(host.name, host.preference if mx else None, address, t.port)
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

"""`mailgate check DOMAIN`: where mail for a domain goes, and what that means for delivery.

`check(domain, resolver, config)` asks DNS for the Route delivery would take (mailgate.dns)
and explains it: the MX hosts with preferences and addresses, an implicit MX, a null MX
(RFC 7505: no mail at all, recipients fail at once with 556 5.1.10, nothing is connected),
or a DNS failure and what delivery does about it (deferred with 4.4.3 and retried, or
bounced with its code). With a Config it also says when the domain is local, or when a
`[routes]` entry or the relayhost sends its mail somewhere else.

It then reads the records receivers authenticate the domain's mail with (SPF, DKIM
selectors, DMARC, MTA-STS, TLS-RPT: authrecords.py) and says what is wrong with them
and how to fix it; those findings do not change the exit status, which is about routing.

The report renders as plain text and as JSON (docs/cli.md), in any of the knowledge
base's languages (diagnostics.py has the words and the route layout probe shares).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mailgate.delivery.authrecords import AuthReport, check_records
from mailgate.delivery.diagnostics import (
    EX_TEMPFAIL,
    _ascii,
    _label,
    _route_json,
    _route_text,
    _t,
)
from mailgate.dns import NullMX, PermFail, Resolver, Route, TempFail
from mailgate.textsafe import json_printable

if TYPE_CHECKING:
    from mailgate.config import Config

__all__ = ["EX_TEMPFAIL", "CheckReport", "CheckResult", "check"]

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
    auth: AuthReport | None = None  # the domain's SPF, DKIM, DMARC, ... records

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
            "authentication": self.auth.to_json(lang) if self.auth is not None else None,
            "verdict": {"result": self.result, "text": self.verdict(lang)},
            "exit_status": self.exit_status,
        }

    def render(self, fmt: str = "text", lang: str = "en") -> str:
        if fmt == "json":  # DNS text may hold C1 and bidi controls: escaped
            return json_printable(json.dumps(self.to_json(lang), ensure_ascii=False,
                                             indent=2)) + "\n"
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
        if self.auth is not None:
            lines.extend(self.auth.lines(lang))
        lines.append(f"{_label(lang, 'verdict')}{self.verdict(lang)}")
        return "\n".join(lines) + "\n"


async def check(domain: str, resolver: Resolver, config: Config | None = None, *,
                selectors: Sequence[str] = (), records: bool = True) -> CheckReport:
    """The route for `domain`, with the configuration's say when a Config is given, and
    (`records`) its authentication records, DKIM for `selectors` and the [dkim] keys.

    ValueError when `domain` is not a domain name (or an address literal), or a
    selector is not one.
    """
    domain = _valid_domain(domain)
    for selector in selectors:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*", selector) or len(
                selector) > 200:
            raise ValueError(f"--selector {selector!r} is not a selector (letters, digits, "
                             "hyphens and dots, like s2026).")
    route, auth = await asyncio.gather(
        resolver.resolve(domain),
        check_records(domain, resolver, config, selectors)
        if records and not domain.startswith("[") else _none())
    report = CheckReport(domain, route, auth=auth)
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



async def _none() -> None:
    return None


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



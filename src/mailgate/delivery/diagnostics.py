"""What `mailgate check` and `mailgate probe` share: their words, the knowledge base on a
reply, and how a Route is told (as text lines and as JSON).

The words are data: codes/data/<lang>/diagnostics.toml, read through the registry; the
explanations of codes come from the codes knowledge base. check.py and probe.py import
this module; it imports neither.
"""

from __future__ import annotations

import re
from typing import Any

from mailgate.codes import registry as reg
from mailgate.codes.reply import Reply, ReplyError
from mailgate.dns import ImplicitMX, MXHost, MXHosts, PermFail, Route, TempFail

__all__ = ["EX_TEMPFAIL"]

EX_TEMPFAIL = 75  # sysexits.h: temporary failure, try again later

# --- words ------------------------------------------------------------------------------

# The words are data: codes/data/<lang>/diagnostics.toml, read through the registry.


def _t(lang: str, key: str, **kw: object) -> str:
    table = reg.words(lang if lang in reg.languages() else "en", "diagnostics")
    return table[key].format(**kw)


def _label(lang: str, key: str) -> str:
    return _t(lang, key) + _t(lang, "sep")


# --- replies and routes ---------------------------------------------------------------


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


# --- names -----------------------------------------------------------------------------

_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


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



"""The settings that fit mailgate beside a mail store: [maildir] (who owns each
Maildir, and where it is), [auth] (whom SMTP AUTH asks), `server.user` (whom `serve`
runs as) and the "lmtp:" routes' check that they name local domains.

Each builder reads its table through the `_Reader`, like those in sections.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import cast

from mailgate.config.reader import (
    _choice,
    _duration,
    _key,
    _mailbox,
    _Reader,
    _string,
)
from mailgate.config.syntax import _Bad, _domain
from mailgate.config.values import (
    AUTH_BACKENDS,
    AuthBackend,
    AuthConfig,
    Domains,
    MaildirOwner,
    Route,
)

__all__ = ["_auth", "_check_lmtp_routes", "_maildir", "_server_user"]

_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?\Z", re.IGNORECASE)
_IDS_RE = re.compile(r"(\d{1,10}):(\d{1,10})\Z")
_OWNER_HELP = ('a system user name like "vmail", or "uid:gid" like "5000:5000"')
_TEMPLATE_RE = re.compile(r"%(.)")


def _user_name(value: object) -> str:
    text = _string(value)
    if not _USER_RE.match(text):
        raise _Bad("is not a user name (letters, digits, _ . -; up to 32)")
    return text


def _server_user(value: object) -> str:
    """`server.user`: a system user name; "root" keeps root, said explicitly."""
    return _user_name(value)


def _owner(value: object) -> tuple[str | None, int | None, int | None]:
    text = _string(value)
    ids = _IDS_RE.match(text)
    if ids:
        uid, gid = int(ids.group(1)), int(ids.group(2))
        if uid == 0 or gid == 0:
            raise _Bad("must not be root (0): mailgate never writes mail as root")
        if uid > 2**31 or gid > 2**31:
            raise _Bad("is not a uid:gid pair")
        return None, uid, gid
    try:
        name = _user_name(text)
    except _Bad:
        raise _Bad(f"must be {_OWNER_HELP}") from None
    if name == "root":
        raise _Bad("must not be root: mailgate never writes mail as root")
    return name, None, None


def _template(value: object) -> str:
    text = _string(value)
    if not text.startswith(("/", "~/")):
        raise _Bad('must be an absolute path or start with "~/" (the owner\'s home), like '
                   '"/var/vmail/%d/%n" or "~/Maildir"')
    for code in _TEMPLATE_RE.findall(text):
        if code not in "dn%":
            raise _Bad(f"%{code} is not a placeholder: %d is the domain, %n the local part, "
                       "%% a percent sign")
    if any(part == ".." for part in text.split("/")) or "\0" in text:
        raise _Bad('must not contain ".." or NUL')
    return text


def _maildir(t: Mapping[str, object], r: _Reader, domains: Domains
             ) -> Mapping[str, MaildirOwner]:
    """[maildir]: "domain" or "user@domain" = "system" | { owner = ..., path = ... }."""
    entries: dict[str, MaildirOwner] = {}
    for name, value in t.items():
        key = _key("maildir", name)
        try:
            target = _mailbox(name) if "@" in name else _domain(name)
        except _Bad as exc:
            r.report(key, value, f"the key {exc}; [maildir] keys are local domains or "
                     "addresses")
            continue
        domain = target.rpartition("@")[2]
        if domain not in domains.local:
            r.report(key, value, f"{domain} is not one of domains.local "
                     f"({', '.join(domains.local)})")
            continue
        if target in entries:
            r.report(key, value, "repeats an entry of [maildir]")
            continue
        if value == "system":
            entries[target] = MaildirOwner(target, system=True)
            continue
        if not isinstance(value, dict):
            r.report(key, value, 'must be "system" (each local part is a system user, '
                     'mail goes to its ~/Maildir) or a table like { owner = "vmail", '
                     'path = "/var/vmail/%d/%n" }')
            continue
        path = ("maildir", name)
        r.check_keys(value, path, ("owner", "path"))
        if "owner" not in value:
            r.report_key(_key(*path, "owner"), f"missing; give {_OWNER_HELP}")
            continue
        nobody: tuple[str | None, int | None, int | None] = (None, None, None)
        user, uid, gid = r.get(value, path, "owner", _owner, nobody)
        template = r.get(value, path, "path", _template, None)
        if user is None and uid is None:
            continue  # reported
        if uid is not None and (template is None or template.startswith("~/")):
            r.report_key(_key(*path, "path"), "an owner given as uid:gid has no home: "
                         'give an absolute path, like "/var/vmail/%d/%n"')
            continue
        entries[target] = MaildirOwner(target, user=user, uid=uid, gid=gid, path=template)
    return MappingProxyType(entries)


def _auth(t: Mapping[str, object], r: _Reader) -> AuthConfig:
    path = ("auth",)
    d = AuthConfig()
    backend = cast(AuthBackend, r.get(t, path, "backend", _choice(AUTH_BACKENDS),
                                      str(d.backend)))
    socket = r.get(t, path, "dovecot_socket", _absolute, d.dovecot_socket)
    timeout = r.get(t, path, "timeout", _duration(False), d.timeout)
    if backend != "dovecot" and "dovecot_socket" in t:
        r.report_key("auth.dovecot_socket", 'is set but auth.backend is not "dovecot"')
    return AuthConfig(backend=backend, dovecot_socket=socket, timeout=timeout)


def _absolute(value: object) -> Path:
    text = _string(value)
    if not text.startswith("/"):
        raise _Bad('must be an absolute path, like "/run/dovecot/auth-client"')
    return Path(text)


def _check_lmtp_routes(routes: Mapping[str, Route], r: _Reader, domains: Domains,
                       maildir: Mapping[str, MaildirOwner]) -> None:
    """An "lmtp:" route delivers a local domain's mail: its domain must be local, and
    a [maildir] entry for it would never be used."""
    for domain, route in routes.items():
        if route.lmtp and domain not in domains.local:
            r.report(_key("routes", domain), route.nexthop,
                     f"LMTP delivers local mail, and {domain} is not one of domains.local "
                     f"({', '.join(domains.local)})")
        elif route.lmtp:
            for key in maildir:
                if key.rpartition("@")[2] == domain:
                    r.report_key(_key("maildir", key), f"{domain} is delivered by LMTP "
                                 f"({_key('routes', domain)}), never into Maildirs; drop "
                                 "one of the two")

"""Building the `Config` from the TOML document, one function per section.

Each builder reads its table through the `_Reader`, so that every problem in the file is
reported at once, and checks what one key alone cannot say (a mailbox outside the local
domains, a per-IP limit above the total, relayhost AUTH without a relayhost).
`_build` raises `ConfigError` with all problems, or returns the Config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import cast

from mailgate.config.aliases import (
    DEFAULT_ALIASES,
    AliasError,
    Aliases,
    expand,
    parse_aliases_file,
    parse_target,
)
from mailgate.config.dkim import _dkim
from mailgate.config.mailstore import _auth, _check_lmtp_routes, _maildir, _server_user
from mailgate.config.queue_section import data_dir_setting, queue_section
from mailgate.config.reader import (
    _ROOT_KEYS,
    _SECTIONS,
    _boolean,
    _choice,
    _domain_value,
    _duration,
    _host_name,
    _integer,
    _key,
    _listen_address,
    _mailbox,
    _nameserver,
    _network,
    _port,
    _Reader,
    _relayhost,
    _route,
    _size,
    _string,
    _web_address,
)
from mailgate.config.syntax import ConfigError, _Bad, _domain, _join_hostport, _nexthop
from mailgate.config.values import (
    BARE_NEWLINES,
    DEFAULT_LISTENERS,
    LOG_FORMATS,
    LOG_LEVELS,
    MIN_MESSAGE_SIZE,
    MIN_RECIPIENTS,
    ROLES,
    TLS_LEVELS,
    AuthChecks,
    BareNewlines,
    Config,
    Delivery,
    DNSConfig,
    Domains,
    Limits,
    Listener,
    LogConfig,
    LogFormat,
    LogLevel,
    Policy,
    Relay,
    Relayhost,
    Role,
    Route,
    ServerConfig,
    Submission,
    Timeouts,
    TLSConfig,
    TLSLevel,
    WebConfig,
    auto_workers,
)

_AUTH_CHECK_DEFAULTS = {name: getattr(AuthChecks(), name) for name in
                        ("spf", "dkim", "dmarc", "arc", "dmarc_reject", "spf_reject")}


def _workers(value: object) -> int:
    """`[server] workers`: a whole number from 1, or "auto" (`auto_workers`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_workers()
    if isinstance(value, str):
        raise _Bad('must be a whole number or "auto"')
    return _integer(1)(value)


def _build(doc: Mapping[str, object], r: _Reader, source: str | None) -> Config:
    r.check_keys(doc, (), _ROOT_KEYS)
    hostname = r.get(doc, (), "hostname", _domain_value, "localhost")
    data_dir = data_dir_setting(doc, r)
    listeners = _listeners(doc, r)
    tls = _tls(r.section(doc, "tls"), r)
    domains = _domains(r.section(doc, "domains"), r)

    relay_table = r.section(doc, "relay")
    relay = Relay(r.get_list(relay_table, ("relay",), "networks", _network,
                             Relay().networks, example='["127.0.0.0/8", "::1/128"]'))

    limits = _limits(r.section(doc, "limits"), r)

    t = r.section(doc, "timeouts")
    dt = Timeouts()
    timeouts = Timeouts(
        command=r.get(t, ("timeouts",), "command", _duration(False), dt.command),
        data_block=r.get(t, ("timeouts",), "data_block", _duration(False), dt.data_block),
        min_data_rate=r.get(t, ("timeouts",), "min_data_rate", _integer(0), dt.min_data_rate),
        tls_handshake=r.get(t, ("timeouts",), "tls_handshake", _duration(False),
                            dt.tls_handshake),
        stress_command=r.get(t, ("timeouts",), "stress_command", _duration(False),
                             dt.stress_command),
        stress_data_block=r.get(t, ("timeouts",), "stress_data_block", _duration(False),
                                dt.stress_data_block),
    )
    submission = _submission(r.section(doc, "submission"), r, domains)

    dns_table = r.section(doc, "dns")
    dns = DNSConfig(r.get_list(dns_table, ("dns",), "nameservers", _nameserver, (),
                               example='["127.0.0.1:5353"]'))

    p = r.section(doc, "policy")
    policy = Policy(
        sender_null_mx_check=r.get(p, ("policy",), "sender_null_mx_check", _boolean, True),
        recipient_null_mx_check=r.get(p, ("policy",), "recipient_null_mx_check", _boolean,
                                      True),
        bare_newlines=cast(BareNewlines, r.get(p, ("policy",), "bare_newlines",
                                               _choice(BARE_NEWLINES), "normalize")),
    )

    a = r.section(doc, "auth_checks")
    auth_checks = AuthChecks(**{name: r.get(a, ("auth_checks",), name, _boolean, default)
                                for name, default in _AUTH_CHECK_DEFAULTS.items()})

    delivery = _delivery(r.section(doc, "delivery"), r)
    routes = _routes(r.section(doc, "routes"), r, delivery.smtp_port)
    tls_policy = _tls_policy(r.section(doc, "tls_policy"), r, delivery)

    w = r.section(doc, "web")
    default_web: tuple[str, int] | None = ("127.0.0.1", 8025)
    web_address = r.get(w, ("web",), "address", _web_address, default_web)
    allowed_hosts = r.get_list(w, ("web",), "allowed_hosts", _host_name, (),
                               example='["mail.example.org"]')
    web = (WebConfig(False, "", 0) if web_address is None
           else WebConfig(True, *web_address, tuple(dict.fromkeys(allowed_hosts))))

    s = r.section(doc, "server")
    server = ServerConfig(r.get(s, ("server",), "workers", _workers, auto_workers()),
                          r.get(s, ("server",), "user", _server_user, None))
    maildir = _maildir(r.section(doc, "maildir"), r, domains)
    _check_lmtp_routes(routes, r, domains, maildir)
    auth = _auth(r.section(doc, "auth"), r)
    dkim = _dkim(r.section(doc, "dkim"), r)

    lg = r.section(doc, "log")
    log = LogConfig(cast(LogLevel, r.get(lg, ("log",), "level", _choice(LOG_LEVELS), "info")),
                    cast(LogFormat, r.get(lg, ("log",), "format", _choice(LOG_FORMATS), "text")))
    aliases = _aliases(r.section(doc, "aliases"), r, domains)
    queue = queue_section(doc, r)

    if r.problems:
        raise ConfigError(r.problems)
    return Config(hostname=hostname, data_dir=data_dir, listen=listeners, tls=tls,
                  domains=domains, relay=relay, limits=limits, timeouts=timeouts, dns=dns,
                  policy=policy, auth_checks=auth_checks, submission=submission,
                  delivery=delivery, routes=routes,
                  tls_policy=tls_policy, web=web, server=server, log=log, aliases=aliases,
                  queue=queue, maildir=maildir,
                  auth=auth, dkim=dkim, source=source)


def _listeners(doc: Mapping[str, object], r: _Reader) -> tuple[Listener, ...]:
    if "listen" not in doc:
        return DEFAULT_LISTENERS
    value = doc["listen"]
    if isinstance(value, dict):
        r.report_key("listen", "must be written [[listen]] (double brackets), one table per "
                     "listener, each with role and address")
        return DEFAULT_LISTENERS
    if not isinstance(value, list) or not value:
        r.report("listen", value, "must be one or more [[listen]] tables, each with role "
                 "and address")
        return DEFAULT_LISTENERS
    listeners: list[Listener] = []
    seen: dict[tuple[str, int], int] = {}
    for index, table in enumerate(value):
        path: tuple[str | int, ...] = ("listen", index)
        if not isinstance(table, dict):
            r.report(_key(*path), table, "must be a table with role and address")
            continue
        r.check_keys(table, path, _SECTIONS["listen"])
        for name in ("role", "address"):
            if name not in table:
                r.report_key(_key(*path, name), "missing; each [[listen]] needs role "
                             f"({', '.join(ROLES)}) and address (like \"127.0.0.1:2525\")")
        role = r.get(table, path, "role", _choice(ROLES), None)
        address = r.get(table, path, "address", _listen_address, None)
        if address is not None and address in seen:
            r.report(_key(*path, "address"), table["address"],
                     f"already used by {_key('listen', seen[address])}")
        elif address is not None:
            seen[address] = index
        if role is not None and address is not None:
            listeners.append(Listener(cast(Role, role), *address))
    return tuple(listeners)


def _tls(t: Mapping[str, object], r: _Reader) -> TLSConfig:
    cert = r.get(t, ("tls",), "cert", r.file, None)
    key = r.get(t, ("tls",), "key", r.file, None)
    if "key" in t and "cert" not in t:
        r.report_key("tls.key", "is set but tls.cert is not; give the certificate too, or "
                     "neither for a self-signed certificate")
    return TLSConfig(cert, key if key is not None else cert)


def _domains(d: Mapping[str, object], r: _Reader) -> Domains:
    path = ("domains",)
    local = r.get_list(d, path, "local", _domain_value, Domains().local,
                       example='["example.org"]')
    mailboxes = r.get_list(d, path, "mailboxes", _mailbox, (),
                           example='["user@example.org"]')
    if r.ok("domains.local", "domains.mailboxes"):
        written = d.get("mailboxes")
        for index, mailbox in enumerate(mailboxes):
            domain = mailbox.rpartition("@")[2]
            if domain not in local:
                shown = written[index] if isinstance(written, list) else mailbox
                r.report(_key("domains", "mailboxes", index), shown,
                         f"{domain} is not one of domains.local ({', '.join(local)})")
    postmaster = r.get(d, path, "postmaster", _mailbox, None)
    if postmaster is not None and r.ok("domains.local", "domains.postmaster"):
        domain = postmaster.rpartition("@")[2]
        if domain not in local:
            r.report("domains.postmaster", d.get("postmaster"),
                     f"must be a local address: {domain} is not one of domains.local "
                     f"({', '.join(local)})")
    # catch_all: true (every local domain), false, or a list of local domains. Left out,
    # it is true only for the zero-config domain list (localhost, which only this host
    # reaches); a configuration that names its domains accepts known recipients only.
    catch_all, catch_all_domains = "local" not in d, frozenset[str]()
    if isinstance(d.get("catch_all"), list):
        catch_all = False
        catch_all_domains = frozenset(r.get_list(d, path, "catch_all", _domain_value, (),
                                                 example='["example.org"]'))
        for name in sorted(catch_all_domains - set(local)):
            r.report("domains.catch_all", d["catch_all"],
                     f"{name} is not one of domains.local ({', '.join(local)})")
    else:
        catch_all = r.get(d, path, "catch_all", _boolean_or_domains, catch_all)
    delimiter = r.get(d, path, "recipient_delimiter", _delimiter, "+")
    return Domains(
        local=tuple(dict.fromkeys(local)),
        catch_all=catch_all,
        mailboxes=frozenset(mailboxes),
        postmaster=postmaster,
        catch_all_domains=catch_all_domains,
        recipient_delimiter=delimiter,
        aliases_file=r.get(d, path, "aliases_file", r.file, None),
    )


def _boolean_or_domains(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad('must be true, false, or a list of local domains like ["example.org"]')
    return value


def _delimiter(value: object) -> str:
    text = _string(value)
    if len(text) > 1 or (text and (text.isalnum() or text in "@.\"" or not text.isprintable()
                                   or text.isspace())):
        raise _Bad('must be one character such as "+" or "-" (not a letter, digit, @ or '
                   'dot), or "" for none')
    return text


def _aliases(t: Mapping[str, object], r: _Reader, domains: Domains) -> Aliases:
    """[aliases] and domains.aliases_file, merged, checked for loops once loaded."""
    table: dict[str, tuple[str, ...]] = dict(DEFAULT_ALIASES)
    where: dict[str, str] = {}
    sources: list[tuple[str, Mapping[str, object]]] = []
    if domains.aliases_file is not None:
        entries, problems = parse_aliases_file(domains.aliases_file)
        for problem in problems:
            r.report_key("domains.aliases_file", problem)
        sources.append((str(domains.aliases_file), dict(entries)))
    sources.append(("[aliases]", t))
    for origin, entries_ in sources:
        for name, value in entries_.items():
            key = _key("aliases", name) if origin == "[aliases]" else f"{origin}: {name}"
            try:
                alias = _alias_key(name, domains)
                items = value if isinstance(value, list | tuple) else [value]
                if not items:
                    raise _Bad("must name at least one address")
                targets = tuple(dict.fromkeys(
                    item if origin != "[aliases]" else parse_target(item) for item in items))
            except _Bad as exc:
                r.report(key, value, str(exc))
                continue
            if alias in where:
                r.report(key, value, f"{alias} is already defined in {where[alias]}")
                continue
            where[alias] = origin
            table[alias] = cast(tuple[str, ...], targets)
    aliases = Aliases(MappingProxyType(table))
    for alias in table:
        local, at, domain = alias.rpartition("@")
        for dom in [domain] if at else domains.local:
            try:
                expand(aliases, local if at else alias, dom, is_local=domains.is_local,
                       delimiter=domains.recipient_delimiter)
            except AliasError as exc:
                r.report_key(_key("aliases", alias), str(exc))
                return Aliases()
    return aliases


def _alias_key(name: str, domains: Domains) -> str:
    """`info` or `info@example.org` (a local domain), as the table keys it."""
    local, at, domain = name.strip().rpartition("@")
    if not at:
        local = name.strip()
    if not local or any(c.isspace() or c in '<>",@' or not c.isprintable() for c in local):
        raise _Bad("the key must be a local part like info, or an address like "
                   '"info@example.org"')
    if not at:
        return local.lower()
    dom = _domain(domain)
    if not domains.is_local(dom):
        raise _Bad(f"the key's domain {dom} is not one of domains.local "
                   f"({', '.join(domains.local)}): only local addresses are aliased")
    return f"{local.lower()}@{dom}"


def _submission(t: Mapping[str, object], r: _Reader, domains: Domains) -> Submission:
    path = ("submission",)
    check = r.get(t, path, "sender_login_check", _boolean, True)
    grants: dict[str, tuple[str, ...]] = {}
    table = t.get("sender_addresses", {})
    if not isinstance(table, dict):
        r.report("submission.sender_addresses", table, 'must be a table of user = '
                 '["address", "@domain", ...]')
        table = {}
    for user, value in table.items():
        key = _key("submission", "sender_addresses", user)
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for item in items:
            if isinstance(item, str) and item.startswith("@"):
                try:
                    out.append("@" + _domain(item[1:]))
                except _Bad as exc:
                    r.report(key, item, str(exc))
                continue
            try:
                out.append(_mailbox(item))
            except _Bad as exc:
                r.report(key, item, str(exc))
        grants[str(user).lower()] = tuple(out)
    return Submission(sender_login_check=check,
                      sender_addresses=MappingProxyType(grants))


def _limits(t: Mapping[str, object], r: _Reader) -> Limits:
    path = ("limits",)
    d = Limits()
    limits = Limits(
        message_size=r.get(t, path, "message_size",
                           _size(MIN_MESSAGE_SIZE, "64KiB", " (RFC 5321 4.5.3.1.7)"),
                           d.message_size),
        recipients=r.get(t, path, "recipients",
                         _integer(MIN_RECIPIENTS, " (RFC 5321 4.5.3.1.8)"), d.recipients),
        connections=r.get(t, path, "connections", _integer(1), d.connections),
        connections_per_ip=r.get(t, path, "connections_per_ip", _integer(1),
                                 d.connections_per_ip),
        hops=r.get(t, path, "hops", _integer(1), d.hops),
    )
    if limits.connections_per_ip > limits.connections:
        if "connections_per_ip" not in t:
            # Only the total was lowered: the per-IP default follows it down.
            return replace(limits, connections_per_ip=limits.connections)
        if r.ok("limits.connections", "limits.connections_per_ip"):
            r.report("limits.connections_per_ip", limits.connections_per_ip,
                     f"must not exceed limits.connections ({limits.connections})")
    return limits


def _delivery(t: Mapping[str, object], r: _Reader) -> Delivery:
    path = ("delivery",)
    d = Delivery()
    smtp_port = r.get(t, path, "smtp_port", _port, d.smtp_port)
    schedule = r.get_list(t, path, "retry_schedule", _duration(False), d.retry_schedule,
                          example='["5m", "10m", "20m", "40m", "80m", "2h"]')
    if not schedule:
        r.report("delivery.retry_schedule", t["retry_schedule"],
                 "must have at least one step; the last step repeats")
        schedule = d.retry_schedule
    delivery = Delivery(
        smtp_port=smtp_port,
        retry_schedule=schedule,
        max_queue_lifetime=r.get(t, path, "max_queue_lifetime", _duration(False),
                                 d.max_queue_lifetime),
        concurrency=r.get(t, path, "concurrency", _integer(1), d.concurrency),
        concurrency_per_destination=r.get(t, path, "concurrency_per_destination",
                                          _integer(1), d.concurrency_per_destination),
        relayhost=_relayhost_auth(
            t, r, r.get(t, path, "relayhost", _relayhost(smtp_port), None)),
        delay_warning=r.get(t, path, "delay_warning", _duration(True), d.delay_warning),
        tls_security_level=cast(TLSLevel, r.get(t, path, "tls_security_level",
                                                _choice(TLS_LEVELS), "may")),
        tls_ca_file=r.get(t, path, "tls_ca_file", _ca_file(r), None),
        connection_cache_time=r.get(t, path, "connection_cache_time", _duration(True),
                                    d.connection_cache_time),
    )
    if delivery.concurrency_per_destination > delivery.concurrency:
        if "concurrency_per_destination" not in t:
            return replace(delivery, concurrency_per_destination=delivery.concurrency)
        if r.ok("delivery.concurrency", "delivery.concurrency_per_destination"):
            r.report("delivery.concurrency_per_destination",
                     delivery.concurrency_per_destination,
                     f"must not exceed delivery.concurrency ({delivery.concurrency})")
    return delivery


def _ca_file(r: _Reader) -> Callable[[object], Path]:
    def convert(value: object) -> Path:
        import ssl  # here: the CLI's start-up time does not pay for it

        path = r.file(value)
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise _Bad(f"is not a PEM file of CA certificates: {exc}") from None
        return path
    return convert


def _relayhost_auth(t: Mapping[str, object], r: _Reader, relay: Relayhost | None
                    ) -> Relayhost | None:
    """relayhost_username and relayhost_password_file: both or neither, with relayhost."""
    path = ("delivery",)
    username = r.get(t, path, "relayhost_username", _string, "")
    password_file = r.get(t, path, "relayhost_password_file", r.file, None)
    if "relayhost_username" in t and not username:
        r.report("delivery.relayhost_username", "", "must not be empty; leave it out for "
                 "a relayhost without AUTH")
    if not r.ok("delivery.relayhost_username", "delivery.relayhost_password_file"):
        return relay
    if not username and password_file is None:
        return relay
    if username and password_file is None:
        r.report_key("delivery.relayhost_password_file", "missing; relayhost_username "
                     "needs the file that holds its password")
        return relay
    if password_file is not None and not username:
        r.report_key("delivery.relayhost_username", "missing; relayhost_password_file "
                     "is set, so give the user name it belongs to")
        return relay
    assert password_file is not None
    if relay is None:
        if r.ok("delivery.relayhost"):
            r.report_key("delivery.relayhost_username", "is set but delivery.relayhost "
                         "is not; AUTH is only used with a relayhost")
        return None
    try:
        text = password_file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        r.report("delivery.relayhost_password_file", t["relayhost_password_file"],
                 f"cannot be read: {exc}")
        return relay
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        r.report("delivery.relayhost_password_file", t["relayhost_password_file"],
                 "is empty; its first line is the password")
        return relay
    if any(c in username + password for c in "\0\r\n"):
        r.report_key("delivery.relayhost_username", "the user name and password must not "
                     "contain NUL or line breaks (RFC 4616)")
        return relay
    return replace(relay, username=username, password=password, password_file=password_file)


def _tls_policy(t: Mapping[str, object], r: _Reader, delivery: Delivery
                ) -> Mapping[str, TLSLevel]:
    """[tls_policy]: a mail domain or a next hop (as written in [routes] / relayhost,
    without "smtp:") -> none | may | encrypt | verify. A plain name (no port, no
    brackets) matches a recipient domain and any next hop on that host."""
    policy: dict[str, TLSLevel] = {}
    written: dict[str, str] = {}
    relay = delivery.relayhost
    for name, value in t.items():
        key = _key("tls_policy", name)
        try:
            if ":" in name or name.startswith("["):
                host, port, mx = _nexthop(name, delivery.smtp_port, "[mx.example.org]:25")
                target = _join_hostport(host, port, brackets=not mx)
            else:
                target = _domain(name)
        except _Bad as exc:
            r.report(key, value, f"the key {exc}; [tls_policy] keys are mail domains or "
                     'next hops like "[mx.example.org]:25"')
            continue
        level = r.get(t, ("tls_policy",), name, _choice(TLS_LEVELS), None)
        if target in written:
            r.report(key, value, f"repeats the entry {_key('tls_policy', written[target])}")
            continue
        written[target] = name
        if level is None:
            continue
        if (relay is not None and relay.username is not None and target == relay.address
                and TLS_LEVELS.index(level) < TLS_LEVELS.index("encrypt")):
            r.report(key, value, "the relayhost is given a password (relayhost_username), "
                     'which must never travel in the clear: use "encrypt" or "verify"')
            continue
        policy[target] = cast(TLSLevel, level)
    return MappingProxyType(policy)


def _routes(t: Mapping[str, object], r: _Reader, default_port: int) -> Mapping[str, Route]:
    routes: dict[str, Route] = {}
    written: dict[str, str] = {}
    for name, value in t.items():
        key = _key("routes", name)
        try:
            domain = _domain(name)
        except _Bad as exc:
            r.report(key, value, f"the key {exc}; [routes] keys are mail domains")
            continue
        hop = r.get(t, ("routes",), name, _route(default_port), None)
        if domain in written:
            r.report(key, value, f"repeats the route for {_key('routes', written[domain])}")
            continue
        written[domain] = name
        if hop is not None:
            routes[domain] = Route(domain, *hop)
    return MappingProxyType(routes)

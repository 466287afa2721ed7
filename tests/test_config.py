"""The configuration file: defaults, every key, the value syntaxes, every error message."""

from __future__ import annotations

import re
import tomllib
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.cli.dkim import keygen as keygen_main
from mailgate.config import (
    _SECTIONS,
    DEFAULT_LISTENERS,
    Config,
    ConfigError,
    Delivery,
    DNSConfig,
    Domains,
    Limits,
    Listener,
    LogConfig,
    Policy,
    QueueSettings,
    Relay,
    Relayhost,
    Route,
    ServerConfig,
    Timeouts,
    TLSConfig,
    WebConfig,
    load_config,
    load_queue_settings,
    parse_config,
    parse_duration,
    parse_size,
)
from mailgate.config.values import AUTO_WORKERS_MAX, auto_workers
from tests.conftest import ROOT
from tests.support.tlscerts import TestCA

DOC = ROOT / "docs" / "configuration.md"


def problems(text: str, source: str = "mailgate.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source, base_dir=Path("/srv"))
    assert str(info.value) == "\n".join(info.value.problems)
    return list(info.value.problems)


def problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- defaults -------------------------------------------------------------------------


def test_zero_config_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = load_config(None)
    assert c.source is None
    assert c.hostname == "localhost"
    assert c.data_dir == tmp_path / "mailgate-data"
    assert c.listen == (
        Listener("mx", "127.0.0.1", 2525),
        Listener("submission", "127.0.0.1", 2587),
    )
    assert [listener.address for listener in c.listen] == ["127.0.0.1:2525",
                                                               "127.0.0.1:2587"]
    assert c.tls == TLSConfig(None, None)
    assert c.tls.self_signed
    assert c.domains == Domains(("localhost", "localhost.localdomain"), True, frozenset())
    assert c.relay.networks == (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    assert c.limits == Limits(25 * 1024 * 1024, 100, 1000, 50)
    assert c.timeouts == Timeouts(300.0, 180.0)
    assert c.dns == DNSConfig(())
    assert c.policy == Policy(True, True, "normalize")
    assert c.delivery == Delivery(
        smtp_port=25,
        retry_schedule=(300.0, 600.0, 1200.0, 2400.0, 4800.0, 7200.0),
        max_queue_lifetime=5 * 86400.0,
        concurrency=100,
        concurrency_per_destination=20,
        relayhost=None,
        delay_warning=4 * 3600.0,
    )
    assert dict(c.routes) == {}
    assert c.web == WebConfig(True, "127.0.0.1", 8025)
    assert c.web.address == "127.0.0.1:8025"
    assert c.server == ServerConfig(auto_workers())  # one per CPU, at most 4
    assert c.log == LogConfig("info")


def test_dataclass_defaults_equal_zero_config(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Config() == load_config(None)
    assert parse_config("", "empty.toml", base_dir=tmp_path) == Config(source="empty.toml")


def test_the_default_is_never_an_open_relay() -> None:
    relay = Config().relay
    assert relay.allows("127.0.0.1")
    assert relay.allows("127.9.9.9")
    assert relay.allows("::1")
    assert relay.allows(ip_address("::ffff:127.0.0.1"))  # IPv4 client on a dual-stack socket
    assert not relay.allows("192.0.2.1")
    assert not relay.allows("::2")
    assert not relay.allows("not an address")


def test_settings_are_frozen() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.hostname = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.routes["x"] = Route("x", "h", 25, False)  # type: ignore[index]


# --- a file with every key --------------------------------------------------------------

FULL = """
hostname = "MX.Example.Test."
data_dir = "state"

[[listen]]
role = "mx"
address = "0.0.0.0:25"

[[listen]]
role = "submission"
address = "[::1]:587"

[[listen]]
role = "smtps"
address = "[2001:DB8:0::1]:465"

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[domains]
local = ["example.test", "BÜCHER.example", "example.test"]
catch_all = false
mailboxes = ["Alice@Example.test", "bob@bücher.example"]

[relay]
networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[limits]
message_size = "10MB"
recipients = 1000
connections = 10
connections_per_ip = 5

[timeouts]
command = "1h20m"
data_block = 2.5

[dns]
nameservers = ["127.0.0.1:5353", "[::1]", "192.0.2.53"]

[policy]
sender_null_mx_check = false
recipient_null_mx_check = false
bare_newlines = "reject"

[delivery]
smtp_port = 2526
retry_schedule = ["250ms", 1, "2s"]
max_queue_lifetime = "1d"
concurrency = 8
concurrency_per_destination = 2
relayhost = "[smtp.provider.test]:587"
delay_warning = 0

[routes]
"example.org" = "smtp:[127.0.0.2]:2526"
"Example.NET" = "smtp:relay.example.net"
"ipv6.example" = "smtp:[::1]:2525"
"ip.example" = "smtp:127.0.0.3:25"

[web]
address = ""

[server]
workers = 4

[log]
level = "debug"
"""


def write_tls(directory: Path) -> None:
    (directory / "tls").mkdir(parents=True)
    (directory / "tls" / "cert.pem").write_text("cert")
    (directory / "tls" / "key.pem").write_text("key")


def test_full_file(tmp_path: Path) -> None:
    write_tls(tmp_path)
    path = tmp_path / "mailgate.toml"
    path.write_text(FULL, encoding="utf-8")
    c = load_config(path)
    assert c.source == str(path)
    assert c.hostname == "mx.example.test"
    assert c.data_dir == tmp_path / "state"
    assert c.listen == (
        Listener("mx", "0.0.0.0", 25),
        Listener("submission", "::1", 587),
        Listener("smtps", "2001:db8::1", 465),
    )
    assert c.listen[2].address == "[2001:db8::1]:465"
    assert c.tls == TLSConfig(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem")
    assert not c.tls.self_signed
    assert c.domains == Domains(
        local=("example.test", "xn--bcher-kva.example"),
        catch_all=False,
        mailboxes=frozenset({"alice@example.test", "bob@xn--bcher-kva.example"}),
    )
    assert c.relay == Relay((ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"),
                             ip_network("192.0.2.7/32")))
    assert c.limits == Limits(10_000_000, 1000, 10, 5)
    assert c.timeouts == Timeouts(4800.0, 2.5)
    assert c.dns.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53))
    assert c.policy == Policy(False, False, "reject")
    assert c.delivery == Delivery(
        smtp_port=2526,
        retry_schedule=(0.25, 1.0, 2.0),
        max_queue_lifetime=86400.0,
        concurrency=8,
        concurrency_per_destination=2,
        relayhost=Relayhost("smtp.provider.test", 587, mx_lookup=False),
        delay_warning=0.0,
    )
    assert dict(c.routes) == {
        "example.org": Route("example.org", "127.0.0.2", 2526, mx_lookup=False),
        "example.net": Route("example.net", "relay.example.net", 2526, mx_lookup=True),
        "ipv6.example": Route("ipv6.example", "::1", 2525, mx_lookup=False),
        "ip.example": Route("ip.example", "127.0.0.3", 25, mx_lookup=False),
    }
    assert c.web == WebConfig(False, "", 0)
    assert c.web.address == ""
    assert c.server == ServerConfig(4)
    assert c.log == LogConfig("debug")


def test_helpers_of_the_full_file(tmp_path: Path) -> None:
    write_tls(tmp_path)
    c = parse_config(FULL, "full.toml", base_dir=tmp_path)
    assert c.domains.is_local("EXAMPLE.test.")
    assert c.domains.is_local("bücher.example")
    assert not c.domains.is_local("example.org")
    assert not c.domains.is_local("not a domain")
    assert c.domains.has_mailbox("ALICE", "example.test")
    assert c.domains.has_mailbox("bob", "Bücher.example")
    assert c.domains.has_mailbox("PostMaster", "example.test")
    assert not c.domains.has_mailbox("carol", "example.test")
    assert not c.domains.has_mailbox("postmaster", "example.org")
    assert c.relay.allows("10.1.2.3")
    assert c.relay.allows("2001:db8::25")
    assert c.relay.allows("192.0.2.7")
    assert not c.relay.allows("192.0.2.8")
    assert not c.relay.allows("127.0.0.1")
    assert c.route_for("EXAMPLE.ORG") == c.routes["example.org"]
    assert c.route_for("example.com") is None
    assert c.route_for("") is None
    assert c.routes["example.org"].nexthop == "smtp:[127.0.0.2]:2526"
    assert c.routes["example.net"].nexthop == "smtp:relay.example.net:2526"
    assert c.routes["ipv6.example"].nexthop == "smtp:[::1]:2525"
    assert c.delivery.relayhost is not None
    assert c.delivery.relayhost.address == "[smtp.provider.test]:587"


def test_retry_delay_repeats_the_last_step() -> None:
    d = Delivery()
    assert [d.retry_delay(n) for n in range(1, 9)] == [
        300.0, 600.0, 1200.0, 2400.0, 4800.0, 7200.0, 7200.0, 7200.0]
    assert d.retry_delay(0) == 300.0


def test_key_inside_the_certificate_file(tmp_path: Path) -> None:
    (tmp_path / "both.pem").write_text("cert and key")
    c = parse_config('[tls]\ncert = "both.pem"\n', "t.toml", base_dir=tmp_path)
    assert c.tls == TLSConfig(tmp_path / "both.pem", tmp_path / "both.pem")


def test_lowering_a_total_lowers_the_per_client_default() -> None:
    c = parse_config("[limits]\nconnections = 10\n[delivery]\nconcurrency = 4\n", "x.toml")
    assert c.limits.connections_per_ip == 10
    assert c.delivery.concurrency_per_destination == 4


def test_a_byte_order_mark_is_ignored() -> None:
    assert parse_config('\ufeffhostname = "a.example"\n', "bom.toml").hostname == "a.example"


def test_relayhost_forms() -> None:
    def relayhost(value: str) -> Relayhost | None:
        text = f'[delivery]\nsmtp_port = 2525\nrelayhost = "{value}"\n'
        return parse_config(text, "r.toml").delivery.relayhost

    assert relayhost("") is None
    assert relayhost("smtp.provider.test:587") == Relayhost("smtp.provider.test", 587, True)
    assert relayhost("[smtp.provider.test]:587") == Relayhost("smtp.provider.test", 587,
                                                              False)
    assert relayhost("smtp.provider.test") == Relayhost("smtp.provider.test", 2525, True)
    assert relayhost("[::1]:26") == Relayhost("::1", 26, False)
    assert relayhost("[IPv6:2001:db8::1]:26") == Relayhost("2001:db8::1", 26, False)
    assert relayhost("127.0.0.1:26") == Relayhost("127.0.0.1", 26, False)
    assert relayhost("smtp:[127.0.0.1]:26") == Relayhost("127.0.0.1", 26, False)
    # RFC 8314 implicit TLS, 465 when no port is given.
    assert relayhost("smtps:smtp.provider.test") == Relayhost(
        "smtp.provider.test", 465, True, implicit_tls=True)
    assert relayhost("smtps:[smtp.provider.test]:4650") == Relayhost(
        "smtp.provider.test", 4650, False, implicit_tls=True)


# --- value syntaxes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("25MiB", 25 * 1024 * 1024),
        ("10MB", 10_000_000),
        ("512KiB", 512 * 1024),
        ("1000", 1000),
        (1000, 1000),
        ("64kb", 64_000),
        ("1GiB", 1024**3),
        ("2GB", 2_000_000_000),
        ("1TiB", 1024**4),
        ("1.5KiB", 1536),
        ("7B", 7),
        (" 25 MiB ", 25 * 1024 * 1024),
        (0, 0),
    ],
)
def test_sizes(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["25M", "MiB", "-1", "1.5", "ten", "25 MiBs", "0x10", ""])
def test_bad_sizes(value: str) -> None:
    with pytest.raises(ValueError, match=r"size|whole number"):
        parse_size(value)


def test_bad_size_types() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(-1)
    with pytest.raises(ValueError, match="must be a size"):
        parse_size(True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5m", 300.0),
        ("3m", 180.0),
        ("90s", 90.0),
        ("1h20m", 4800.0),
        ("2h", 7200.0),
        ("5d", 432000.0),
        ("250ms", 0.25),
        ("1w", 604800.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        ("90", 90.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_durations(value: str | int | float, expected: float) -> None:
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["5 minutes", "m", "1m30", "-5m", "5y", "", "h1"])
def test_bad_durations(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_bad_duration_numbers() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(-1)
    with pytest.raises(ValueError, match="finite"):
        parse_duration(float("inf"))


_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
          "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_UNITS)),
       st.booleans())
def test_size_property(number: int, unit: str, space: bool) -> None:
    text = f"{number}{' ' if space else ''}{unit}"
    assert parse_size(text) == number * _UNITS[unit]
    assert parse_size(text.lower()) == number * _UNITS[unit]


_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=10**5),
                          st.sampled_from(sorted(_SECONDS))), min_size=1, max_size=5))
def test_duration_property(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * _SECONDS[u] for n, u in parts))


@given(st.text(max_size=12))
def test_size_and_duration_parsers_never_crash(text: str) -> None:
    for parse in (parse_size, parse_duration):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:2525", "127.0.0.1", 2525),
        ("0.0.0.0:25", "0.0.0.0", 25),
        ("[::1]:2525", "::1", 2525),
        ("[::]:25", "::", 25),
        ("[2001:DB8::0:1]:65535", "2001:db8::1", 65535),
        ("192.0.2.1:1", "192.0.2.1", 1),
    ],
)
def test_listener_addresses(address: str, host: str, port: int) -> None:
    c = parse_config(f'[[listen]]\nrole = "mx"\naddress = "{address}"\n', "l.toml")
    assert c.listen == (Listener("mx", host, port),)


# --- errors -------------------------------------------------------------------------------


def test_error_names_file_key_value_and_rule() -> None:
    assert problem("[limits]\nrecipients = 10\n") == (
        "mailgate.toml: limits.recipients = 10: must be at least 100 (RFC 5321 4.5.3.1.8)")


def test_unknown_key_with_suggestion() -> None:
    assert problem("[limits]\nrecipents = 100\n") == (
        "mailgate.toml: limits.recipents = 100: unknown key; did you mean limits.recipients?")
    assert problem('hostnme = "a.example"\n') == (
        'mailgate.toml: hostnme = "a.example": unknown key; did you mean hostname?')


def test_unknown_key_that_belongs_elsewhere() -> None:
    assert problem('[limits]\ncommand = "5m"\n') == (
        'mailgate.toml: limits.command = "5m": unknown key; did you mean timeouts.command '
        "(under [timeouts])?")
    assert problem("recipients = 100\n") == (
        "mailgate.toml: recipients = 100: unknown key; did you mean limits.recipients "
        "(under [limits])?")


def test_unknown_key_without_suggestion_lists_the_keys() -> None:
    assert problem("[timeouts]\nzzz = 1\n") == (
        "mailgate.toml: timeouts.zzz = 1: unknown key; [timeouts] takes command, data_block, "
        "min_data_rate, tls_handshake, stress_command, stress_data_block")


def test_unknown_section() -> None:
    assert problem("[limts]\nrecipients = 100\n") == (
        "mailgate.toml: limts: unknown section [limts]; did you mean [limits]?")
    assert problem('[[lisen]]\nrole = "mx"\n') == (
        "mailgate.toml: lisen: unknown section [[lisen]]; did you mean [[listen]]?")


def test_unknown_key_in_a_listener() -> None:
    assert problem('[[listen]]\nrole = "mx"\naddress = "127.0.0.1:25"\nadress = "x"\n') == (
        'mailgate.toml: listen[0].adress = "x": unknown key; did you mean listen[0].address?')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[limits]\nrecipients = "100"\n',
         'limits.recipients = "100": must be a whole number (write it without quotes: 100)'),
        ("[limits]\nrecipients = 100.0\n", "limits.recipients = 100.0: must be a whole number"),
        ("[limits]\nrecipients = true\n", "limits.recipients = true: must be a whole number"),
        ("hostname = 5\n", "hostname = 5: must be a string (in double quotes)"),
        ('[policy]\nsender_null_mx_check = "yes"\n',
         'policy.sender_null_mx_check = "yes": must be true or false (without quotes)'),
        ('[dns]\nnameservers = "127.0.0.1"\n',
         'dns.nameservers = "127.0.0.1": must be a list, like ["127.0.0.1:5353"]'),
        ("[limits]\nmessage_size = 1.5\n", "limits.message_size = 1.5: must be a size: "
         'a number of bytes, or a string like "25MiB", "10MB", "512KiB"'),
        ("[timeouts]\ncommand = [5]\n", 'timeouts.command = [5]: must be a duration: '
         'a number of seconds, or a string like "5m", "90s", "1h20m", "5d", "250ms"'),
        ("limits = 5\n", "limits = 5: must be a table: put its keys under a [limits] header"),
        ("[domains]\nlocal = [1]\n", "domains.local[0] = 1: must be a string (in double quotes)"),
    ],
)
def test_wrong_types(text: str, message: str) -> None:
    assert problem(text) == f"mailgate.toml: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[limits]\nmessage_size = "10KiB"\n', 'limits.message_size = "10KiB": must be at '
         "least 64KiB = 65536 bytes (RFC 5321 4.5.3.1.7)"),
        ("[limits]\nmessage_size = 65535\n", "limits.message_size = 65535: must be at "
         "least 64KiB = 65536 bytes (RFC 5321 4.5.3.1.7)"),
        ("[limits]\nconnections = 0\n", "limits.connections = 0: must be at least 1"),
        ("[limits]\nconnections = 10\nconnections_per_ip = 20\n",
         "limits.connections_per_ip = 20: must not exceed limits.connections (10)"),
        ("[timeouts]\ncommand = 0\n", "timeouts.command = 0: must be longer than 0 seconds"),
        ('[timeouts]\ndata_block = "0s"\n',
         'timeouts.data_block = "0s": must be longer than 0 seconds'),
        ('[timeouts]\ncommand = "-5m"\n', 'timeouts.command = "-5m": is not a duration; '
         'write a number of seconds, or a string like "5m", "90s", "1h20m", "5d", "250ms" '
         "(units ms, s, m, h, d, w)"),
        ('[delivery]\nmax_queue_lifetime = "0s"\n',
         'delivery.max_queue_lifetime = "0s": must be longer than 0 seconds'),
        ("[delivery]\nretry_schedule = []\n",
         "delivery.retry_schedule = []: must have at least one step; the last step repeats"),
        ('[delivery]\nretry_schedule = ["5m", 0]\n',
         "delivery.retry_schedule[1] = 0: must be longer than 0 seconds"),
        ("[delivery]\nsmtp_port = 0\n",
         "delivery.smtp_port = 0: must be at least 1 (a TCP port: 1 to 65535)"),
        ("[delivery]\nsmtp_port = 65536\n",
         "delivery.smtp_port = 65536: must be at most 65535 (a TCP port: 1 to 65535)"),
        ("[delivery]\nconcurrency = 5\nconcurrency_per_destination = 6\n",
         "delivery.concurrency_per_destination = 6: must not exceed delivery.concurrency (5)"),
        ("[delivery]\ndelay_warning = -1\n", "delivery.delay_warning = -1: must not be negative"),
        ("[server]\nworkers = 0\n", "server.workers = 0: must be at least 1"),
        ('[server]\nworkers = "many"\n',
         'server.workers = "many": must be a whole number or "auto"'),
    ],
)
def test_below_floor_and_bad_numbers(text: str, message: str) -> None:
    assert problem(text) == f"mailgate.toml: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[listen]]\nrole = "mta"\naddress = "127.0.0.1:25"\n',
         'listen[0].role = "mta": must be one of mx, submission, smtps'),
        ('[[listen]]\nrole = "MX"\naddress = "127.0.0.1:25"\n',
         'listen[0].role = "MX": must be one of mx, submission, smtps; did you mean "mx"?'),
        ('[[listen]]\nrole = "submision"\naddress = "127.0.0.1:25"\n',
         'listen[0].role = "submision": must be one of mx, submission, smtps; '
         'did you mean "submission"?'),
        ('[policy]\nbare_newlines = "normalise"\n', 'policy.bare_newlines = "normalise": '
         'must be one of normalize, reject; did you mean "normalize"?'),
        ('[log]\nlevel = "verbose"\n',
         'log.level = "verbose": must be one of debug, info, warning, error'),
    ],
)
def test_bad_choices(text: str, message: str) -> None:
    assert problem(text) == f"mailgate.toml: {message}"


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("::1:2525", 'an IPv6 address needs brackets, like "[::1]:2525"'),
        ("localhost:2525",
         'the host must be an IP address (0.0.0.0 or [::] for all), not "localhost"'),
        ("127.0.0.1", 'the port is missing; write it like "127.0.0.1:2525"'),
        ("127.0.0.1:0", "the port must be from 1 to 65535"),
        ("127.0.0.1:70000", "the port must be from 1 to 65535"),
        ("127.0.0.1:smtp", 'is not host:port; write it like "127.0.0.1:2525"'),
        ("[::1]2525", 'is not host:port; write it like "127.0.0.1:2525"'),
        ("[::1:2525", 'has "[" without "]"; write it like "127.0.0.1:2525"'),
        ("[127.0.0.1]:2525", 'brackets are for IPv6 addresses only; write "127.0.0.1:2525"'),
        (":2525", 'the host is missing; write it like "127.0.0.1:2525"'),
    ],
)
def test_bad_listener_addresses(address: str, why: str) -> None:
    text = f'[[listen]]\nrole = "mx"\naddress = "{address}"\n'
    assert problem(text) == f'mailgate.toml: listen[0].address = "{address}": {why}'


def test_bad_listener_tables() -> None:
    assert problem('[listen]\nrole = "mx"\naddress = "127.0.0.1:25"\n') == (
        "mailgate.toml: listen: must be written [[listen]] (double brackets), one table per "
        "listener, each with role and address")
    assert problem("listen = []\n") == (
        "mailgate.toml: listen = []: must be one or more [[listen]] tables, each with role "
        "and address")
    assert problem('[[listen]]\nrole = "mx"\n') == (
        "mailgate.toml: listen[0].address: missing; each [[listen]] needs role (mx, "
        'submission, smtps) and address (like "127.0.0.1:2525")')
    assert problem('[[listen]]\nrole = "mx"\naddress = "[::1]:25"\n'
                   '[[listen]]\nrole = "submission"\naddress = "[0::1]:25"\n') == (
        'mailgate.toml: listen[1].address = "[0::1]:25": already used by listen[0]')


@pytest.mark.parametrize(
    ("network", "why"),
    [
        ("10.0.0.1/8", 'has bits set after the prefix length; did you mean "10.0.0.0/8"?'),
        ("2001:db8::1/32", 'has bits set after the prefix length; did you mean "2001:db8::/32"?'),
        ("10.0.0.0/33", 'is not an IP network; write one like "192.0.2.0/24", '
         '"2001:db8::/32" or a single address'),
        ("localhost", 'is not an IP network; write one like "192.0.2.0/24", '
         '"2001:db8::/32" or a single address'),
    ],
)
def test_bad_networks(network: str, why: str) -> None:
    text = f'[relay]\nnetworks = ["127.0.0.0/8", "{network}"]\n'
    assert problem(text) == f'mailgate.toml: relay.networks[1] = "{network}": {why}'


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("example.org", "127.0.0.2:2526", 'must look like "smtp:[host]:port" or '
         '"smtp:host:port" (brackets: connect to host as is; none: look up its MX; '
         '"smtps:" for TLS from the first byte), or "lmtp:unix:/path" or '
         '"lmtp:[host]:port" for a local domain'),
        ("example.org", "lmtp:[127.0.0.2]:24", "LMTP delivers local mail, and example.org "
         "is not one of domains.local (localhost, localhost.localdomain)"),
        ("example.org", "lmtp:unix:run/lmtp", 'the LMTP socket must be an absolute path, like '
         '"lmtp:unix:/run/dovecot/lmtp"'),
        ("example.org", "smtp:[127.0.0.2]:x", 'is not host:port; write it like '
         '"smtp:[127.0.0.2]:2526"'),
        ("example.org", "smtp:::1:25", 'an IPv6 address needs brackets, like "[::1]:2525"'),
        ("example.org", "smtp:bad_host:25", "is not a domain name (letters, digits, hyphens "
         "and dots, like mx.example.org)"),
    ],
)
def test_bad_routes(key: str, value: str, why: str) -> None:
    text = f'[routes]\n"{key}" = "{value}"\n'
    assert problem(text) == f'mailgate.toml: routes."{key}" = "{value}": {why}'


def test_bad_route_keys() -> None:
    assert problem('[routes]\n"not a domain" = "smtp:[127.0.0.2]:25"\n') == (
        'mailgate.toml: routes."not a domain" = "smtp:[127.0.0.2]:25": the key is not a '
        "domain name (letters, digits, hyphens and dots, like mx.example.org); [routes] "
        "keys are mail domains")
    assert problem('[routes]\n"example.org" = "smtp:[127.0.0.2]:25"\n'
                   '"EXAMPLE.org" = "smtp:[127.0.0.3]:25"\n') == (
        'mailgate.toml: routes."EXAMPLE.org" = "smtp:[127.0.0.3]:25": repeats the route for '
        'routes."example.org"')
    assert problem('[routes]\n"example.org" = 25\n') == (
        'mailgate.toml: routes."example.org" = 25: must be a string (in double quotes)')


def test_bad_domains_and_mailboxes() -> None:
    assert problem('hostname = "mx example"\n') == (
        'mailgate.toml: hostname = "mx example": is not a domain name (letters, digits, '
        "hyphens and dots, like mx.example.org)")
    assert problem('[domains]\nlocal = ["example.test"]\n'
                   'mailboxes = ["a@example.test", "b@other.test"]\n') == (
        'mailgate.toml: domains.mailboxes[1] = "b@other.test": other.test is not one of '
        "domains.local (example.test)")
    assert problem('[domains]\nmailboxes = ["nobody"]\n') == (
        'mailgate.toml: domains.mailboxes[0] = "nobody": must be an address like '
        '"user@example.org"')
    assert problem('[domains]\nmailboxes = ["a b@localhost"]\n') == (
        'mailgate.toml: domains.mailboxes[0] = "a b@localhost": has a space, quote, angle '
        "bracket or control character before the @")


def test_bad_web_and_dns_addresses() -> None:
    assert problem('[web]\naddress = "8025"\n') == (
        'mailgate.toml: web.address = "8025": the port is missing; write it like '
        '"127.0.0.1:8025"')
    assert problem('[dns]\nnameservers = ["ns.example.org:53"]\n') == (
        'mailgate.toml: dns.nameservers[0] = "ns.example.org:53": the host must be an IP '
        'address (0.0.0.0 or [::] for all), not "ns.example.org"')


def test_web_allowed_hosts() -> None:
    c = parse_config('[web]\naddress = "0.0.0.0:8080"\n'
                     'allowed_hosts = ["Mail.Example.ORG.", "[2001:db8::1]", "mail.example.org"]\n',
                     "t.toml")
    assert c.web == WebConfig(True, "0.0.0.0", 8080, ("mail.example.org", "2001:db8::1"))
    assert problem('[web]\nallowed_hosts = ["mail.example.org:8025"]\n') == (
        'mailgate.toml: web.allowed_hosts[0] = "mail.example.org:8025": must be a host name '
        'or an IP address without a port, like "mail.example.org"')
    assert problem('[web]\nallowed_hosts = "mail.example.org"\n').startswith(
        'mailgate.toml: web.allowed_hosts = "mail.example.org": must be a list')


def test_tls_files(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("key")
    with pytest.raises(ConfigError) as info:
        parse_config('[tls]\nkey = "key.pem"\n', "t.toml", base_dir=tmp_path)
    assert str(info.value) == (
        "t.toml: tls.key: is set but tls.cert is not; give the certificate too, or neither "
        "for a self-signed certificate")
    with pytest.raises(ConfigError) as info:
        parse_config('[tls]\ncert = "missing.pem"\nkey = "key.pem"\n', "t.toml",
                     base_dir=tmp_path)
    assert str(info.value) == (
        f't.toml: tls.cert = "missing.pem": no such file: {tmp_path / "missing.pem"}')
    with pytest.raises(ConfigError) as info:
        parse_config('[tls]\ncert = ""\n', "t.toml", base_dir=tmp_path)
    assert str(info.value) == 't.toml: tls.cert = "": must not be empty'


def test_every_problem_is_reported_at_once() -> None:
    found = problems('hostname = "bad host"\n[limits]\nrecipients = 5\nrecipents = 100\n'
                     '[[listen]]\nrole = "mxx"\naddress = "::1:25"\n')
    assert found == [
        'mailgate.toml: hostname = "bad host": is not a domain name (letters, digits, '
        "hyphens and dots, like mx.example.org)",
        'mailgate.toml: listen[0].role = "mxx": must be one of mx, submission, smtps; '
        'did you mean "mx"?',
        'mailgate.toml: listen[0].address = "::1:25": an IPv6 address needs brackets, like '
        '"[::1]:2525"',
        "mailgate.toml: limits.recipents = 100: unknown key; did you mean limits.recipients?",
        "mailgate.toml: limits.recipients = 5: must be at least 100 (RFC 5321 4.5.3.1.8)",
    ]


def test_a_bad_total_does_not_cause_a_second_message() -> None:
    assert problem('[limits]\nconnections = "x"\nconnections_per_ip = 2000\n') == (
        'mailgate.toml: limits.connections = "x": must be a whole number')


def test_long_values_are_shortened() -> None:
    message = problem(f'[log]\nlevel = "{"x" * 200}"\n')
    assert message.startswith('mailgate.toml: log.level = "xxxx')
    assert "..." in message
    assert len(message) < 200


@pytest.mark.parametrize(
    ("text", "where", "shown"),
    [
        ('hostname = "a.example"\n[limits]\nrecipients = lots\n',
         "line 3, column 14", "    3 | recipients = lots"),
        ("[limits]\nrecipients = 100\nrecipients = 200\n",
         "line 3, column 17", "    3 | recipients = 200"),
        ('[dns]\nnameservers = ["127.0.0.1:53",\n',
         "line 2 (end of file)", '    2 | nameservers = ["127.0.0.1:53",'),
    ],
)
def test_toml_syntax_errors_give_the_line(text: str, where: str, shown: str) -> None:
    # tomllib's own wording (after "not valid TOML:") may change between Python versions.
    first, second = problem(text).split("\n")
    assert re.fullmatch(rf"mailgate\.toml, {re.escape(where)}: not valid TOML: \S.*", first)
    assert second == shown


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == (
        f"{missing}: cannot read the configuration file: No such file or directory")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'hostname = "b\xfccher.example"\n')
    with pytest.raises(ConfigError) as info:
        load_config(latin1)
    assert str(info.value) == f"{latin1}: not UTF-8 text (byte 13); TOML files must be UTF-8"


# --- paths ------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    folder = tmp_path / "etc"
    write_tls(folder)
    path = folder / "mailgate.toml"
    path.write_text('data_dir = "data"\n[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n')
    c = load_config(path)
    assert c.data_dir == folder / "data"
    assert c.tls.cert == folder / "tls" / "cert.pem"
    assert c.tls.key == folder / "tls" / "key.pem"
    # A relative path to the file itself works the same.
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("etc/mailgate.toml")).data_dir == folder / "data"


def test_default_data_dir_in_a_file_is_beside_the_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "mailgate.toml"
    path.write_text('hostname = "mx.example.test"\n')
    assert load_config(path).data_dir == tmp_path / "etc" / "mailgate-data"


def test_zero_config_data_dir_is_in_the_current_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).data_dir == tmp_path / "mailgate-data"
    assert parse_config('data_dir = "d"\n', "text").data_dir == tmp_path / "d"


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config('data_dir = "/var/lib/mailgate"\n', "a").data_dir == Path(
        "/var/lib/mailgate")
    assert parse_config('data_dir = "~/mail"\n', "a").data_dir == tmp_path / "mail"


# --- the documentation ------------------------------------------------------------------


def doc_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Full example", 1)[1]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match, "docs/configuration.md has no ```toml block under ## Full example"
    return match.group(1)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    example = doc_example()
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "fullchain.pem").write_text("cert")
    (tmp_path / "tls" / "privkey.pem").write_text("key")
    ca = TestCA.create(tmp_path / "ca")
    (tmp_path / "tls" / "ca.pem").write_bytes(ca.ca_file.read_bytes())
    (tmp_path / "relay-password").write_text("secret\n")
    (tmp_path / "aliases").write_text("# as /etc/aliases\nroot: alice@example.test,\n  bob\n")
    (tmp_path / "dkim").mkdir()
    for name in ("example.test.r2026.key", "example.test.e2026.key"):
        keygen_main(["example.test", "--selector", "s", "--out", str(tmp_path / "dkim" / name),
                     *(["--algorithm", "ed25519-sha256"] if ".e2026" in name else [])],
                    standalone_mode=False)
    path = tmp_path / "mailgate.toml"
    path.write_text(example, encoding="utf-8")
    c = load_config(path)
    assert c.hostname == "mx.example.test"
    assert c.tls.cert == tmp_path / "tls" / "fullchain.pem"
    assert c.delivery.relayhost is not None and c.delivery.relayhost.password == "secret"
    assert {listener.role for listener in c.listen} == {"mx", "submission", "smtps"}


def test_the_documented_example_has_every_key() -> None:
    doc = tomllib.loads(doc_example())
    assert set(doc) == {"hostname", "data_dir", *_SECTIONS}
    for section, keys in _SECTIONS.items():
        tables = doc[section] if section == "listen" else [doc[section]]
        for table in tables:
            if section not in ("routes", "tls_policy", "aliases", "maildir", "dkim"):  # domains
                assert set(table) == set(keys), section


def test_the_documentation_has_a_row_for_every_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    for section, keys in _SECTIONS.items():
        header = "## `[[listen]]`" if section == "listen" else f"## `[{section}]`"
        assert header in text, header
        body = text.split(header, 1)[1].split("\n## ", 1)[0]
        for key in keys:
            assert f"| `{key}` |" in body, f"{section}.{key}"
    top = text.split("## Top level", 1)[1].split("\n## ", 1)[0]
    assert "| `hostname` |" in top
    assert "| `data_dir` |" in top


def test_documented_defaults_match_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| ((?:[^|\\]|\\\|)+) \|", text, re.M))
    built = Config()
    assert rows["hostname"].strip() == '`"localhost"`'
    assert parse_size(tomllib.loads(f"v = {rows['message_size'].strip(' `')}")["v"]) == (
        built.limits.message_size)
    for key, value in [("recipients", built.limits.recipients),
                       ("connections", built.limits.connections),
                       ("connections_per_ip", built.limits.connections_per_ip),
                       ("smtp_port", built.delivery.smtp_port),
                       ("concurrency", built.delivery.concurrency),
                       ("concurrency_per_destination",
                        built.delivery.concurrency_per_destination)]:
        assert rows[key].strip() == f"`{value}`", key
    assert rows["workers"].strip() == '`"auto"`'
    assert parse_config('[server]\nworkers = "auto"\n', "m.toml").server.workers == (
        built.server.workers)
    for key, seconds in [("command", built.timeouts.command),
                         ("data_block", built.timeouts.data_block),
                         ("max_queue_lifetime", built.delivery.max_queue_lifetime),
                         ("delay_warning", built.delivery.delay_warning)]:
        assert parse_duration(rows[key].strip(' `"')) == seconds, key
    schedule = tomllib.loads(f"v = {rows['retry_schedule'].strip(' `')}")["v"]
    assert tuple(parse_duration(step) for step in schedule) == built.delivery.retry_schedule
    networks = tomllib.loads(f"v = {rows['networks'].strip(' `')}")["v"]
    assert tuple(ip_network(n) for n in networks) == built.relay.networks
    assert rows["address"].strip() in ("—", '`"127.0.0.1:8025"`')
    assert built.listen == DEFAULT_LISTENERS


# --- outbound TLS levels and relayhost credentials -------------------------------------


def test_tls_policy_keys_and_the_level_that_applies(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n", encoding="utf-8")
    c = parse_config(
        '[delivery]\ntls_security_level = "encrypt"\nrelayhost = "smtp.provider.test:587"\n'
        '[routes]\n"routed.test" = "smtp:[127.0.0.2]:2526"\n"weak.test" = "smtp:mx.weak.test"\n'
        '[tls_policy]\n"Bücher.test" = "verify"\n"[127.0.0.2]:2526" = "none"\n'
        '"routed.test" = "may"\n"smtp.provider.test:587" = "verify"\n'
        '"mx.weak.test" = "none"\n', "t.toml", tmp_path)
    assert dict(c.tls_policy) == {
        "xn--bcher-kva.test": "verify", "[127.0.0.2]:2526": "none", "routed.test": "may",
        "smtp.provider.test:587": "verify", "mx.weak.test": "none"}
    assert c.tls_level_for("BÜCHER.test") == "verify"  # the relayhost's verify is as strong
    assert c.tls_level_for("routed.test") == "may"  # the stronger of may and none
    assert c.tls_level_for("weak.test") == "none"  # its next hop's host, by a plain name
    assert c.tls_level_for("other.test") == "verify"  # the relayhost's entry
    assert parse_config("", "t.toml").tls_level_for("other.test") == "may"  # the default


def test_relayhost_credentials(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("correct horse\nignored second line\n", encoding="utf-8")
    c = parse_config('[delivery]\nrelayhost = "[smtp.provider.test]:587"\n'
                     'relayhost_username = "me@example.test"\n'
                     'relayhost_password_file = "pw"\n', "t.toml", tmp_path)
    relay = c.delivery.relayhost
    assert relay == Relayhost("smtp.provider.test", 587, False, "me@example.test",
                              "correct horse", tmp_path / "pw")
    assert "correct horse" not in repr(c)
    assert c.tls_level_for("example.org") == "encrypt"  # never AUTH in the clear


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[delivery]\nrelayhost_username = "me"\nrelayhost_password_file = "pw"\n',
         "delivery.relayhost_username: is set but delivery.relayhost is not; AUTH is only "
         "used with a relayhost"),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_username = "me"\n',
         "delivery.relayhost_password_file: missing; relayhost_username needs the file "
         "that holds its password"),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_password_file = "pw"\n',
         "delivery.relayhost_username: missing; relayhost_password_file is set, so give "
         "the user name it belongs to"),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_username = ""\n'
         'relayhost_password_file = "pw"\n',
         'delivery.relayhost_username = "": must not be empty; leave it out for a '
         "relayhost without AUTH"),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_username = "me"\n'
         'relayhost_password_file = "empty"\n',
         'delivery.relayhost_password_file = "empty": is empty; its first line is the '
         "password"),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_username = "me"\n'
         'relayhost_password_file = "missing"\n',
         'delivery.relayhost_password_file = "missing": no such file: {dir}/missing'),
        ('[delivery]\nrelayhost = "r.test:587"\nrelayhost_username = "me"\n'
         'relayhost_password_file = "pw"\n[tls_policy]\n"r.test:587" = "may"\n',
         'tls_policy."r.test:587" = "may": the relayhost is given a password '
         '(relayhost_username), which must never travel in the clear: use "encrypt" or '
         '"verify"'),
        ('[delivery]\ntls_security_level = "secure"\n',
         'delivery.tls_security_level = "secure": must be one of none, may, encrypt, '
         "verify"),
        ('[delivery]\ntls_ca_file = "pw"\n',
         'delivery.tls_ca_file = "pw": is not a PEM file of CA certificates: '),
        ('[tls_policy]\n"example.org" = "verfy"\n',
         'tls_policy."example.org" = "verfy": must be one of none, may, encrypt, verify; '
         'did you mean "verify"?'),
        ('[tls_policy]\n"not a domain" = "verify"\n',
         'tls_policy."not a domain" = "verify": the key is not a domain name (letters, '
         "digits, hyphens and dots, like mx.example.org); [tls_policy] keys are mail "
         'domains or next hops like "[mx.example.org]:25"'),
        ('[tls_policy]\n"example.org" = "verify"\n"EXAMPLE.ORG." = "may"\n',
         'tls_policy."EXAMPLE.ORG." = "may": repeats the entry tls_policy."example.org"'),
        ("tls_policy = 1\n", "tls_policy = 1: must be a table: put its keys under a "
         "[tls_policy] header"),
    ],
)
def test_bad_tls_and_relayhost_settings(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pw").write_text("secret\n", encoding="utf-8")
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mailgate.toml", tmp_path)
    [found] = info.value.problems
    assert found.startswith("mailgate.toml: " + message.format(dir=tmp_path)), found


# --- the package: its face and its parts ----------------------------------------------

# Every public name `mailgate.config` offered when it was one file, and the private one
# the tests use; the package re-exports them all from where they live now.
OFFERED = (
    "Role", "BareNewlines", "LogLevel", "TLSLevel", "Network", "ROLES", "BARE_NEWLINES",
    "LOG_LEVELS", "TLS_LEVELS", "KiB", "MiB", "MIN_MESSAGE_SIZE", "MIN_RECIPIENTS",
    "SMTPS_PORT", "ConfigError", "Listener", "DEFAULT_LISTENERS", "TLSConfig", "Domains",
    "Relay", "Limits", "Timeouts", "Submission", "DNSConfig", "Policy", "Relayhost", "Route",
    "Delivery", "WebConfig", "ServerConfig", "LogConfig", "Config", "load_config",
    "parse_config", "parse_size", "parse_duration", "_SECTIONS",
)  # fmt: skip

# The parts of config/, highest first: each imports only parts after it.
PARTS = ("", ".sections", ".mailstore", ".dkim", ".queue_section", ".reader", ".values",
         ".dkimkey", ".aliases", ".syntax")


def test_the_package_offers_every_name_the_module_did() -> None:
    import mailgate.config

    missing = [name for name in (*mailgate.config.__all__, *OFFERED)
               if not hasattr(mailgate.config, name)]
    assert not missing, f"mailgate.config no longer offers {missing}"
    # What values.py merely imports is not offered with the settings.
    assert not any(hasattr(mailgate.config, name)
                   for name in ("dataclass", "field", "IPv4Network", "MappingProxyType"))


def test_the_package_parts_import_down() -> None:
    """values and syntax know nothing of reading a file; the reader nothing of sections."""
    from tests.test_layering import import_graph

    order = [f"mailgate.config{part}" for part in PARTS]
    graph = import_graph()
    assert sorted(m for m in graph if m.startswith("mailgate.config")) == sorted(order), \
        "a new module in config/ needs a place in PARTS (and in config/__init__.py's list)"
    up = [f"{a} -> {b}" for a in order for b in sorted(graph[a])
          if b in order and order.index(b) <= order.index(a)]
    assert not up, "config/ parts importing up: " + ", ".join(up)


# --- [queue] backend ------------------------------------------------------------------


def test_queue_backend_postgresql_with_dsn_or_dsn_file(tmp_path: Path) -> None:
    c = parse_config('[queue]\nbackend = "postgresql"\n'
                     'dsn = "postgresql://mg@db.example.test/mail"\nnode = "mx1"\n', "t.toml")
    assert (c.queue.backend, c.queue.dsn, c.queue.node) == (
        "postgresql", "postgresql://mg@db.example.test/mail", "mx1")
    assert "db.example.test" not in repr(c.queue)  # the DSN may hold a password
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://mg:pw@db.example.test/mail\n", encoding="utf-8")
    path = tmp_path / "m.toml"
    path.write_text('[queue]\nbackend = "postgresql"\ndsn_file = "dsn"\n', encoding="utf-8")
    assert load_config(path).queue.dsn == "postgresql://mg:pw@db.example.test/mail"
    assert parse_config("", "t.toml").queue.backend == "sqlite"


def test_queue_backend_problems_never_quote_the_dsn(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"queue\.dsn: missing"):
        parse_config('[queue]\nbackend = "postgresql"\n', "t.toml")
    with pytest.raises(ConfigError) as info:
        parse_config('[queue]\nbackend = "postgresql"\ndsn = "mg:hunter2@db"\n', "t.toml")
    assert "queue.dsn" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        parse_config('[queue]\nbackend = "postgresql"\ndsn = "postgresql://db/m"\n'
                     'dsn_file = "x"\n', "t.toml")
    with pytest.raises(ConfigError, match=r"queue\.backend"):
        parse_config('[queue]\nbackend = "mysql"\n', "t.toml")


def test_queue_secure_delete_is_fast_or_on() -> None:
    assert parse_config("", "t.toml").queue.secure_delete == "fast"
    assert parse_config('[queue]\nsecure_delete = "on"\n', "t.toml").queue.secure_delete == "on"
    with pytest.raises(ConfigError, match=r"queue\.secure_delete") as info:
        parse_config('[queue]\nsecure_delete = "off"\n', "t.toml")
    assert "fast" in str(info.value) and "on" in str(info.value)


def test_queue_settings_read_as_the_whole_file_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `queue` commands read only data_dir and [queue] (load_queue_settings): the
    same values load_config gives, the same problems for those keys, and a misspelt
    section still named; a mistake elsewhere no longer stops them."""
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://mg:pw@db.example.test/mail\n", encoding="utf-8")
    files = {
        "relative": 'data_dir = "spool"\n[queue]\nkeep_records = "2d"\n',
        "cluster": '[queue]\nbackend = "postgresql"\ndsn_file = "dsn"\nnode = "mx1"\n',
        "empty": "",
    }
    for name, text in files.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        whole = load_config(path)
        assert load_queue_settings(path) == QueueSettings(whole.data_dir, whole.queue), name
    monkeypatch.chdir(tmp_path)
    assert load_queue_settings(None) == QueueSettings(load_config(None).data_dir,
                                                      load_config(None).queue)

    def problems(text: str) -> str:
        path = tmp_path / "bad.toml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_queue_settings(path)
        return str(info.value)

    assert "queue.dsn: missing" in problems('[queue]\nbackend = "postgresql"\n')
    assert "unknown section [queu]" in problems('[queu]\nbackend = "postgresql"\n')
    assert "data_dir" in problems("data_dir = 3\n")
    assert "line 1" in problems("[queue\n")
    ok = tmp_path / "elsewhere.toml"
    ok.write_text('[limits]\nmessage_size = "lots"\n[queue]\nkeep_records = "1h"\n',
                  encoding="utf-8")
    with pytest.raises(ConfigError, match=r"limits\.message_size"):
        load_config(ok)
    assert load_queue_settings(ok).queue.keep_records == 3600


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (3, 3), (64, AUTO_WORKERS_MAX)])
def test_auto_workers_follows_the_cpus_this_process_may_use(
        cpus: int, expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The affinity, not the machine's count: a container or `taskset -c 0` gives one.
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    assert auto_workers() == expected
    assert parse_config('[server]\nworkers = "auto"\n', "m.toml").server.workers == expected
    assert parse_config('[server]\nworkers = " Auto "\n', "m.toml").server.workers == expected
    assert parse_config("", "m.toml").server.workers == expected
    assert parse_config("[server]\nworkers = 3\n", "m.toml").server.workers == 3

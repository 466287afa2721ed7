"""RFC 5321 paths and mailboxes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.smtp.address import NULL_PATH, Address, AddressError, parse_mailbox, parse_path


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<user@example.org>", "user", "example.org"),
        ("<User@EXAMPLE.org>", "User", "example.org"),
        ('<"john doe"@example.org>', "john doe", "example.org"),
        ('<"a\\"b"@example.org>', 'a"b', "example.org"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:DB8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<@relay.example,@other.example:user@example.org>", "user", "example.org"),
        ("<first.last+tag@sub.example.org>", "first.last+tag", "sub.example.org"),
    ],
)
def test_valid_paths(path: str, local: str, domain: str) -> None:
    assert parse_path(path) == Address(local, domain)


def test_null_path_and_postmaster() -> None:
    assert parse_path("<>", allow_null=True) is NULL_PATH
    assert NULL_PATH.is_null and NULL_PATH.path == "<>"
    pm = parse_path("<Postmaster>", allow_postmaster=True)
    assert pm.is_postmaster and pm.domain == ""
    with pytest.raises(AddressError, match="null address"):
        parse_path("<>")
    with pytest.raises(AddressError):
        parse_path("<postmaster>")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("user@example.org", "angle brackets"),
        ("<user>", "local part, '@' and a domain"),
        ("<@example.org>", "source route"),
        ("<user@>", "domain is empty"),
        ("<user@exa_mple.org>", "not a valid name"),
        ("<user@-example.org>", "not a valid name"),
        ("<us..er@example.org>", "dot-string"),
        (".user@example.org", "angle brackets"),
        ("<" + "a" * 65 + "@example.org>", "64 octets"),
        ("<user@" + "a" * 70 + ".org>", "not a valid name"),
        ("<u@" + ".".join(["a" * 60] * 5) + ">", "256 octets"),
        ("<user@[300.1.1.1]>", "IPv4"),
        ("<user@[IPv6:zz::1]>", "IPv6"),
        ('<"open@example.org>', "not closed"),
        ("<@relay.example user@example.org>", "source route"),
    ],
)
def test_invalid_paths(path: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_path(path)


def test_domain_limit_applies_to_mailboxes() -> None:
    assert parse_path("<u@" + ".".join(["a" * 60] * 4) + "x>").domain.endswith("x")
    with pytest.raises(AddressError, match="255 octets"):
        parse_mailbox("u@" + ".".join(["a" * 60] * 5))


def test_utf8_needs_smtputf8() -> None:
    with pytest.raises(AddressError) as exc:
        parse_path("<用户@例子.测试>")
    assert exc.value.utf8
    a = parse_path("<用户@例子.测试>", utf8=True)
    assert a.is_utf8 and a.ascii_domain == "xn--fsqu00a.xn--0zwm56d"
    assert parse_mailbox("josé@example.org", utf8=True).local == "josé"


def test_str_quotes_when_needed() -> None:
    assert str(Address("john doe", "example.org")) == '"john doe"@example.org'
    assert Address("a", "b.example").path == "<a@b.example>"


atext = st.sampled_from(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
)
atoms = st.text(atext, min_size=1, max_size=10)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.lists(atoms, min_size=1, max_size=4), st.lists(labels, min_size=1, max_size=4))
def test_generated_addresses_round_trip(local_atoms: list[str], domain_labels: list[str]) -> None:
    local = ".".join(local_atoms)[:64]
    if local.endswith(".") or ".." in local:
        return
    addr = Address(local, ".".join(domain_labels))
    assert parse_path(addr.path) == addr


@given(st.text(max_size=300), st.booleans())
def test_any_string_parses_or_raises_address_error(s: str, utf8: bool) -> None:
    try:
        a = parse_path(s, utf8=utf8, allow_null=True, allow_postmaster=True)
    except AddressError:
        return
    assert len(a.local.encode()) <= 64

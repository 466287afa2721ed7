"""Command lines both ways (`smtp/commands.py`): what the client writes, the server reads
back as the same values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.codes.reply import Reply
from mailgate.smtp.address import NULL_PATH, Address
from mailgate.smtp.commands import (
    bdat_command,
    mail_command,
    parse_bdat,
    parse_mail,
    parse_rcpt,
    rcpt_command,
    split_command,
    split_path,
    valid_helo,
)

atext = st.sampled_from(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
atoms = st.text(atext, min_size=1, max_size=8)
dot_atom = st.lists(atoms, min_size=1, max_size=3).map(".".join)
# A local part that needs quotes: spaces, specials, a quote or backslash (escaped).
quoted = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12)
utf8_local = st.text(st.sampled_from("aäöüé日本x"), min_size=1, max_size=6)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)


def addresses(utf8: bool) -> st.SearchStrategy[Address]:
    local = st.one_of(dot_atom, quoted, utf8_local) if utf8 else st.one_of(dot_atom, quoted)
    return st.builds(Address, local, domains)


# ENVID: 1 to 100 printable ASCII characters, `+`, `=` and space among them (xtext).
envids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=100)
notify = st.one_of(
    st.none(),
    st.just(("NEVER",)),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, max_size=3,
             unique=True).map(tuple),
)
orcpt = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["rfc822", "x-local"]),
              st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1,
                      max_size=60)),
)


@given(
    st.booleans().flatmap(lambda u: st.tuples(
        st.just(u), st.one_of(st.just(NULL_PATH), addresses(u)))),
    st.one_of(st.none(), st.integers(0, 10**20 - 1)),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["FULL", "HDRS"])),
    st.one_of(st.none(), envids),
)
def test_mail_round_trip(
    utf8_sender: tuple[bool, Address], size: int | None, eightbit: bool, ret: str | None,
    envid: str | None,
) -> None:
    utf8, sender = utf8_sender
    line = mail_command(sender, size=size, eightbit=eightbit, smtputf8=utf8, ret=ret,
                        envid=envid)
    verb, arg = split_command(line)
    assert verb == "MAIL"
    parsed = parse_mail(arg, esmtp=True, smtputf8=True, dsn=True, auth=False,
                        max_size=10**20)
    assert not isinstance(parsed, Reply), (line, parsed)
    got, params = parsed
    assert got == sender
    assert params.size == size
    assert params.body == ("8BITMIME" if eightbit else None)
    assert params.smtputf8 == utf8
    assert params.ret == ret
    assert params.envid == envid


@given(
    st.booleans().flatmap(lambda u: st.tuples(
        st.just(u), st.one_of(st.just(Address("postmaster", "")), addresses(u)))),
    notify,
    orcpt,
)
def test_rcpt_round_trip(
    utf8_rcpt: tuple[bool, Address], notify: tuple[str, ...] | None,
    orcpt: tuple[str, str] | None,
) -> None:
    utf8, rcpt = utf8_rcpt
    line = rcpt_command(rcpt, notify=notify, orcpt=orcpt)
    verb, arg = split_command(line)
    assert verb == "RCPT"
    parsed = parse_rcpt(arg, esmtp=True, utf8=utf8, dsn=True)
    assert not isinstance(parsed, Reply), (line, parsed)
    got, params = parsed
    assert got == rcpt
    assert params.notify == notify
    assert params.orcpt == orcpt


@given(st.integers(0, 10**20 - 1), st.booleans())
def test_bdat_round_trip(size: int, last: bool) -> None:
    verb, arg = split_command(bdat_command(size, last))
    assert verb == "BDAT"
    assert parse_bdat(arg) == (size, last)


def test_split_command_keeps_the_argument_as_sent() -> None:
    assert split_command("mail FROM:<a@b>  SIZE=1") == ("MAIL", "FROM:<a@b>  SIZE=1")
    assert split_command("QUIT") == ("QUIT", "")


@pytest.mark.parametrize(("arg", "want"), [
    ("FROM:<a@b>", ("<a@b>", [])),
    ("from: <a@b> SIZE=1  BODY=7BIT", ("<a@b>", ["SIZE=1", "BODY=7BIT"])),
    ('FROM:<"a>b"@c> SIZE=1', ('<"a>b"@c>', ["SIZE=1"])),
    ("FROM:<a@b>x SIZE=1", ("<a@b>x SIZE=1", [])),
    ("FROM:a@b SIZE=1", ("a@b", ["SIZE=1"])),
    ("TO:<a@b>", None),
])
def test_split_path(arg: str, want: tuple[str, list[str]] | None) -> None:
    assert split_path(arg, "FROM:") == want


def test_syntax_refusals() -> None:
    def mail(arg: str, esmtp: bool = True) -> int | None:
        got = parse_mail(arg, esmtp=esmtp, smtputf8=True, dsn=True, auth=False, max_size=100)
        return got.code if isinstance(got, Reply) else None

    assert mail("TO:<a@b>") == 501
    assert mail("FROM:<a@b> SIZE=1", esmtp=False) == 555
    assert mail("FROM:<a@b> SIZE=101") == 552
    assert mail("FROM:<a@b> SIZE=100") is None
    refused = parse_rcpt("TO:<ü@b>", esmtp=True, utf8=False, dsn=True)
    assert isinstance(refused, Reply) and refused.code == 553
    assert parse_bdat("12 FIRST") is None
    assert valid_helo("mx.example") and not valid_helo("") and not valid_helo("a\x85b")

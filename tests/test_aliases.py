"""Aliases, plus-addressing and who is a known local recipient, over real SMTP."""

from __future__ import annotations

import dataclasses
import smtplib
from pathlib import Path

import pytest

from mailgate.config import ConfigError, parse_config
from mailgate.config.aliases import AliasError, Aliases, expand
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.users import UserDB
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import wait_for_files

CONFIG = """
[domains]
local = ["example.test", "localhost"]
mailboxes = ["bob@example.test"]
[aliases]
info = ["bob", "carol@remote.example"]
"sales@example.test" = "info"
alice = ["alice", "alice@phone.example"]
root = "bob@example.test"
"""


def config_for(tmp_path: Path, text: str = CONFIG):  # type: ignore[no-untyped-def]
    parsed = parse_config(text, "test.toml")
    base = live_config(tmp_path / "data")
    return dataclasses.replace(base, domains=parsed.domains, aliases=parsed.aliases)


def queued(data: Path) -> list[list[tuple[str, str | None]]]:
    with SQLiteQueue(data / "queue.db") as q:
        return [[(r.address, r.orcpt) for r in m.recipients] for m in q.list(limit=100)]


def test_rcpt_knows_users_mailboxes_aliases_postmaster_and_abuse(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    UserDB(config.data_dir / "users.json").set_password("dave", "pw-dave-123456")
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.ehlo("client.test")
        c.mail("someone@elsewhere.example")
        assert c.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        assert c.rcpt("nobody+x@example.test")[0] == 550
        for known in ("bob@example.test", "Bob+lists@example.test", "dave@localhost",
                      "dave+tag@example.test", "info@example.test", "sales@example.test",
                      "postmaster@example.test", "abuse@localhost", "postmaster"):
            assert c.rcpt(known)[0] == 250, known


def test_aliases_are_expanded_when_queued_with_the_original_as_orcpt(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.sendmail("someone@elsewhere.example", ["sales@example.test"], b"Subject: 1\r\n\r\nx\r\n")
        c.sendmail("someone@elsewhere.example", ["alice@example.test", "bob+x@example.test"],
                   b"Subject: 2\r\n\r\nx\r\n")
        # Plus-address: bob's own Maildir, not one for "bob+x".
        wait_for_files(srv.maildir / "example.test" / "bob" / "new", 2)
        wait_for_files(srv.maildir / "example.test" / "alice" / "new", 1)
        assert not (srv.maildir / "example.test" / "bob+x").exists()
    second, first = queued(config.data_dir)[-2:]  # the oldest two: no bounce of them
    assert first == [("bob@example.test", "rfc822;sales@example.test"),
                     ("carol@remote.example", "rfc822;sales@example.test")]
    assert second == [("alice@example.test", "rfc822;alice@example.test"),
                      ("alice@phone.example", "rfc822;alice@example.test"),
                      ("bob@example.test", "rfc822;bob+x@example.test")]


def test_zero_config_stays_a_catch_all_for_localhost(tmp_path: Path) -> None:
    with LiveServer(live_config(tmp_path / "data")) as srv, \
            smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.sendmail("a@example.org", ["anything@localhost", "erin+tag@localhost"], b"x\r\n")
        wait_for_files(srv.maildir / "localhost" / "anything" / "new", 1)
        wait_for_files(srv.maildir / "localhost" / "erin" / "new", 1)


def test_catch_all_per_domain(tmp_path: Path) -> None:
    config = config_for(tmp_path, '[domains]\nlocal = ["a.test", "b.test"]\n'
                                  'catch_all = ["b.test"]\n')
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.ehlo("client.test")
        c.mail("x@elsewhere.example")
        assert c.rcpt("anyone@a.test")[0] == 550
        assert c.rcpt("anyone@b.test")[0] == 250


@pytest.mark.parametrize("text, said", [
    ('[aliases]\na = "b"\nb = "a"\n', "the aliases form a loop: a@localhost -> b@localhost"),
    ('[aliases]\na = ["a", "b"]\nb = ["c"]\nc = "a@localhost"\n', "loop"),
    ('[aliases]\n"x@elsewhere.test" = "a"\n', "is not one of domains.local"),
    ('[aliases]\nx = "|/bin/sh"\n', "command, file or :include:"),
    ('[aliases]\nx = []\n', "at least one address"),
    ('[domains]\nrecipient_delimiter = "ab"\n', "must be one character"),
    ('[domains]\ncatch_all = ["other.test"]\n', "other.test is not one of domains.local"),
    ('[queue]\nkeep_records = "soon"\n', "is not a duration"),
])
def test_bad_alias_settings_are_refused_when_loaded(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    assert said in str(info.value)


def test_an_aliases_file_in_the_traditional_format(tmp_path: Path) -> None:
    (tmp_path / "aliases").write_text(
        "# /etc/aliases\npostmaster: root\nroot: alice,\n  ops@example.net\n"
        "mailer-daemon: postmaster\n")
    config = parse_config('[domains]\nlocal = ["localhost"]\naliases_file = "aliases"\n',
                          "t.toml", base_dir=tmp_path)
    got = expand(config.aliases, "MAILER-DAEMON", "localhost", is_local=config.domains.is_local,
                 delimiter="+")
    assert got == [("alice", "localhost"), ("ops", "example.net")]
    (tmp_path / "bad").write_text("root: |/usr/bin/procmail\nno colon here\n")
    with pytest.raises(ConfigError) as info:
        parse_config('[domains]\naliases_file = "bad"\n', "t.toml", base_dir=tmp_path)
    assert "bad, line 1" in str(info.value) and "bad, line 2" in str(info.value)


def test_expansion_keeps_order_drops_repeats_and_bounds_size() -> None:
    config = parse_config('[aliases]\nall = ["a", "b", "a", "team"]\nteam = ["b", "c"]\n', "t")
    got = expand(config.aliases, "all", "localhost", is_local=config.domains.is_local)
    assert got == [("a", "localhost"), ("b", "localhost"), ("c", "localhost")]
    too_many = "[aliases]\nall = [" + ", ".join(f'"u{i}@x.example"' for i in range(1001))
    with pytest.raises(ConfigError, match="expands to more than 1000 addresses"):
        parse_config(too_many + "]\n", "t")
    with pytest.raises(AliasError, match="more than 1000"):
        expand(Aliases({"all": tuple(f"u{i}@x.example" for i in range(1001))}), "all",
               "localhost", is_local=config.domains.is_local)

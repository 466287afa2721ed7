"""Protocol conformance dialogues (tests/dialogs/*.dialog) against the sans-I/O session.

Each file is one short SMTP conversation; see tests/support/dialog.py for the format and the
fixed test policy. The tests below the parametrized case check the parser and runner
themselves: a bad dialog must fail loudly and say where.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailgate.smtp.client import NEED_DATA, ClientConfig, ClientSession
from tests.support.dialog import (
    Dialog,
    DialogFailure,
    DialogSyntaxError,
    EhloListing,
    Expect,
    ExpectClosed,
    ExpectMessage,
    Send,
    SessionPeer,
    ehlo_listings,
    load_dialog,
    parse_dialog,
    parse_listings,
    run_dialog,
    session_config,
    session_options,
    unescape,
)

DIALOGS = Path(__file__).resolve().parent / "dialogs"
FILES = sorted(DIALOGS.glob("*.dialog"))
GREETING = "S: 220 mx.test ESMTP mailgate\n"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dialog(path: Path) -> None:
    dialog = load_dialog(path)
    run_dialog(dialog, SessionPeer.for_dialog(dialog))


def test_there_are_dialogs() -> None:
    assert len(FILES) >= 85


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dialog_says_what_it_checks(path: Path) -> None:
    dialog = load_dialog(path)
    assert re.search(r"\b(RFC \d+|CVE-\d+-\d+)", dialog.description), (
        f"{path.name}: the first comment must say what is checked and cite the RFC section."
    )
    first = dialog.steps[0]
    assert isinstance(first, Expect) and str(first) == "220 mx.test ESMTP mailgate"


# --- the EHLO listings (tests/dialogs/ehlo.listings) -----------------------------------

LISTINGS = ehlo_listings()
# An EHLO reply line spelled in a dialog: "250-KEYWORD..." or "250 KEYWORD..." for any
# keyword a listing offers.
KEYWORDS = sorted({ext.split()[0] for listing in LISTINGS.values() for ext in listing.extensions})
SPELLED = re.compile(rf"S: 250[- ](?:{'|'.join(map(re.escape, KEYWORDS))})(?: |$)")


@pytest.mark.parametrize("name", sorted(LISTINGS))
def test_listing_is_what_the_session_advertises(name: str) -> None:
    """Each named listing is exactly the session's EHLO reply under the listing's options,
    so a listing cannot drift from what the server offers."""
    listing = LISTINGS[name]
    config, tls_active = session_config(listing.options, f"ehlo.listings [{name}]")
    peer = SessionPeer(config, tls_active)
    peer.receive(wait=False)  # the greeting
    peer.send(b"EHLO client.test\r\n")
    got = peer.receive(wait=False).decode().split("\r\n")
    assert got == ["250-mx.test Hello client.test", *listing.replies(), ""]


@pytest.mark.parametrize("name", sorted(LISTINGS))
def test_client_reads_the_listing_back(name: str) -> None:
    """The mirror: the client session, given the listing as the server's EHLO reply, sees
    exactly its extensions and (opportunistic TLS) starts TLS exactly when it is offered."""
    listing = LISTINGS[name]
    client = ClientSession(ClientConfig(helo_name="client.test", tls="may"))
    client.receive_data(b"220 mx.test ESMTP mailgate\r\n")
    assert client.next_event() is NEED_DATA
    assert client.data_to_send() == b"EHLO client.test\r\n"
    reply = ["250-mx.test Hello client.test", *listing.replies()]
    client.receive_data("".join(line + "\r\n" for line in reply).encode())
    while client.next_event() is not NEED_DATA:
        pass
    assert client.capabilities.keywords == tuple(
        (word, params) for word, _, params in (ext.partition(" ") for ext in listing.extensions))
    offered = "STARTTLS" in listing.extensions
    assert client.data_to_send() == (b"STARTTLS\r\n" if offered else b"")


def test_every_listing_is_used() -> None:
    used = {s.listing for path in FILES for s in load_dialog(path).steps
            if isinstance(s, Expect)}
    assert used >= set(LISTINGS), f"unused listings: {sorted(set(LISTINGS) - used)}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dialog_names_its_ehlo_listing(path: Path) -> None:
    """No dialog spells an EHLO listing (or part of one): it writes S: <ehlo NAME>."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert not SPELLED.match(line), (
            f"{path.name}:{number}: {line!r} spells an EHLO listing; write the Hello line, "
            "then S: <ehlo NAME> with a listing of tests/dialogs/ehlo.listings.")


def test_spelled_listing_lines_are_recognised() -> None:
    assert SPELLED.match("S: 250-PIPELINING")
    assert SPELLED.match("S: 250 AUTH PLAIN LOGIN")
    assert SPELLED.match("S: 250-SIZE 1000")
    assert not SPELLED.match("S: 250 2.1.0 Sender ok")
    assert not SPELLED.match("S: 250-mx.test Hello client.test")
    assert not SPELLED.match("S: <ehlo default>")


LISTINGS_TEXT = "# two\n[one]\nPIPELINING\n\n[two]\n#! starttls=true\nSIZE 10\nSTARTTLS\n"


def test_parse_listings() -> None:
    listings = parse_listings(LISTINGS_TEXT, "t.listings")
    assert listings == {
        "one": EhloListing("one", {}, ("PIPELINING",), 2),
        "two": EhloListing("two", {"starttls": "true"}, ("SIZE 10", "STARTTLS"), 5),
    }
    assert listings["two"].replies() == ("250-SIZE 10", "250 STARTTLS")
    assert listings["one"].replies() == ("250 PIPELINING",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PIPELINING\n", "starts with its name in brackets"),
        ("[one]\n", "has no extensions"),
        ("[one]\n[two]\nDSN\n", "has no extensions"),
        ("[one]\nDSN\n[one]\nDSN\n", "defined twice"),
        ("[one]\nDSN\n#! starttls=true\n", "before the extensions"),
        ("[one]\n#! starttls\nDSN\n", "key=value"),
        ("[one]\n DSN\n", "one keyword and its parameters"),
    ],
)
def test_bad_listings_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(DialogSyntaxError, match=r"^bad\.listings:\d+: ") as info:
        parse_listings(text, "bad.listings")
    assert message in str(info.value)


def test_ehlo_step_expands_to_the_listing() -> None:
    listings = parse_listings(LISTINGS_TEXT, "t.listings")
    d = parse_dialog("# x\n" + GREETING + "C: EHLO a\nS: 250-mx.test Hello a\n"
                     "S: <ehlo two>\nC: QUIT\n", "t.dialog", listings)
    assert d.steps[1:4] == (
        Send(b"EHLO a\r\n", 3),
        Expect("250-mx.test Hello a", False, 4),
        Expect("250-SIZE 10", False, 5, "two"),
    )
    assert d.steps[4] == Expect("250 STARTTLS", False, 5, "two")
    with pytest.raises(DialogSyntaxError, match=r"^t.dialog:3: no EHLO listing named 'three'; "
                                                r"the listings are: one, two\."):
        parse_dialog("# x\n" + GREETING + "S: <ehlo three>\n", "t.dialog", listings)


def test_ehlo_step_uses_the_listings_file_by_default() -> None:
    d = parse("C: EHLO a\nS: 250-mx.test Hello a\nS: <ehlo default>\n")
    assert [str(s) for s in d.steps[3:]] == list(LISTINGS["default"].replies())


# --- the parser ----------------------------------------------------------------------------


def parse(body: str, header: str = "# checks something (RFC 5321 4.1.1)\n") -> Dialog:
    return parse_dialog(header + GREETING + body, "t.dialog")


def test_parse_groups_client_lines_into_one_chunk() -> None:
    d = parse("C: EHLO a\nR: NOOP\\r\\n\nS: 250 x*\nS: 250 y\\*\nM: a\\x00\\r\\n\nX: closed\n")
    assert d.description == "checks something (RFC 5321 4.1.1)"
    assert d.steps[1:] == (
        Send(b"EHLO a\r\nNOOP\r\n", 3),
        Expect("250 x", True, 5),
        Expect("250 y*", False, 6),
        ExpectMessage(b"a\x00\r\n", 7),
        ExpectClosed(8),
    )


def test_parse_options_and_comments() -> None:
    d = parse_dialog("# what\n#! starttls=true max_errors=3\n#! tls_active=true\n# more\n"
                     + GREETING, "t.dialog")
    assert d.options == {"starttls": "true", "max_errors": "3", "tls_active": "true"}
    config, tls = session_options(d)
    assert config.starttls and config.max_errors == 3 and tls
    assert config.hostname == "mx.test"


def test_parse_empty_client_line_sends_crlf() -> None:
    d = parse("C:\nC: \nS: 250 ok\n")
    assert d.steps[1] == Send(b"\r\n\r\n", 3)


def test_unescape() -> None:
    assert unescape(r"a\r\n\t\0\x7f\\\"é") == b'a\r\n\t\x00\x7f\\"\xc3\xa9'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no steps"),
        ("# only a comment\n", "no steps"),
        ("C: EHLO a\n", "starts with the greeting"),
        ("S: 250 hello\n", "starts with the greeting"),
        (GREETING + "Q: what\n", "cannot read"),
        (GREETING + "S:250\n", "space after 'S:'"),
        (GREETING + "R: bad \\q escape\n", "unknown escape \\q"),
        (GREETING + "R: \\x4\n", "two hex digits"),
        (GREETING + "M: trailing \\\n", "lone backslash"),
        (GREETING + "X: open\n", "X: closed"),
        (GREETING + "#! starttls=true\n", "before the first step"),
        ("#! starttls\n" + GREETING, "key=value"),
        ("#! a=1 a=2\n" + GREETING, "set twice"),
    ],
)
def test_bad_dialogs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(DialogSyntaxError) as info:
        parse_dialog(text, "bad.dialog")
    assert message in str(info.value)
    assert str(info.value).startswith("bad.dialog:")


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(DialogSyntaxError, match=r"^bad.dialog:4: ") as info:
        parse_dialog("# x\n" + GREETING + "C: NOOP\nZ: nope\n", "bad.dialog")
    assert info.value.line == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("colour=blue", "unknown option 'colour'"),
        ("hostname=other.test", "unknown option 'hostname'"),
        ("starttls=maybe", "true or false"),
        ("max_errors=many", "needs a number"),
        ("max_recipients=5", "below the minimum"),
    ],
)
def test_bad_options_name_the_problem(options: str, message: str) -> None:
    d = parse_dialog(f"#! {options}\n" + GREETING, "opt.dialog")
    with pytest.raises(ValueError, match=r"opt\.dialog") as info:
        session_options(d)
    assert message in str(info.value)


# --- the runner ----------------------------------------------------------------------------


def run(body: str, options: str = "") -> None:
    head = f"#! {options}\n" if options else ""
    d = parse_dialog(head + GREETING + body, "run.dialog")
    run_dialog(d, SessionPeer.for_dialog(d))


def test_runner_passes_a_good_dialog() -> None:
    run("C: NOOP\nS: 250 Ok\nC: QUIT\nS: 221 Bye\nX: closed\n")


def test_runner_reports_a_different_line() -> None:
    with pytest.raises(DialogFailure, match=r"run.dialog:3: expected S: 250 Fine") as info:
        run("C: NOOP\nS: 250 Fine\n")
    assert "got S: 250 Ok" in str(info.value)
    assert "C: NOOP" in str(info.value)  # the transcript


def test_runner_reports_missing_output() -> None:
    with pytest.raises(DialogFailure, match="sent nothing more"):
        run("C: NOOP\nS: 250 Ok\nS: 250 Ok\n")


def test_runner_reports_unmatched_output_at_the_end() -> None:
    with pytest.raises(DialogFailure, match="at the end of the dialog"):
        run("C: NOOP\nC: NOOP\nS: 250 Ok\n")


def test_runner_reports_unmatched_output_before_sending() -> None:
    with pytest.raises(DialogFailure, match="before this was sent"):
        run("C: NOOP\nC: RSET\nS: 250 Ok\nC: QUIT\nS: 250 Reset state\n")


def test_runner_names_the_listing_of_a_wrong_line() -> None:
    with pytest.raises(DialogFailure, match=r"run.dialog:4: expected S: 250-CHUNKING "
                                            r"\(from <ehlo starttls>\)") as info:
        run("C: EHLO c\nS: 250-mx.test Hello c\nS: <ehlo starttls>\n")
    assert "got S: 250 CHUNKING" in str(info.value)


def test_runner_checks_closed() -> None:
    with pytest.raises(DialogFailure, match="closed the session"):
        run("C: NOOP\nS: 250 Ok\nX: closed\n")


def test_runner_checks_messages() -> None:
    tx = ("C: EHLO c\nS: 250-mx.test Hello c\nS: <ehlo default>\n"
          "C: MAIL FROM:<a@b.c>\nC: RCPT TO:<d@e.f>\nC: DATA\n"
          "S: 250 *\nS: 250 *\nS: 354 *\nC: hi\nC: .\nS: 250 2.0.0 Ok: queued as 1\n")
    run(tx + "M: hi\\r\\n\n")
    with pytest.raises(DialogFailure, match="message #1 differs"):
        run(tx + "M: ho\\r\\n\n")
    with pytest.raises(DialogFailure, match="only 1 completed"):
        run(tx + "M: hi\\r\\n\nM: hi\\r\\n\n")


class _Silent:
    """A peer that accepts anything and never answers (like a dead live server)."""

    def send(self, data: bytes) -> None:
        pass

    def receive(self, wait: bool) -> bytes:
        return b""

    def is_closed(self) -> bool:
        return False


class _Recorder(_Silent):
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.out = [b"220 mx.test ESMTP mailgate\r\n", b"250 O", b"k\r\n"]

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def receive(self, wait: bool) -> bytes:
        return self.out.pop(0) if wait and self.out else b""

    def messages(self) -> Sequence[bytes]:
        return []


def test_runner_works_with_any_peer() -> None:
    d = parse("C: NOOP\nS: 250 Ok\n")
    peer = _Recorder()
    run_dialog(d, peer)  # a reply split across reads is joined
    assert peer.sent == [b"NOOP\r\n"]
    with pytest.raises(DialogFailure, match="sent nothing more"):
        run_dialog(d, _Silent())


class _Greeter(_Silent):
    """Greets, then stays silent; keeps no messages."""

    def __init__(self) -> None:
        self.greeted = False

    def receive(self, wait: bool) -> bytes:
        if wait and not self.greeted:
            self.greeted = True
            return b"220 hi\r\n"
        return b""


def test_message_lines_need_a_message_source() -> None:
    with pytest.raises(DialogFailure, match="only 0 completed"):
        run_dialog(parse("M: x\n"), _Recorder())
    d = parse_dialog("# x\nS: 220*\nM: x\n", "m.dialog")
    with pytest.raises(DialogFailure, match="MessageSource"):
        run_dialog(d, _Greeter())
    run_dialog(d, _Greeter(), skip_messages=True)

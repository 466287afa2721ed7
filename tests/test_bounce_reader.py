"""Whole bounces read and explained: `mailgate explain --bounce` (issue 12, section 3).

The fixtures under tests/data/bounces/ are our own, written after each provider's
public documentation of its format (tests/data/bounces/SOURCES.md names them). Each is
read as the right kind, with the right recipients, status, reply and reason, and
explained in English and Chinese (the reason's meaning, who must act, what to do).
Complaints, auto-replies and success notices never report a failure; hostile input
gets one sentence, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailgate.cli import main
from mailgate.codes import registry as reg
from mailgate.codes.bounce import MAX_BOUNCE, BounceError, read_bounce
from mailgate.codes.bounce import reasons as rs
from mailgate.codes.bounce.explained import bounce_doc, reason_words
from mailgate.codes.render import to_text

DATA = Path(__file__).parent / "data" / "bounces"

# file -> (kind, form, address, action, status, reason, reply contains, remote_mta)
CASES: dict[str, tuple[str, str, str, str, str | None, str, str, str | None]] = {
    "sendmail-dsn-userunknown.eml": ("dsn", "sendmail", "bob.smith@example.net", "failed",
                                     "5.1.1", "userunknown", "User unknown", "mx1.example.net"),
    "postfix-dsn-mailboxfull.eml": ("dsn", "postfix", "carol@example.net", "failed", "5.2.2",
                                    "mailboxfull", "Mailbox full", "mx.example.net"),
    "postfix-text-hostunknown.eml": ("bounce", "postfix", "dave@exmaple.net", "failed", None,
                                     "hostunknown", "Host or domain name not found", None),
    "exim-blocked.eml": ("bounce", "exim", "erin@example.net", "failed", "5.7.1", "blocked",
                         "zen.spamhaus.org", "mx.example.net"),
    "qmail-mailboxfull.eml": ("bounce", "qmail", "frank@example.net", "failed", "5.2.2",
                              "mailboxfull", "mailbox full", None),
    "gmail-dmarc.eml": ("dsn", "gmail", "grace@example.net", "failed", "5.7.26",
                        "policyviolation", "DMARC policy", "mx.example.net"),
    "m365-recipientnotfound.eml": ("dsn", "exchange", "heidi@fabrikam.com", "failed", "5.1.10",
                                   "userunknown", "RESOLVER.ADR.RecipientNotFound", None),
    "yahoo-policy.eml": ("bounce", "yahoo", "judy@example.net", "failed", "5.7.9",
                         "policyviolation", "not accepted for policy reasons", None),
    "exchange-legacy-userunknown.eml": ("bounce", "text", "mallory@example.net", "failed",
                                        "5.1.1", "userunknown", "User unknown", None),
    "postfix-dsn-delayed.eml": ("dsn", "postfix", "oscar@example.net", "delayed", "4.4.1",
                                "networkerror", "Connection timed out", "mx.example.net"),
    # The DSN kept one line of a multi-line reply; Sendmail's transcript has it whole
    # (and the text names the recipient by another, expanded address).
    "sendmail-dsn-transcript-dmarc.eml": ("dsn", "sendmail", "ivan@example.net", "failed",
                                          "5.7.26", "policyviolation",
                                          "DMARC policy. Please contact", "mx.example.net"),
    # Given up (4.4.7) after a DNS failure written only in Sendmail's transcript.
    "sendmail-dsn-deferred-dns.eml": ("dsn", "sendmail", "judy@example.net", "failed", "4.4.7",
                                      "networkerror", "host name lookup failure",
                                      "example.net"),
    # A provider's own code (Cox's AUP#CXBL: the sending IP is blocked), not the
    # "sender rejected" its words would say.
    "cox-aup-blocked.eml": ("bounce", "postfix", "kevin@cox.net", "failed", "5.7.1", "blocked",
                            "AUP#CXBL", "mx.west.cox.net"),
    # The reason written before "The following recipients did not receive this message:".
    "text-reason-before-list.eml": ("bounce", "text", "laura@example.net", "failed", None,
                                    "expired", "not delivered within 2 days", None),
    # Japanese in ISO-2022-JP: declared (Domino), and written without a charset, with
    # lines a mailer wrapped inside an escape sequence and a character (m-FILTER).
    # test_bounce_japanese.py reads each variant.
    "domino-iso2022jp-userunknown.eml": ("dsn", "rfc3464", "ren.tanaka@example.co.jp",
                                         "failed", "5.1.1", "userunknown",
                                         "Domino ディレクトリには見つかりません", None),
    "mfilter-iso2022jp-userunknown.eml": ("bounce", "text", "kenji.sato@example.co.jp",
                                          "failed", "5.1.1", "userunknown",
                                          "User unknown in local recipient table", None),
}
# The words each explanation must carry: the reason's key meaning, in both languages.
KEY_WORDS = {
    "userunknown": ("no mailbox", "没有对应的邮箱"),
    "mailboxfull": ("storage", "存储空间"),
    "hostunknown": ("DNS", "DNS"),
    "blocked": ("blocklist", "黑名单"),
    "policyviolation": ("DMARC", "DMARC"),
    "networkerror": ("timed out", "超时"),
    "expired": ("retry period", "重试期限"),
}


def _read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_every_fixture_has_a_source_note() -> None:
    sources = (DATA / "SOURCES.md").read_text(encoding="utf-8")
    for path in DATA.glob("*.eml"):
        assert f"`{path.name}`" in sources, path.name


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_is_read(name: str) -> None:
    kind, form, address, action, status, reason, reply, remote = CASES[name]
    b = read_bounce(_read(name))
    assert (b.kind, b.form) == (kind, form)
    assert [r.address for r in b.recipients] == [address]
    r = b.recipients[0]
    assert (r.action, r.status, r.reason) == (action, status, reason)
    assert r.reply is not None and reply in r.reply
    assert r.remote_mta == remote
    assert r.failed
    # The status is the bounce's own, never made up: none in the text, none reported.
    assert r.status_from == ("none" if status is None else "dsn" if kind == "dsn"
                             else "reply")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_each_bounce_is_explained_in_both_languages(name: str, lang: str) -> None:
    reason = CASES[name][5]
    r = CliRunner().invoke(main, ["explain", "--bounce", str(DATA / name), "--lang", lang])
    assert r.exit_code == 0, r.output
    words = reason_words(reason, lang)
    text = " ".join(r.output.split())
    for part in ("title", "meaning"):
        assert " ".join(words[part].split())[:30] in text, (part, words[part])
    # Who must act: the reason's actors, or the provider's where mailgate knows its
    # reading of the reply (Gmail's DMARC: the sender's domain owner).
    from mailgate.codes import vendors

    label = reg.words(lang, "bounce")["actors"]
    line = text.split(label, 1)[1][:300]
    names = [str(n) for n in vendors.words(lang)["actors"].values()]
    assert words["actors"][:30] in text or any(line.lstrip(":： ").startswith(n[:20])
                                              for n in names), line
    assert CASES[name][2] in text and (CASES[name][4] or "") in text
    en, zh = KEY_WORDS[reason]
    assert (en if lang == "en" else zh) in words["meaning"] + words["fix"]
    # The fix: the reason's own, or the provider's where mailgate knows it (Microsoft).
    label = reg.words(lang, "bounce")["fix"]
    assert label in r.output


def test_m365_5_1_10_is_recipient_not_found_not_null_mx() -> None:
    # The trap of section 4: Exchange's 5.1.10 is not the registry's null MX.
    b = read_bounce(_read("m365-recipientnotfound.eml"))
    assert b.recipients[0].reason == "userunknown"
    text = to_text(bounce_doc(b, "en"), color=False)
    assert "Microsoft" in text and "not found" in text


def test_json_contract_one_object_per_file_in_order() -> None:
    names = ["exim-blocked.eml", "arf-complaint.eml", "qmail-mailboxfull.eml"]
    r = CliRunner().invoke(main, ["explain", "--bounce", *[str(DATA / n) for n in names],
                                  "--format", "json"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 3  # JSON Lines
    objs = [json.loads(line) for line in lines]
    assert [Path(o["file"]).name for o in objs] == names
    for o in objs:
        for rec in o["recipients"]:
            assert {"address", "action", "status", "reply", "reason", "remote_mta"} <= set(rec)
            assert rec["action"] in (None, "failed", "delayed", "delivered", "relayed",
                                     "expanded")
            assert rec["reason"] in rs.REASONS
    assert objs[0]["recipients"][0]["reason"] == "blocked"
    assert objs[1]["recipients"][0]["action"] is None


def test_json_from_stdin_is_one_object() -> None:
    r = CliRunner().invoke(main, ["explain", "--bounce", "-", "--format", "json"],
                           input=_read("sendmail-dsn-userunknown.eml"))
    assert r.exit_code == 0, r.output
    o = json.loads(r.output)
    assert o["file"] == "stdin" and o["recipients"][0]["status"] == "5.1.1"


@pytest.mark.parametrize("name,kind,reason", [
    ("arf-complaint.eml", "complaint", "feedback"),
    ("auto-reply.eml", "auto-reply", "vacation"),
    ("success-dsn.eml", "success", "delivered"),
])
def test_reports_that_are_not_failures(name: str, kind: str, reason: str) -> None:
    b = read_bounce(_read(name))
    assert b.kind == kind
    assert b.recipients and not b.failed
    assert {r.reason for r in b.recipients} == {reason}
    for lang in ("en", "zh"):
        text = to_text(bounce_doc(b, lang), color=False)
        assert reg.words(lang, "bounce")[f"kinds.{kind}"][:20] in " ".join(text.split())


def test_an_amazon_ses_notification_is_read_as_json() -> None:
    b = read_bounce(_read("amazon-ses-notification.eml"))
    assert (b.kind, b.form) == ("dsn", "amazonses")
    r = b.recipients[0]
    assert (r.address, r.action, r.status, r.reason, r.code) == (
        "rupert@example.net", "failed", "5.1.1", "userunknown", 550)
    assert r.remote_mta == "a8-1.smtp-out.eu-west-1.amazonses.com"
    # Sendmail breaks lines over 990 characters with "!", a line break and a space.
    data = _read("amazon-ses-notification.eml").replace(b'"status"', b'!\n "status"', 1)
    assert read_bounce(data).recipients[0].status == "5.1.1"


def test_delivery_status_fields_written_as_text_are_read() -> None:
    # An old Sendmail announces multipart/report and writes no boundary: one text.
    data = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@mail.example.org>\n"
            b"To: alice@example.org\nSubject: Returned mail: User unknown\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"x\"\n\n"
            b"The original message was received at Mon, 1 Apr 2024 10:00:00 +0200\n\n"
            b"Reporting-MTA: dns; mail.example.org\n\n"
            b"Final-Recipient: RFC822; sybil@example.net\nAction: failed\nStatus: 5.1.1\n"
            b"Diagnostic-Code: SMTP; 550 5.1.1 <sybil@example.net>... User unknown\n")
    b = read_bounce(data)
    assert b.kind == "dsn"
    assert [(r.address, r.status, r.reason) for r in b.recipients] == [
        ("sybil@example.net", "5.1.1", "userunknown")]


def test_success_dsn_keeps_each_recipients_own_reply() -> None:
    b = read_bounce(_read("success-dsn.eml"))
    by = {r.address: r for r in b.recipients}
    assert by["victor@example.net"].action == "relayed"
    assert by["walter@example.org"].reply == "delivered to mailbox"
    assert by["walter@example.org"].code is None


def test_a_message_that_is_no_report() -> None:
    b = read_bounce(b"From: a@example.org\nTo: b@example.net\nSubject: hi\n\nLunch at 12?\n")
    assert b.kind == "none" and b.recipients == ()


@pytest.mark.parametrize("data,key", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x00\x01" * 5000, "binary"),
])
def test_hostile_input_gives_a_sentence(data: bytes, key: str) -> None:
    with pytest.raises(BounceError) as err:
        read_bounce(data)
    assert err.value.key == key
    assert str(err.value).endswith(".")


def test_hostile_inputs_are_read_without_error() -> None:
    nested = b"Content-Type: multipart/mixed; boundary=b\n\n" + (
        b"--b\nContent-Type: multipart/mixed; boundary=b\n\n" * 3000)
    header_flood = b"X-A: " + b"a" * 500_000 + b"\nFrom: MAILER-DAEMON@x.example\n\nhi\n"
    many_addrs = (b"From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail\n\n"
                  + b"".join(b"<u%d@example.net>: 550 5.1.1 unknown\n" % i for i in range(20000)))
    garbage = bytes(range(256)) * 4000
    for data in (nested, header_flood, many_addrs, garbage, b"x" * (MAX_BOUNCE + 10)):
        try:
            b = read_bounce(data)
        except BounceError as exc:
            assert str(exc)
            continue
        assert len(b.recipients) <= 500


def test_a_charset_that_is_no_charset_is_read_past() -> None:
    # An encoded word naming a charset the standard library refuses (CharsetError).
    b = read_bounce(b"From: MAILER-DAEMON@x.example\nSubject: =?iso-8859-1\xff?q?abc?=\n\n"
                    b"<a@b.example>: 550 5.1.1 unknown\n")
    assert [(r.address, r.reason) for r in b.recipients] == [("a@b.example", "userunknown")]


def test_a_bounce_longer_than_the_limit_is_read_from_its_beginning(tmp_path: Path) -> None:
    big = tmp_path / "big.eml"
    big.write_bytes(_read("qmail-mailboxfull.eml") + b"x" * (MAX_BOUNCE + 100))
    r = CliRunner().invoke(main, ["explain", "--bounce", str(big)])
    assert r.exit_code == 0, r.output
    assert "frank@example.net" in r.output
    assert f"longer than {MAX_BOUNCE} bytes" in " ".join(r.output.split())
    r = CliRunner().invoke(main, ["explain", "--bounce", str(big), "--format", "json"])
    assert json.loads(r.output)["truncated"] is True


def test_cli_errors_are_sentences_in_the_language_asked(tmp_path: Path) -> None:
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    r = CliRunner().invoke(main, ["explain", "--bounce", str(empty), "--lang", "zh"])
    assert r.exit_code == 2
    assert reg.words("zh", "bounce")["errors.empty"] in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["explain", "--bounce", str(tmp_path / "missing.eml")])
    assert r.exit_code == 2 and "Cannot read" in r.output
    r = CliRunner().invoke(main, ["explain", "--bounce", str(empty), "--format", "json"])
    assert r.exit_code == 2 and json.loads(r.output)["error"]


def test_every_reason_has_words_and_actors_in_every_language() -> None:
    actors = rs.tables()["actors"]
    for reason in rs.REASONS:
        assert actors.get(reason), reason
        for lang in reg.languages():
            w = reason_words(reason, lang)
            assert w["title"] != reason and w["meaning"] and w["fix"] and w["actors"], (
                lang, reason)


def test_every_reason_pattern_compiles_and_names_a_reason() -> None:
    # The patterns compile on first use; a broken one must fail here, not in a call.
    t = rs.tables()
    for rule in t["first"] + t["late"]:
        assert rule.name in rs.REASONS
        assert rule.search("") in (True, False)
    assert set(t["status"].values()) | set(t["prefix"].values()) <= set(rs.REASONS)


def test_reasons_follow_status_and_text() -> None:
    assert rs.classify("5.1.1", "550 5.1.1 no such user") == "userunknown"
    assert rs.classify("5.2.2", "552 Requested mail action aborted: exceeded storage "
                       "allocation") == "mailboxfull"
    assert rs.classify("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] "
                       "blocked using zen.spamhaus.org") == "blocked"
    assert rs.classify("5.0.0", "550 Message content rejected as spam") == "spamdetected"
    assert rs.classify("4.4.7", "") == "expired"
    assert rs.classify("2.0.0", "250 ok") == "delivered"
    assert rs.classify(None, "") == "undefined"
    assert rs.classify(None, "something odd happened") == "onhold"


# Reply texts as MTAs and providers write them (Sendmail, Postfix, qmail, Exim, Gmail,
# Microsoft 365, Amazon SES, Cox, Spectrum, Orange, QQ Mail, Mimecast), each with the
# reason Sisimai gives it and mailgate now gives too:
# (status, text, action, command, hosts, reason)
PHRASES: list[tuple[str | None, str, str | None, str | None, tuple[str | None, ...], str]] = [
    # SPF and Sender ID failures: the sending IP is not one the domain allows.
    ("5.7.1", "550 Bad SPF records for [example.org:192.0.2.2], see http://spf.pobox.com/",
     None, "MAIL", (), "blocked"),
    ("5.7.26", "550 5.7.26 The MAIL FROM domain [example.org] has an SPF record with a hard "
     "fail policy (-all) but it fails to pass SPF checks with the ip: [192.0.2.24].",
     None, "DATA", (), "blocked"),
    ("5.7.1", "550 5.7.1 can't determine Purported Responsible Address", None, "DATA", (),
     "blocked"),
    ("5.7.25", "550-5.7.25 The IP address sending this message does not have a 550-5.7.25 PTR "
     "record setup. Gmail does not accept messages from IPs with missing PTR records.",
     None, "DATA", (), "blocked"),
    # Unauthenticated, and authentication level: the domain owner's to fix.
    ("5.7.26", "550-5.7.26 This mail has been blocked because the sender is unauthenticated. "
     "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.",
     None, "DATA", (), "securityerror"),
    ("5.7.515", "550 5.7.515 Access denied, sending domain EXAMPLE.ORG doesn't meet the "
     "required authentication level.", None, "DATA", (), "securityerror"),
    ("5.7.509", "550 5.7.509 Access denied, sending domain [EXAMPLE.ORG] does not pass DMARC "
     "verification and has a DMARC policy of reject.", None, "DATA", (), "policyviolation"),
    # Policy words, also with line codes inside a reply joined from several lines.
    ("5.0.0", "550 Protocol violation", None, "DATA", (), "policyviolation"),
    ("5.7.1", "550-5.7.1 [192.0.2.1 13] Messages with multiple 550 5.7.1 addresses in From: "
     "header are not accepted.", None, "DATA", (), "policyviolation"),
    ("5.7.9", "554 5.7.9 Header error", None, "DATA", (), "policyviolation"),
    ("5.7.0", "552-5.7.0 This message was blocked because its content presents a potential",
     None, "DATA", (), "policyviolation"),
    ("5.0.0", "Your email to group g@example.org was rejected due to spam classification. "
     "* Set up SPF records for your sending domain", None, None, (), "spamdetected"),
    # DNS: a failed lookup is the network's; a name that does not exist is not.
    ("5.4.4", "Name service error for name=example.org type=MX: Malformed or unexpected name "
     "server reply", None, None, (), "networkerror"),
    (None, "Name service error for domain example.org: Host not found, try again", None, None,
     (), "networkerror"),
    (None, "Host or domain name not found. Name service error for name=exmaple.net type=MX: "
     "Host not found, try again", None, None, (), "hostunknown"),
    (None, "The account or domain may not exist, they may be blacklisted, or missing the "
     "proper dns entries.", None, None, (), "hostunknown"),
    (None, "554 <u@example.org>... 550 Host unknown (Authoritative answer from name server)",
     None, "RCPT", (), "hostunknown"),
    (None, "No mx record found for domain=example.org", None, None, (), "notaccept"),
    ("4.4.1", "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1) I'm not going "
     "to try again; this message has been in the queue too long.", "failed", None, (),
     "networkerror"),
    # A timeout given up on is expired; still retried, it is the network's.
    (None, "Connection timed out", "failed", None, (), "expired"),
    (None, "Connection timed out", "delayed", None, (), "networkerror"),
    # A temporary reply reported as failed, with no cause named: undecided.
    ("4.0.0", "450 4.0.0 Temporary failure", "failed", None, (), "onhold"),
    ("4.4.7", "", "failed", None, (), "expired"),
    # Refused at MAIL FROM: about the sender, unless the words name the client.
    ("5.1.0", "553 5.1.0 sender.example.org does not exist E2110", None, "MAIL", (), "rejected"),
    ("5.7.1", "550 5.7.1 Access denied", None, "MAIL", (), "rejected"),
    ("4.7.1", "450 4.7.1 Access denied. IP name lookup failed [192.0.2.1]", None, "MAIL", (),
     "blocked"),
    (None, "\"Sorry, you are sending to/from an address that has been blacklisted\"", None, None,
     (), "rejected"),
    (None, "550 'u@example.org' is not a registered gateway user", None, None, (), "rejected"),
    ("5.4.1", "550 5.4.1 All recipient addresses rejected : Access denied", None, "DATA", (),
     "rejected"),
    # Other families.
    ("5.7.1", "550 5.7.1 <u@example.org>: Recipient address rejected: User u@example.org "
     "temporary locked. Please try again later!", None, None, (), "suspend"),
    (None, "554 Transaction failed: Duplicate header 'DKIM-Signature'.", None, "DATA", (),
     "systemerror"),
    (None, "500 Line limit exceeded", None, "DATA", (), "mesgtoobig"),
    ("5.0.0", "501 Rcpt-To validation failed: RCPT TO not accepted: 5.7.1 This system is not "
     "configured to relay mail", None, "RCPT", (), "norelaying"),
    # Providers' own codes and words, for their servers or their recipients only.
    ("4.0.0", "421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. Service refused, "
     "please try later. OFR_999 [999]", "failed", "CONNECT", ("smtp-in.orange.fr",), "blocked"),
    ("4.2.0", "421 4.2.0 Service refuse. Veuillez essayer plus tard. Service refused, please "
     "try later. OFR005_505 [505]", "failed", "DATA", (None, "wanadoo.fr"), "systemerror"),
    ("5.1.0", "550 5.1.0 <b@example.org> sender rejected. Please see "
     "https://www.spectrum.net/support/internet/understanding-email-error-codes for more "
     "information. AUP#In-1310", None, None, (None, "charter.net"), "toomanyconn"),
    ("5.0.0", "550 DMARC check failed.", None, "DATA", ("mx3.qq.com",), "blocked"),
    ("5.0.0", "550 DMARC check failed.", None, "DATA", ("mx.example.net",), "policyviolation"),
    ("4.2.1", "421 4.2.1 Service refuse. Veuillez essayer plus tard. Service refused, please "
     "try later. LPN006_107", "failed", "CONNECT", (None, "laposte.net"), "onhold"),
    ("5.2.0", "550 5.2.0 <a@example.org> From: Domain is invalid. Please provide a valid "
     "From: IB506", None, "DATA", ("smtp.secureserver.net",), "rejected"),
    ("5.0.0", "554 email rejected due to security policies - MCSpamSignature.sa.2.2", None,
     "DATA", ("service222.mimecast.com",), "virusdetected"),
    ("5.0.0", "554 Host network not allowed", None, "RCPT", ("us-smtp-inbound-1.mimecast.com",),
     "policyviolation"),
]


@pytest.mark.parametrize("status,text,action,command,hosts,reason", PHRASES)
def test_reply_texts_are_given_their_reason(status: str | None, text: str,
                                            action: str | None, command: str | None,
                                            hosts: tuple[str | None, ...], reason: str) -> None:
    assert rs.classify(status, text, action, command, None, 550, hosts) == reason


def test_every_vendor_table_is_well_formed() -> None:
    # Each provider cites a source, and names only reasons mailgate gives.
    raw = reg._load_toml(reg.data_root() / "bounce" / "reasons.toml")
    for v in raw["vendor"]:
        assert v["name"] and v["source"] and v["hosts"]
        named = set(v.get("codes", {}).values()) | set(v.get("code_prefix", {}).values())
        named |= {r for _, _, r in v.get("ranges", ())} | set(v.get("text", {}))
        assert named and named <= set(rs.REASONS), v["name"]
    assert len(rs.vendors()) == len(raw["vendor"])


def test_a_returned_text_bounce_with_a_temporary_reply_is_a_failure() -> None:
    # Sendmail returns a message it gave up on with the subject "Returned mail: Cannot
    # send message for N days" and the last temporary reply: failed, and the timeout
    # it gave up on makes it `expired` (still retried, it would be the network's).
    data = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>\n"
            b"To: alice@example.org\nSubject: Returned mail: Cannot send message for 5 days\n\n"
            b"   ----- Transcript of session follows -----\n"
            b"421 mx.example.net (smtp)... Deferred: Connection timed out during user open "
            b"with mx.example.net\n\n   ----- Unsent message follows -----\n"
            b"From: alice@example.org\nTo: mallory@example.net\nSubject: Plans\n\nHello\n")
    r = read_bounce(data).recipients
    assert [(x.address, x.action, x.code, x.reason) for x in r] == [
        ("mallory@example.net", "failed", 421, "expired")]


def test_a_postfix_server_transcript_gives_its_error_not_the_ok_before_it() -> None:
    b = read_bounce(_read("postfix-smtpd-error-notice.eml"))
    assert [(r.address, r.action, r.status, r.code, r.command, r.reason)
            for r in b.recipients] == [
        ("oliver@example.org", "delayed", "4.3.0", 451, "DATA", "systemerror")]


def test_exims_copy_of_your_message_ends_the_notice() -> None:
    # Exim's notice of a malformed recipient address, then "This is a copy of your
    # message": the recipient's words are the notice's, not the copied headers.
    data = (b"From: Mail Delivery System <mailer-daemon@relay.example.org>\n"
            b"To: alice@example.org\nSubject: Mail failure - malformed recipient address\n\n"
            b"A message that you sent contained one or more recipient addresses that were\n"
            b"incorrectly constructed:\n\n"
            b"  bob@example.org <paul@example.net>: malformed address: <paul@example.net> may "
            b"not follow bob@example.org\n\n"
            b"This address has been ignored.\n\n"
            b"------ This is a copy of your message, including all the headers. ------\n\n"
            b"To: paul@example.net\nSubject: Hello\n\nHello\n")
    r = read_bounce(data).recipients
    assert [(x.address, x.reason) for x in r] == [("paul@example.net", "syntaxerror")]
    assert "malformed address" in (r[0].reply or "")


def test_a_sendmail_transcript_names_the_command_above_each_recipient() -> None:
    # Two servers in one transcript: the first refused after DATA, the second at RCPT.
    # Each recipient's reply answered the command written above it, not the first one.
    data = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>\n"
            b"To: alice@example.org\nSubject: Returned mail: User unknown\n\n"
            b"   ----- Transcript of session follows -----\n"
            b"While talking to mx.example.net:\n>>> DATA\n<<< 554 Message refused\n"
            b"554 <quinn@example.net>... Message refused\n"
            b"While talking to mail.example.com:\n>>> RCPT To:<rita@example.com>\n"
            b"<<< 550 Requested User Mailbox not found. No such user here.\n"
            b"550 <rita@example.com>... User unknown\n\n"
            b"   ----- Unsent message follows -----\nFrom: alice@example.org\n\nHi\n")
    by = {r.address: r for r in read_bounce(data).recipients}
    assert (by["rita@example.com"].command, by["rita@example.com"].reason) == (
        "RCPT", "userunknown")
    assert by["quinn@example.net"].command == "DATA"

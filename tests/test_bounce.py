"""Delivery status notifications: every notice parses back into the RFC 3464 fields."""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Sequence
from dataclasses import replace
from email.message import EmailMessage
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.delivery.bounce import (
    DSNRecipient,
    last_attempt,
    make_dsn,
    notify_wants,
    null_mx_attempt,
    recipient_from_attempt,
)
from mailgate.queue import Attempt, QueuedMessage, Recipient, RecipientState

NOW = 1714989601.0  # Mon, 06 May 2024 10:00:01 +0000
ARRIVED = 1714989600.0
MTA = "mx.mailgate.test"

ORIGINAL = (
    b"Received: from client.example.net ([192.0.2.9])\r\n"
    b"\tby mx.mailgate.test with ESMTP id 018f4c2a1b3e\r\n"
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: Lunch on Friday?\r\n"
    b"Message-ID: <lunch-1@example.net>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"The body line that proves the whole message came back.\r\n"
)


def rcpt(address: str = "bob@example.com", rid: int = 1, *,
         state: RecipientState = RecipientState.FAILED,
         orcpt: str | None = None, notify: tuple[str, ...] | None = None) -> Recipient:
    return Recipient(id=rid, message_id="018f4c2a1b3e9f2c1a", address=address, state=state,
                     attempts=1, next_attempt=None, orcpt=orcpt, notify=notify)


def message(*recipients: Recipient, sender: str = "alice@example.net",
            content: bytes | None = ORIGINAL, **kw: object) -> QueuedMessage:
    return QueuedMessage(
        id="018f4c2a1b3e9f2c1a", sender=sender, received_at=ARRIVED,
        size=len(content or b""), recipients=recipients or (rcpt(),), content=content,
        **kw,  # type: ignore[arg-type]
    )


def attempt(code: int = 550, enhanced: str | None = "5.1.1",
            text: str = "<bob@example.com>: Recipient address rejected: User unknown",
            *, outcome: str = "failed", remote: bool = True,
            host: str = "mx1.example.com[192.0.2.25]:25") -> Attempt:
    return Attempt(at=NOW - 1, host=host, code=code, enhanced=enhanced, text=text,
                   outcome=outcome, remote=remote)


def dsn(msg: QueuedMessage, recipients: Sequence[DSNRecipient], **kw: object) -> bytes:
    args: dict[str, object] = {"reporting_mta": MTA, "kind": "failure", "now": NOW}
    args.update(kw)
    out = make_dsn(msg, recipients, **args)  # type: ignore[arg-type]
    assert out is not None
    return out


class Parsed:
    """A notice parsed back with the email package, with its raw bytes checked."""

    def __init__(self, raw: bytes) -> None:
        assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF in the notice"
        assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR in the notice"
        for line in raw.split(b"\r\n"):
            assert len(line) <= 998, f"line of {len(line)} octets"
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert self.msg.get_content_type() == "multipart/report"
        assert self.msg.get_param("report-type") == "delivery-status"
        self.parts = [cast(EmailMessage, x) for x in self.msg.iter_parts()]
        assert not self.msg.defects

    @property
    def text(self) -> str:
        part = self.parts[0]
        assert part.get_content_type() == "text/plain"
        assert part.get_content_charset() == "utf-8"
        return str(part.get_content())

    @property
    def blocks(self) -> list[email.message.Message]:
        part = self.parts[1]
        assert part.get_content_type() == "message/delivery-status"
        payload = part.get_payload()
        assert isinstance(payload, list)
        blocks = [b for b in payload if isinstance(b, email.message.Message)]
        assert len(blocks) == len(payload)
        return blocks

    @property
    def per_message(self) -> email.message.Message:
        return self.blocks[0]

    @property
    def per_recipient(self) -> list[email.message.Message]:
        return self.blocks[1:]


# ------------------------------------------------------------------ the two key cases


def test_remote_550_5_1_1() -> None:
    r = recipient_from_attempt(rcpt(), attempt())
    p = Parsed(dsn(message(), [r]))
    m = p.msg
    assert m["From"] == "Mail Delivery System <MAILER-DAEMON@mx.mailgate.test>"
    assert m["To"].addresses[0].addr_spec == "alice@example.net"
    assert b"\r\nTo: <alice@example.net>\r\n" in p.raw
    assert m["Subject"] == "Undelivered Mail Returned to Sender"
    assert m["Date"] == "Mon, 06 May 2024 10:00:01 +0000"
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["MIME-Version"] == "1.0"
    assert str(m["Message-ID"]).endswith("@mx.mailgate.test>")
    assert [x.get_content_type() for x in p.parts] == [
        "text/plain", "message/delivery-status", "message/rfc822"]

    pm = p.per_message
    assert pm["Reporting-MTA"] == "dns; mx.mailgate.test"
    assert pm["Arrival-Date"] == "Mon, 06 May 2024 10:00:00 +0000"
    assert pm["Original-Envelope-Id"] is None
    assert pm["Received-From-MTA"] is None  # no client recorded on this message
    (g,) = p.per_recipient
    assert g["Final-Recipient"] == "rfc822; bob@example.com"
    assert g["Original-Recipient"] is None
    assert g["Action"] == "failed"
    assert g["Status"] == "5.1.1"
    assert g["Remote-MTA"] == "dns; mx1.example.com"
    assert g["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown")
    assert g["Last-Attempt-Date"] == "Mon, 06 May 2024 10:00:00 +0000"
    assert g["Will-Retry-Until"] is None

    text = p.text
    assert "<bob@example.com>" in text
    assert "Delivery failed permanently." in text
    assert "mx1.example.com[192.0.2.25]:25" in text
    assert "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown" in text
    assert "Bad Destination Mailbox Address" in text  # the knowledge base's title
    assert "How to fix:" in text
    assert "null MX" not in text
    assert b"The body line that proves the whole message came back." in p.raw


def test_null_mx_failure_decided_locally() -> None:
    r = recipient_from_attempt(rcpt("bob@nullmx.example"), null_mx_attempt("nullmx.example", NOW))
    assert r.remote_mta is None
    assert r.status == "5.1.10"
    p = Parsed(dsn(message(rcpt("bob@nullmx.example")), [r]))
    (g,) = p.per_recipient
    assert g["Status"] == "5.1.10"
    assert g["Action"] == "failed"
    assert g["Remote-MTA"] is None
    diag = str(g["Diagnostic-Code"])
    kind, _, value = diag.partition(";")
    assert kind == "X-mailgate"  # a local decision is not an SMTP reply (RFC 3464 2.3.6)
    assert value.strip().startswith("556 5.1.10 ")
    assert "null MX" in value
    assert "smtp;" not in p.raw.decode()
    text = " ".join(p.text.split())
    assert "nullmx.example publishes a null MX record (RFC 7505)" in text
    assert "accepts no mail" in text
    assert "No connection was attempted" in text
    assert "Recipient Address Has Null MX" in text


def test_local_decision_without_null_mx_uses_own_type() -> None:
    a = Attempt(at=NOW, host="maildir", code=552, enhanced="5.2.2", text="Mailbox full",
                outcome="failed", remote=False)
    r = recipient_from_attempt(rcpt(), a)
    (g,) = Parsed(dsn(message(), [r])).per_recipient
    assert g["Diagnostic-Code"] == "X-mailgate; 552 5.2.2 Mailbox full"
    assert g["Remote-MTA"] is None
    assert g["Status"] == "5.2.2"


# ---------------------------------------------------------------- ENVID, ORCPT, RET


def test_orcpt_gives_original_recipient() -> None:
    q = rcpt(orcpt="rfc822;Bob@Example.COM")
    (g,) = Parsed(dsn(message(q), [recipient_from_attempt(q, attempt())])).per_recipient
    assert g["Original-Recipient"] == "rfc822; Bob@Example.COM"
    assert g["Final-Recipient"] == "rfc822; bob@example.com"


def test_orcpt_keeps_its_type() -> None:
    q = rcpt(orcpt="x400;/G=Bob/S=Smith/O=Example/")
    (g,) = Parsed(dsn(message(q), [recipient_from_attempt(q, attempt())])).per_recipient
    assert g["Original-Recipient"] == "x400; /G=Bob/S=Smith/O=Example/"


def test_received_from_mta() -> None:
    msg = message(client_helo="client.example.net", client_address="192.0.2.9")
    p = Parsed(dsn(msg, [recipient_from_attempt(rcpt(), attempt())]))
    assert p.per_message["Received-From-MTA"] == "dns; client.example.net ([192.0.2.9])"


def test_envid_gives_original_envelope_id() -> None:
    p = Parsed(dsn(message(envid="QQ314159"), [recipient_from_attempt(rcpt(), attempt())]))
    assert p.per_message["Original-Envelope-Id"] == "QQ314159"


def test_envid_with_unsafe_characters_is_xtext() -> None:
    p = Parsed(dsn(message(envid="a b\x01"), [recipient_from_attempt(rcpt(), attempt())]))
    assert p.per_message["Original-Envelope-Id"] == "a+20b+01"


@pytest.mark.parametrize("ret", [None, "FULL"])
def test_failure_returns_full_message(ret: str | None) -> None:
    p = Parsed(dsn(message(ret=ret), [recipient_from_attempt(rcpt(), attempt())]))
    part = p.parts[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload(0)
    assert isinstance(inner, email.message.Message)
    assert inner["Subject"] == "Lunch on Friday?"
    assert b"\r\n\r\nShall we meet at noon?\r\nThe body line" in p.raw
    assert "Your message is attached below." in p.text


def test_ret_hdrs_returns_headers_only() -> None:
    p = Parsed(dsn(message(ret="HDRS"), [recipient_from_attempt(rcpt(), attempt())]))
    part = p.parts[2]
    assert part.get_content_type() == "text/rfc822-headers"
    body = str(part.get_content())
    assert "Subject: Lunch on Friday?" in body
    assert "Message-ID: <lunch-1@example.net>" in body
    assert "noon" not in body
    assert b"Shall we meet" not in p.raw
    assert "RET=HDRS" in p.text


def test_size_cap_returns_headers_and_says_so() -> None:
    p = Parsed(dsn(message(), [recipient_from_attempt(rcpt(), attempt())],
                   max_return_size=100))
    assert p.parts[2].get_content_type() == "text/rfc822-headers"
    assert b"Shall we meet" not in p.raw
    text = " ".join(p.text.split())
    assert f"Your message is {len(ORIGINAL)} bytes, more than the 100 bytes" in text
    assert "only its headers are attached" in text


def test_default_cap_is_one_mebibyte() -> None:
    big = ORIGINAL + (b"x" * 76 + b"\r\n") * 14000  # a little over 1 MiB
    p = Parsed(dsn(message(content=big), [recipient_from_attempt(rcpt(), attempt())]))
    assert p.parts[2].get_content_type() == "text/rfc822-headers"
    assert len(p.raw) < 20000


def test_delay_returns_headers_even_with_ret_full() -> None:
    q = rcpt(state=RecipientState.DEFERRED)
    a = attempt(451, "4.7.1", "Greylisted, try again later", outcome="deferred")
    r = recipient_from_attempt(q, a, will_retry_until=NOW + 5 * 86400)
    p = Parsed(dsn(message(q, ret="FULL"), [r], kind="delay"))
    assert p.msg["Subject"] == "Delayed Mail (still being retried)"
    assert p.parts[2].get_content_type() == "text/rfc822-headers"
    (g,) = p.per_recipient
    assert g["Action"] == "delayed"
    assert g["Status"] == "4.7.1"
    assert g["Will-Retry-Until"] == "Sat, 11 May 2024 10:00:01 +0000"
    assert "still being retried until Sat, 11 May 2024" in " ".join(p.text.split())


def test_without_content_two_parts() -> None:
    p = Parsed(dsn(message(content=None), [recipient_from_attempt(rcpt(), attempt())]))
    assert [x.get_content_type() for x in p.parts] == ["text/plain", "message/delivery-status"]
    assert "no longer available" in p.text


# ------------------------------------------------------------------- who is told


def test_null_sender_is_never_bounced() -> None:
    r = recipient_from_attempt(rcpt(), attempt())
    for sender in ("", "<>"):
        assert make_dsn(message(sender=sender), [r], reporting_mta=MTA, kind="failure",
                        now=NOW) is None


@pytest.mark.parametrize(
    ("notify", "action", "owed"),
    [
        (("NEVER",), "failed", False),
        (("NEVER",), "delayed", False),
        (("NEVER",), "delivered", False),
        (("SUCCESS",), "failed", False),
        (("SUCCESS",), "delayed", False),
        (("SUCCESS",), "delivered", True),
        (("SUCCESS",), "relayed", True),
        (("SUCCESS",), "expanded", True),
        (("DELAY",), "failed", False),
        (("DELAY",), "delayed", True),
        (("DELAY",), "delivered", False),
        (("FAILURE",), "failed", True),
        (("FAILURE",), "delayed", False),
        (("FAILURE", "DELAY"), "delayed", True),
        (("SUCCESS", "FAILURE", "DELAY"), "delivered", True),
        (None, "failed", True),
        (None, "delayed", True),
        (None, "delivered", False),
        (None, "relayed", False),
    ],
)
def test_notify(notify: tuple[str, ...] | None, action: str, owed: bool) -> None:
    assert notify_wants(notify, action) is owed
    code, enhanced, outcome = {
        "failed": (550, "5.1.1", "failed"),
        "delayed": (450, "4.2.1", "deferred"),
    }.get(action, (250, "2.0.0", "delivered"))
    q = rcpt(notify=notify)
    r = recipient_from_attempt(q, attempt(code, enhanced, "text", outcome=outcome),
                               action=action)  # type: ignore[arg-type]
    kind = {"failed": "failure", "delayed": "delay"}.get(action, "success")
    out = make_dsn(message(q), [r], reporting_mta=MTA, kind=kind,  # type: ignore[arg-type]
                   now=NOW)
    assert (out is not None) is owed
    if out is not None:
        (g,) = Parsed(out).per_recipient
        assert g["Action"] == action


def test_notify_looked_up_from_the_message_when_not_given() -> None:
    q = rcpt(notify=("NEVER",))
    r = DSNRecipient("bob@example.com", None, "failed", "5.1.1", diagnostic=attempt())
    assert make_dsn(message(q), [r], reporting_mta=MTA, kind="failure", now=NOW) is None


def test_recipients_notify_excludes_are_left_out() -> None:
    q1, q2 = rcpt("a@example.com", 1, notify=("NEVER",)), rcpt("b@example.com", 2)
    rs = [recipient_from_attempt(q, attempt()) for q in (q1, q2)]
    groups = Parsed(dsn(message(q1, q2), rs)).per_recipient
    assert [g["Final-Recipient"] for g in groups] == ["rfc822; b@example.com"]


def test_success_notice() -> None:
    q = rcpt(state=RecipientState.DELIVERED, notify=("SUCCESS",))
    a = attempt(250, "2.0.0", "Ok: queued as 4VXyz", outcome="delivered")
    p = Parsed(dsn(message(q, ret="FULL"), [recipient_from_attempt(q, a)], kind="success"))
    assert p.msg["Subject"] == "Successful Mail Delivery Report"
    (g,) = p.per_recipient
    assert (g["Action"], g["Status"]) == ("delivered", "2.0.0")
    assert g["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok: queued as 4VXyz"
    assert p.parts[2].get_content_type() == "text/rfc822-headers"
    assert "How to fix" not in p.text


def test_failed_and_delayed_in_one_notice() -> None:
    q1 = rcpt("gone@example.com", 1)
    q2 = rcpt("slow@example.org", 2, state=RecipientState.DEFERRED)
    r1 = recipient_from_attempt(q1, attempt(550, "5.1.1", "No such user"))
    r2 = recipient_from_attempt(
        q2, attempt(421, "4.4.2", "Connection timed out", outcome="deferred",
                    host="mx.example.org[198.51.100.7]:25"),
        will_retry_until=NOW + 86400)
    p = Parsed(dsn(message(q1, q2), [r1, r2]))
    g1, g2 = p.per_recipient
    assert (g1["Final-Recipient"], g1["Action"], g1["Status"]) == (
        "rfc822; gone@example.com", "failed", "5.1.1")
    assert g1["Will-Retry-Until"] is None
    assert (g2["Final-Recipient"], g2["Action"], g2["Status"]) == (
        "rfc822; slow@example.org", "delayed", "4.4.2")
    assert g2["Remote-MTA"] == "dns; mx.example.org"
    assert g2["Will-Retry-Until"] == "Tue, 07 May 2024 10:00:01 +0000"
    # groups are separated by one blank line each
    status = p.raw.split(b"Content-Type: message/delivery-status")[1]
    assert b"Last-Attempt-Date: Mon, 06 May 2024 10:00:00 +0000\r\n\r\nFinal-Recipient" in status
    text = p.text
    assert "<gone@example.com>" in text
    assert "<slow@example.org>" in text
    assert text.index("<gone@example.com>") < text.index("<slow@example.org>")


def test_subject_follows_the_most_serious_outcome() -> None:
    q1 = rcpt("a@example.com", 1)
    q2 = rcpt("b@example.com", 2, state=RecipientState.DEFERRED)
    r1 = recipient_from_attempt(q1, attempt())
    r2 = recipient_from_attempt(q2, attempt(450, "4.2.1", "later", outcome="deferred"))
    p = Parsed(dsn(message(q1, q2), [r1, r2], kind="delay"))
    assert p.msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert p.parts[2].get_content_type() == "message/rfc822"


def test_subject_follows_what_is_reported() -> None:
    # A failure notice whose failed recipient asked for no failure notices, but whose
    # delayed one gets the default: the notice is about the delay only.
    q1 = rcpt("a@example.com", 1, notify=("DELAY",))
    q2 = rcpt("b@example.com", 2, state=RecipientState.DEFERRED)
    r1 = recipient_from_attempt(q1, attempt())
    r2 = recipient_from_attempt(q2, attempt(450, "4.2.1", "later", outcome="deferred"))
    p = Parsed(dsn(message(q1, q2), [r1, r2], kind="failure"))
    assert p.msg["Subject"] == "Delayed Mail (still being retried)"
    assert [g["Action"] for g in p.per_recipient] == ["delayed"]


# ----------------------------------------------------------------- status and text


@pytest.mark.parametrize(
    ("code", "outcome", "status"),
    [(550, "failed", "5.0.0"), (554, "failed", "5.0.0"), (451, "deferred", "4.0.0"),
     (250, "delivered", "2.0.0")],
)
def test_reply_without_enhanced_code(code: int, outcome: str, status: str) -> None:
    r = recipient_from_attempt(rcpt(), attempt(code, None, "No such user", outcome=outcome))
    assert r.status == status
    q = rcpt(notify=("SUCCESS", "FAILURE", "DELAY"))
    kind = {"failed": "failure", "deferred": "delay"}.get(outcome, "success")
    (g,) = Parsed(dsn(message(q), [replace(r, notify=q.notify)], kind=kind)).per_recipient
    assert g["Status"] == status
    assert g["Diagnostic-Code"] == f"smtp; {code} No such user"


def test_enhanced_code_of_the_wrong_class_is_not_used() -> None:
    r = recipient_from_attempt(rcpt(), attempt(550, "4.1.1", "confused server"))
    assert r.status == "5.0.0"


def test_generic_status_explains_the_basic_code() -> None:
    r = recipient_from_attempt(rcpt(), attempt(550, None, "No such user"))
    text = Parsed(dsn(message(), [r])).text
    assert "What 550 means: Mailbox Unavailable." in " ".join(text.split())


def test_multiline_reply_keeps_each_line() -> None:
    a = attempt(550, "5.1.1", "The email account that you tried to reach does not exist.\n"
                "Please try double-checking the recipient's email address.")
    (g,) = Parsed(dsn(message(), [recipient_from_attempt(rcpt(), a)])).per_recipient
    assert g["Diagnostic-Code"] == (
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
        "550 5.1.1 Please try double-checking the recipient's email address.")


def test_ip_literal_remote_mta() -> None:
    r = recipient_from_attempt(rcpt(), attempt(host="[192.0.2.7]:25"))
    assert r.remote_mta == "[192.0.2.7]"
    assert recipient_from_attempt(rcpt(), attempt(host="mx.example.com:2525")).remote_mta == (
        "mx.example.com")
    assert recipient_from_attempt(rcpt(), attempt(host="", remote=False)).remote_mta is None


def test_long_diagnostic_is_folded() -> None:
    words = " ".join(f"word{i}" for i in range(600))
    a = attempt(550, "5.7.1", f"Rejected: {words}")
    p = Parsed(dsn(message(), [recipient_from_attempt(rcpt(), a)]))
    (g,) = p.per_recipient
    assert g["Diagnostic-Code"] == f"smtp; 550 5.7.1 Rejected: {words}"
    status = p.raw.split(b"Content-Type: message/delivery-status")[1].split(b"\r\n--=_")[0]
    assert max(len(line) for line in status.split(b"\r\n")) <= 78


def test_a_word_longer_than_a_line_is_split() -> None:
    word = "x" * 2500
    a = attempt(550, "5.7.1", f"see {word} now")
    p = Parsed(dsn(message(), [recipient_from_attempt(rcpt(), a)]))
    (g,) = p.per_recipient
    diag = str(g["Diagnostic-Code"])
    assert diag.startswith("smtp; 550 5.7.1 see x")
    assert diag.endswith(" now")
    assert diag.replace(" ", "").count("x") == 2500


def test_utf8_addresses_use_the_rfc_6533_types() -> None:
    q = rcpt("用户@例子.测试", orcpt="utf-8;用户@例子.测试")
    content = ORIGINAL.replace(b"To: bob@example.com", "To: 用户@例子.测试".encode())
    msg = message(q, sender="アリス@example.jp", content=content, smtputf8=True)
    raw = dsn(msg, [recipient_from_attempt(q, attempt(text="用户 unknown"))])
    p = Parsed(raw)
    # The stdlib parser reads raw UTF-8 header bytes as surrogate escapes: check the bytes.
    assert "\r\nTo: <アリス@example.jp>\r\n".encode() in raw
    assert [x.get_content_type() for x in p.parts] == [
        "text/plain", "message/global-delivery-status", "message/global"]
    part2 = raw.split(b"Content-Type: message/global-delivery-status")[1]
    status = part2.split(b"\r\n--=_")[0].decode("utf-8")
    assert "Final-Recipient: utf-8; 用户@例子.测试\r\n" in status
    assert "Original-Recipient: utf-8; 用户@例子.测试\r\n" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 用户 unknown\r\n" in status
    assert "<用户@例子.测试>" in p.text


def test_utf8_address_types_in_a_7bit_report() -> None:
    # A unitext ORCPT in a message that did not use SMTPUTF8: the 7-bit report writes it
    # in the utf-8-addr-xtext form.
    q = rcpt(orcpt="utf-8;jörg@example.org")
    raw = dsn(message(q), [recipient_from_attempt(q, attempt(text="Jörg is gone"))])
    assert raw.isascii()
    (g,) = Parsed(raw).per_recipient
    assert g["Original-Recipient"] == "utf-8; j\\x{F6}rg@example.org"
    assert g["Diagnostic-Code"] == "smtp; 550 5.1.1 J\\x{F6}rg is gone"


def test_7bit_notice_for_an_ascii_message() -> None:
    raw = dsn(message(), [recipient_from_attempt(rcpt(), attempt())], lang="zh")
    assert raw.isascii()
    assert b"Content-Transfer-Encoding: 8bit" not in raw


def test_8bit_body_is_returned_as_it_was() -> None:
    content = ORIGINAL + "Grüße aus Köln\r\n".encode()
    msg = message(content=content, body_8bit=True)
    raw = dsn(msg, [recipient_from_attempt(rcpt(), attempt())])
    p = Parsed(raw)
    assert p.parts[1].get_content_type() == "message/delivery-status"
    assert p.parts[2].get_content_type() == "message/rfc822"
    assert p.parts[2]["Content-Transfer-Encoding"] == "8bit"
    assert p.msg["Content-Transfer-Encoding"] == "8bit"
    assert "Grüße aus Köln\r\n".encode() in raw
    head, _, _ = raw.partition(b"Content-Type: message/rfc822")
    assert head.isascii()


def test_chinese_text_part() -> None:
    r = recipient_from_attempt(rcpt("bob@nullmx.example"), null_mx_attempt("nullmx.example", NOW))
    p = Parsed(dsn(message(rcpt("bob@nullmx.example")), [r], lang="zh"))
    assert p.parts[0]["Content-Language"] == "en, zh"
    assert p.msg["Subject"] == "Undelivered Mail Returned to Sender / 退信：邮件无法投递"
    text = p.text
    assert "No connection was attempted" in " ".join(text.split())  # English first
    assert "—— 中文说明 ——" in text
    assert "收件人的域名 nullmx.example 发布了空 MX 记录（RFC 7505）" in text
    assert "邮件系统没有尝试连接任何服务器" in text
    assert "收件域名声明空 MX" in text  # the knowledge base's Chinese title
    assert text.index("Delivery failed permanently") < text.index("中文说明")


def test_english_only_by_default() -> None:
    p = Parsed(dsn(message(), [recipient_from_attempt(rcpt(), attempt())]))
    assert p.parts[0]["Content-Language"] == "en"
    assert "中文" not in p.text


def test_message_ids_are_unique() -> None:
    rs = [recipient_from_attempt(rcpt(), attempt())]
    ids = {Parsed(dsn(message(), rs)).msg["Message-ID"] for _ in range(20)}
    assert len(ids) == 20


def test_boundary_never_occurs_in_the_original() -> None:
    rs = [recipient_from_attempt(rcpt(), attempt())]
    first = Parsed(dsn(message(), rs, message_id="fixed@mx.mailgate.test"))
    boundary = first.msg.get_boundary()
    assert boundary is not None
    tricky = ORIGINAL + b"--" + boundary.encode() + b"--\r\n"
    p = Parsed(dsn(message(content=tricky), rs, message_id="fixed@mx.mailgate.test"))
    assert p.msg.get_boundary() != boundary
    assert len(p.parts) == 3
    assert b"--" + boundary.encode() + b"--\r\n" in p.raw


def test_bad_arguments_are_refused() -> None:
    r = recipient_from_attempt(rcpt(), attempt())
    with pytest.raises(ValueError, match="language"):
        make_dsn(message(), [r], reporting_mta=MTA, kind="failure", now=NOW, lang="fr")
    with pytest.raises(ValueError, match="enhanced status code"):
        DSNRecipient("bob@example.com", None, "failed", "550")
    with pytest.raises(ValueError, match="DSN action"):
        DSNRecipient("bob@example.com", None, "bounced", "5.0.0")  # type: ignore[arg-type]


def test_no_recipients_no_notice() -> None:
    assert make_dsn(message(), [], reporting_mta=MTA, kind="failure", now=NOW) is None


def test_last_attempt_picks_the_latest() -> None:
    q = rcpt()
    early, late = attempt(text="first"), replace(attempt(text="second"), at=NOW + 60)
    msg = replace(message(q), attempts=((1, late), (2, attempt(text="other")), (1, early)))
    assert last_attempt(msg, q) == late
    assert last_attempt(message(q), q) is None


def test_recipient_without_attempt_uses_its_last_reply() -> None:
    q = replace(rcpt(), last_code=550, last_enhanced="5.1.1", last_text="gone")
    r = recipient_from_attempt(q)
    assert (r.action, r.status, r.diagnostic, r.remote_mta) == ("failed", "5.1.1", None, None)
    (g,) = Parsed(dsn(message(q), [r])).per_recipient
    assert g["Diagnostic-Code"] is None


# --------------------------------------------------------------------- properties

_reply_text = st.text(
    st.characters(codec="utf-8"), max_size=3000
) | st.lists(st.text(min_size=1, max_size=40), max_size=200).map(" ".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=_reply_text,
    code=st.sampled_from([421, 450, 451, 452, 550, 552, 553, 554, 556]),
    with_enhanced=st.booleans(),
    remote=st.booleans(),
    smtputf8=st.booleans(),
    host=st.text(max_size=60),
    envid=st.none() | st.text(max_size=100),
    orcpt=st.none() | st.builds(lambda t, a: f"{t};{a}",
                                st.sampled_from(["rfc822", "utf-8", "x400"]),
                                st.text(max_size=100)),
)
def test_any_reply_text_gives_a_sound_notice(
    text: str, code: int, with_enhanced: bool, remote: bool, smtputf8: bool, host: str,
    envid: str | None, orcpt: str | None,
) -> None:
    enhanced = f"{code // 100}.7.1" if with_enhanced else None
    outcome = "failed" if code >= 500 else "deferred"
    a = Attempt(at=NOW, host=host, code=code, enhanced=enhanced, text=text,
                outcome=outcome, remote=remote)
    q = rcpt(orcpt=orcpt)
    r = recipient_from_attempt(q, a, will_retry_until=NOW + 3600)
    kind = "failure" if code >= 500 else "delay"
    raw = make_dsn(message(q, smtputf8=smtputf8, envid=envid), [r], reporting_mta=MTA,
                   kind=kind, now=NOW, lang="zh")  # type: ignore[arg-type]
    assert raw is not None
    p = Parsed(raw)  # every line <= 998 octets, CRLF only, parses without defects
    assert len(p.parts) == 3
    if not smtputf8:
        assert raw.isascii()
        (g,) = p.per_recipient
        diag = str(g["Diagnostic-Code"])
        assert diag.startswith(("smtp; " if remote else "X-mailgate; ") + str(code))
        assert g["Status"] == (enhanced or f"{code // 100}.0.0")
        assert g["Action"] == ("failed" if code >= 500 else "delayed")
        assert (g["Original-Recipient"] is not None) is bool(orcpt)
        assert (p.per_message["Original-Envelope-Id"] is not None) is (envid is not None)
    else:
        status = raw.split(b"Content-Type: message/global-delivery-status")[1]
        assert b"\r\nStatus: " in status

"""Delay notices (RFC 3464 `Action: delayed`, RFC 3461 NOTIFY=DELAY) from the outbound
engine and from local delivery.

Same machinery as tests/test_delivery.py (its `outbound` fixture: a real SQLite queue, a
real DNS server on loopback, aiosmtpd MX hosts, the engine's clock moved by hand); the
notices then go through local delivery into alice's Maildir, where the tests read them.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.local import LocalDelivery
from mailgate.queue import NewMessage, NewRecipient, RecipientState
from mailgate.queue.report import message_json, show_text
from mailgate.queue.sqlite import SQLiteQueue
from tests import test_delivery
from tests.support.fakemx import DSN, FakeMX, parse_dsn
from tests.support.smtpwire import wire_form
from tests.test_delivery import CONTENT, RETRY, Outbound

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

# test_delivery.py's fixtures, found here by name.
outbound = test_delivery.outbound
mxs = test_delivery.mxs

DELIVERED = RecipientState.DELIVERED
DEFERRED = RecipientState.DEFERRED
FAILED = RecipientState.FAILED

WARNING = 100.0  # delay_warning in most tests: older than this after the second retry
LIFETIME = 1000.0  # max_queue_lifetime


def make(outbound: Callable[..., Outbound], **delivery: float) -> Outbound:
    delivery.setdefault("delay_warning", WARNING)
    delivery.setdefault("max_queue_lifetime", LIFETIME)
    return outbound(delivery=delivery)


def mailbox(out: Outbound, user: str = "alice") -> list[bytes]:
    """Local delivery takes what is queued for localhost (the notices), then the files in
    `user`'s Maildir, oldest first."""
    local = LocalDelivery(out.config, out.queue)
    asyncio.run(local.run_once())
    new = out.config.data_dir / "maildir" / "localhost" / user / "new"
    if not new.is_dir():
        return []

    def order(path: Path) -> tuple[int, ...]:
        # `seconds.M<microseconds>P<pid>Q<count>.host`: the numbers, not the text, sort.
        return tuple(int(n) for n in re.findall(r"\d+", path.name.split(",")[0])[:4])

    return [wire_form(p.read_bytes()) for p in sorted(new.iterdir(), key=order)]


def notices(out: Outbound) -> list[DSN]:
    """Every notice in alice's Maildir, in the order delivered, each checked for what any
    notice needs: from <> (local delivery's Return-Path), to the sender."""
    found = []
    for data in mailbox(out):
        assert data.startswith(b"Return-Path: <>\r\n"), data[:200]
        dsn = parse_dsn(data)
        assert dsn.message["To"] == "<alice@localhost>"
        found.append(dsn)
    return found


def age(out: Outbound, rounds: int = 3) -> None:
    """`rounds` rounds on the retry schedule (0, 60, 120 s, ...): with three the message
    is 180 s old, past WARNING, at its third attempt."""
    for i in range(rounds):
        if i:
            out.clock.advance(RETRY[min(i, len(RETRY)) - 1])
        assert out.run() == 1


# --- the notice ----------------------------------------------------------------------


def test_a_deferred_message_past_delay_warning_gets_one_delay_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    qid = out.submit("defer-450@one.test")
    received = out.queue.show(qid).received_at
    age(out, 2)  # 60 s old: younger than WARNING
    assert out.bounces == [] and notices(out) == []
    assert out.recipients(qid)["defer-450@one.test"].delay_notified is False
    out.clock.advance(RETRY[1])  # 180 s old, deferred a third time
    assert out.run() == 1
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.attempts, rcpt.delay_notified) == (DEFERRED, 3, True)
    [bounce] = out.bounces
    assert bounce.sender == "" and [r.address for r in bounce.recipients] == ["alice@localhost"]
    [dsn] = notices(out)
    assert dsn.message["Subject"] == "Delayed Mail (still being retried)"
    [fields] = dsn.recipients
    assert fields["final-recipient"] == "rfc822; defer-450@one.test"
    assert (fields["action"], fields["status"]) == ("delayed", "4.2.1")
    assert fields["remote-mta"] == "dns; mx1.test"
    assert fields["diagnostic-code"].startswith("smtp; 450 4.2.1 ")
    # Still retried until the queue lifetime ends, counted from arrival (RFC 3464 2.3.9).
    until = email.utils.parsedate_to_datetime(fields["will-retry-until"]).timestamp()
    assert until == pytest.approx(received + LIFETIME, abs=1)
    assert "still being retried until" in dsn.human
    # The original's headers only (RFC 3461 4.3: a delay notice need not carry the body).
    assert dsn.returned is not None
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    returned = dsn.returned.get_payload()
    assert "Message-ID: <delivery-test@localhost>" in returned
    assert "Subject: delivery test" in returned and "Hello." not in returned
    assert out.engine.stats.delay_notices == 1 and out.engine.stats.bounces == 0
    # The administrator sees it too: `mailgate queue show` and the JSON API.
    shown = out.queue.show(qid)
    assert "sender told of the delay" in show_text(shown)
    assert message_json(shown)["recipients"][0]["delay_notified"] is True


def test_no_second_notice_for_a_recipient_deferred_again(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    qid = out.submit("defer-450@one.test")
    age(out)
    assert len(out.bounces) == 1
    for _ in range(3):
        out.clock.advance(RETRY[-1])
        assert out.run() == 1
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.attempts) == (DEFERRED, 6)
    assert len(out.bounces) == 1 and len(notices(out)) == 1


def test_the_flag_survives_a_restart(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    qid = out.submit("defer-450@one.test")
    age(out)
    assert len(out.bounces) == 1
    # A restart: the queue file opened again, a new engine. The flag is in the file.
    out.queue.close()
    out.queue = SQLiteQueue(out.config.data_dir / "queue.db")
    out.engine = DeliveryEngine(out.config, out.queue, out.resolver, out._enqueue,
                                clock=out.clock)
    out.clock.advance(RETRY[-1])
    assert out.run() == 1
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.attempts, rcpt.delay_notified) == (DEFERRED, 4, True)
    assert len(out.bounces) == 1


@pytest.mark.parametrize(
    ("notify", "owed"),
    [
        (None, True),  # no NOTIFY: failures and delays are reported (RFC 3461 4.1)
        (("DELAY",), True),
        (("FAILURE", "DELAY"), True),
        (("NEVER",), False),
        (("FAILURE",), False),
        (("SUCCESS", "FAILURE"), False),
    ],
)
def test_notify_decides_whether_a_delay_is_reported(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX],
        notify: tuple[str, ...] | None, owed: bool) -> None:
    out = make(outbound)
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(),
        recipients=[NewRecipient("defer-450@one.test", notify=notify)]))
    age(out)
    found = notices(out)
    assert len(found) == (1 if owed else 0)
    if owed:
        assert found[0].recipients[0]["action"] == "delayed"
    # Marked either way: a notice NOTIFY refused is not reconsidered every round.
    assert out.recipients(qid)["defer-450@one.test"].delay_notified is True
    out.clock.advance(RETRY[-1])
    out.run()
    assert len(out.bounces) == (1 if owed else 0)


def test_only_the_recipients_notify_allows_are_in_the_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    mxs[0].once("carol@one.test", *["450 4.2.1 Mailbox busy"] * 3)
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(),
        recipients=[NewRecipient("defer-450@one.test", notify=("NEVER",)),
                    NewRecipient("carol@one.test", notify=("DELAY",))]))
    age(out)
    [dsn] = notices(out)
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; carol@one.test"]
    assert {r.state for r in out.recipients(qid).values()} == {DEFERRED}


def test_a_message_from_the_null_sender_gets_no_delay_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    qid = out.submit("defer-450@one.test", sender="")
    age(out)
    assert out.bounces == [] and notices(out) == []
    # Not even looked at: a bounce is never answered (RFC 3464 / RFC 5321 6.1).
    assert out.recipients(qid)["defer-450@one.test"].delay_notified is False


def test_delay_warning_0_sends_no_delay_notices(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound, delay_warning=0.0)
    qid = out.submit("defer-450@one.test")
    age(out, 5)
    assert out.bounces == [] and notices(out) == []
    assert out.recipients(qid)["defer-450@one.test"].delay_notified is False


def test_a_message_younger_than_delay_warning_gets_none(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound, delay_warning=4 * 3600.0)
    qid = out.submit("defer-450@one.test")
    age(out, 5)  # 7 minutes
    assert out.bounces == [] and notices(out) == []
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.delay_notified) == (DEFERRED, False)


def test_a_delivered_recipient_is_not_reported(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    # Old enough, but everything got through: nothing is owed.
    out = make(outbound)
    mxs[0].once("bob@one.test", *["450 4.2.1 Mailbox busy"] * 2)
    qid = out.submit("bob@one.test")
    age(out)
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert out.bounces == []


# --- later outcomes ------------------------------------------------------------------


def test_delivered_after_the_notice_sends_nothing_more(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    mxs[0].once("bob@one.test", *["450 4.2.1 Mailbox busy"] * 3)
    qid = out.submit("bob@one.test")
    age(out)
    assert len(out.bounces) == 1
    out.clock.advance(RETRY[-1])
    assert out.run() == 1
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert mxs[0].all_rcpts() == ["bob@one.test"]
    assert len(out.bounces) == 1 and len(notices(out)) == 1


def test_failed_after_the_notice_still_gets_its_failure_notice_once(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound, max_queue_lifetime=300.0)
    qid = out.submit("defer-450@one.test")
    age(out)  # 180 s: the delay notice
    out.clock.advance(RETRY[-1])  # 300 s: the queue lifetime is over
    assert out.run() == 1
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.last_enhanced) == (FAILED, "5.4.7")
    out.clock.advance(RETRY[-1])
    assert out.run() == 0
    delay, failure = notices(out)
    assert delay.recipients[0]["action"] == "delayed"
    assert (failure.recipients[0]["action"], failure.recipients[0]["status"]) == (
        "failed", "5.4.7")
    assert failure.message["Subject"] != delay.message["Subject"]
    assert [b.sender for b in out.bounces] == ["", ""]
    assert (out.engine.stats.delay_notices, out.engine.stats.bounces) == (1, 1)


def test_a_failure_in_the_same_round_gets_its_own_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    mxs[0].once("refuse-later@one.test", "450 4.2.1 Mailbox busy",
                "450 4.2.1 Mailbox busy", "550 5.1.1 Gone now")
    out.submit("defer-450@one.test", "refuse-later@one.test")
    age(out)
    actions = sorted(tuple(r["action"] for r in d.recipients) for d in notices(out))
    assert actions == [("delayed",), ("failed",)]


# --- one notice per message ----------------------------------------------------------


def test_recipients_at_two_destinations_share_one_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = make(outbound)
    # one.test and half.test are separate destinations (mx1.test, mx2.test), each its own
    # connection; the notice waits for both and names both. The message waited (a server
    # down) and is old at its first attempt: neither destination can see the other's
    # recipient deferred from an earlier round.
    qid = out.submit("defer-450@one.test", "defer-421@half.test", "bob@one.test")
    out.clock.advance(2 * WARNING)
    assert out.run() == 1
    assert (mxs[0].connections, mxs[1].connections) == (1, 1)
    [dsn] = notices(out)
    assert sorted(r["final-recipient"] for r in dsn.recipients) == [
        "rfc822; defer-421@half.test", "rfc822; defer-450@one.test"]
    assert [r.delay_notified for r in out.recipients(qid).values()] == [True, True, False]


def test_a_destination_that_delivers_still_lets_the_other_warn(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    # Whichever destination finishes last sends the notice, whatever its own outcome.
    out = make(outbound)
    mxs[1].once("bob@half.test", *["450 4.2.1 Mailbox busy"] * 2)
    qid = out.submit("defer-450@one.test", "bob@half.test")
    age(out)
    assert out.recipients(qid)["bob@half.test"].state == DELIVERED
    [dsn] = notices(out)
    assert [r["final-recipient"] for r in dsn.recipients] == ["rfc822; defer-450@one.test"]


# --- local delivery ------------------------------------------------------------------


def test_a_maildir_that_cannot_be_written_gets_a_delay_notice(
        outbound: Callable[..., Outbound]) -> None:
    out = make(outbound)
    # bob's mailbox is a file, not a directory: every delivery to it fails, and stays
    # deferred like a full disk would.
    box = out.config.data_dir / "maildir" / "localhost" / "bob"
    box.parent.mkdir(parents=True)
    box.write_bytes(b"")
    local = LocalDelivery(out.config, out.queue, out._enqueue)
    young = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=time.time() - 10,
        recipients=[NewRecipient("bob@localhost")]))
    old = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=time.time() - 2 * WARNING,
        recipients=[NewRecipient("bob@localhost")]))
    assert asyncio.run(local.run_once()) == 2
    for qid in (young, old):
        rcpt = out.recipients(qid)["bob@localhost"]
        assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.3.0")
    assert [r.delay_notified for q in (young, old) for r in out.recipients(q).values()] == [
        False, True]
    [dsn] = notices(out)
    [fields] = dsn.recipients
    assert fields["final-recipient"] == "rfc822; bob@localhost"
    assert (fields["action"], fields["status"]) == ("delayed", "4.3.0")
    assert fields["diagnostic-code"].startswith("X-mailgate; 451 4.3.0 ")
    assert "remote-mta" not in fields
    # Deferred again: no second notice.
    out.queue.retry(old, time.time())
    assert asyncio.run(local.run_once()) == 1
    assert out.recipients(old)["bob@localhost"].attempts == 2
    assert len(out.bounces) == 1


def test_local_delivery_without_enqueue_sends_no_notice(
        outbound: Callable[..., Outbound]) -> None:
    out = make(outbound)
    box = out.config.data_dir / "maildir" / "localhost" / "bob"
    box.parent.mkdir(parents=True)
    box.write_bytes(b"")
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=time.time() - 2 * WARNING,
        recipients=[NewRecipient("bob@localhost")]))
    asyncio.run(LocalDelivery(out.config, out.queue).run_once())
    assert out.recipients(qid)["bob@localhost"].state == DEFERRED
    assert [m.id for m in out.queue.list()] == [qid]  # no notice queued


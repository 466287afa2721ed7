"""LMTP delivery (RFC 2033): a local domain's mail handed to a mail store (Dovecot,
Cyrus) that files it itself.

A local domain with an "lmtp:" entry in [routes] (`lmtp:unix:/run/dovecot/lmtp`,
`lmtp:[127.0.0.1]:24`) is this target's: the Maildir target leaves it alone. It is the
Maildir target's subclass, so what happens after a reply is the same (outcomes recorded
in its threads, several messages' at once so that they share commits; notices; holding
a message that breaks delivery); only the writing
differs: one LMTP connection per next hop and batch, the messages one after the other
on it, through the same client session and shell as outbound SMTP
(`smtp/client.py` with `lmtp=True`: LHLO, no HELO fallback, and after the message one
reply per accepted recipient, RFC 2033 4.2). So of one message, some recipients may be
delivered, some deferred (4xx: over quota, the store busy) and some failed (5xx: no
such user), each recorded as the store answered for it; failures are bounced.

No TLS and no AUTH: an LMTP server is local and trusted (RFC 2033 6); reach it over a
Unix socket or loopback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from mailgate.codes.reply import Reply
from mailgate.config import Config, Route
from mailgate.delivery.helper import HelperClient
from mailgate.delivery.local import LocalDelivery
from mailgate.delivery.transport import ConnectError, run_client
from mailgate.queue import Enqueue, Queue, QueueError, Recipient, WorkItem, domain_of
from mailgate.smtp.address import NULL_PATH, Address, parse_path
from mailgate.smtp.client import ClientConfig, ClientSession, Envelope
from mailgate.smtp.client import Recipient as ClientRecipient

__all__ = ["LMTPDelivery", "StoreRecipients"]

log = logging.getLogger("mailgate.lmtp")

# Timeouts for a local store: shorter than across the Internet, long enough for a big
# message into a slow disk.
TIMEOUTS = {"connection": 30.0, "greeting": 60.0, "ehlo": 60.0, "mail": 60.0,
            "rcpt": 60.0, "data": 60.0, "end-of-data": 600.0, "rset": 60.0, "quit": 10.0}


class LMTPDelivery(LocalDelivery):
    """The LMTP target: claimed work for local domains routed "lmtp:"."""

    KIND = "lmtp"
    LEASE = 900.0
    BATCH = 100

    def __init__(self, config: Config, queue: Queue, enqueue: Enqueue | None = None,
                 helper: HelperClient | None = None) -> None:
        super().__init__(config, queue, enqueue, helper)
        self.log = log
        self.domains = tuple(d for d in config.domains.local
                             if config.lmtp_route(d) is not None)

    async def deliver(self, items: Sequence[WorkItem]) -> None:
        """One connection per next hop, carrying every claimed message for it."""
        hops: dict[str, tuple[Route, list[tuple[WorkItem, list[Recipient]]]]] = {}
        for item in items:
            by_hop: dict[str, list[Recipient]] = defaultdict(list)
            for rcpt in item.recipients:
                route = self.config.lmtp_route(domain_of(rcpt.address))
                assert route is not None  # claimed by domain
                hops.setdefault(route.nexthop, (route, []))
                by_hop[route.nexthop].append(rcpt)
            for hop, rcpts in by_hop.items():
                hops[hop][1].append((item, rcpts))
        for route, units in hops.values():
            if self.stopping:
                return
            try:
                await self._deliver_hop(route, units)
            except QueueError:
                raise
            except Exception as exc:
                if len(units) == 1:
                    await self.quarantine(units[0][0], exc, f"delivering it by {route.nexthop}")
                    continue
                # Not pinned on one message: each undecided one alone, holding the one
                # that fails alone.
                self.log.error("LMTP delivery by %s failed; delivering its messages one by "
                               "one", route.nexthop, exc_info=exc)
                for item, rcpts in units:
                    left = [r for r in rcpts if r.id not in self._recorded]
                    if not left:
                        continue
                    try:
                        await self._deliver_hop(route, [(item, left)])
                    except QueueError:
                        raise
                    except Exception as alone:
                        await self.quarantine(item, alone,
                                              f"delivering it by {route.nexthop}")

    async def _deliver_hop(self, route: Route,
                           units: list[tuple[WorkItem, list[Recipient]]]) -> None:
        messages: list[tuple[Envelope, bytes]] = []
        for item, rcpts in units:
            msg = item.message
            assert msg.content is not None
            env = Envelope(sender=_path(msg.sender, allow_null=True),
                           recipients=tuple(ClientRecipient(_path(r.address))
                                            for r in rcpts),
                           smtputf8=msg.smtputf8, crlf=msg.crlf)
            # No Return-Path: the store is the final delivery and adds it (RFC 5321
            # 4.4), from MAIL FROM; one here would make two.
            messages.append((env, msg.content))
        # The store names itself in its greeting, often with this host's own name: no
        # loop check (an LMTP server delivers, it never relays back).
        session = ClientSession(ClientConfig(helo_name=self.config.hostname, tls="never",
                                             lmtp=True, loop_name=None))
        where = route.nexthop
        try:
            run = await run_client(route.host, route.port, session, messages,
                                   timeouts=TIMEOUTS, unix_path=route.unix)
        except ConnectError as exc:
            log.info("connect to %s: %s", where, exc)
            reply = Reply.make(451, "4.4.1", f"No answer from {where}: {exc}")
            await self._settle_units(units, [
                self.in_thread(self._decide_all, item, rcpts, reply, where, False)
                for item, rcpts in units])
            return
        results = {res.handle: res for res in run.results}
        decisions: list[asyncio.Future[set[int]]] = []
        for handle, (item, rcpts) in enumerate(units, 1):
            res = results.get(handle)
            if res is None:  # never: the session ends every message in one result
                reply = Reply.make(451, "4.4.2", f"No reply from {where} for this message")
                decisions.append(self.in_thread(self._decide_all, item, rcpts, reply,
                                                where, False))
            else:
                outcomes = [(r, rr.outcome.reply, rr.outcome.remote)
                            for r, rr in zip(rcpts, res.results, strict=True)]
                decisions.append(self.in_thread(self._decide_each, item, outcomes, where))
        await self._settle_units(units, decisions)

    async def _settle_units(self, units: list[tuple[WorkItem, list[Recipient]]],
                            decisions: list[asyncio.Future[set[int]]]) -> None:
        """The messages' outcomes are recorded CONCURRENCY at a time (threads of the
        Maildir target's), so their records share the queue's commits; then each sends
        the notices it owes. A decision that failed is raised once the rest are done."""
        failures = await asyncio.gather(*decisions, return_exceptions=True)
        for (item, _), failed in zip(units, failures, strict=True):
            if not isinstance(failed, BaseException):
                await self.after(item, failed)
        for failed in failures:
            if isinstance(failed, BaseException):
                raise failed

    def _decide_all(self, item: WorkItem, rcpts: list[Recipient], reply: Reply, host: str,
                    remote: bool) -> set[int]:
        return self._decide_each(item, [(r, reply, remote) for r in rcpts], host)

    def _decide_each(self, item: WorkItem, outcomes: list[tuple[Recipient, Reply, bool]],
                     host: str) -> set[int]:
        failed: set[int] = set()
        for rcpt, reply, remote in outcomes:
            if self.decide(item, rcpt, reply, host, remote, host) == "failed":
                failed.add(rcpt.id)
        return failed


def _path(addr: str, allow_null: bool = False) -> Address:
    return parse_path(f"<{addr}>", utf8=True, allow_null=allow_null, allow_postmaster=True)


# How long a store's answer about a recipient is remembered, and for how many recipients:
# a client naming many recipients (or guessing names) costs one LMTP conversation per
# name a minute at most, and the table stays bounded whatever it names.
VERIFY_TTL = 60.0
VERIFY_CACHE = 10_000
VERIFY_TIMEOUT = 10.0


class StoreRecipients:
    """Asks the store a local domain is delivered to by LMTP whether it has a recipient
    (LHLO, MAIL FROM:<>, RCPT TO, RSET, QUIT: no message is sent), so that such a
    domain accepts at RCPT the users the store knows (Dovecot's userdb, say) and
    refuses the others there, instead of accepting them and bouncing later."""

    def __init__(self, hostname: str, ttl: float = VERIFY_TTL) -> None:
        self.hostname = hostname
        self.ttl = ttl
        self._known: dict[str, tuple[float, bool]] = {}

    async def has(self, route: Route, address: Address) -> bool | None:
        """True when the store takes `address` (2xx), False when it refuses it (5xx),
        None when it cannot say now (4xx, or no connection): a temporary answer."""
        key = f"{route.nexthop} {address}"
        now = time.monotonic()
        hit = self._known.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        session = ClientSession(ClientConfig(helo_name=self.hostname, tls="never", lmtp=True,
                                             loop_name=None, verify_only=True))
        envelope = Envelope(sender=NULL_PATH, recipients=(ClientRecipient(address),))
        session.send(envelope, b"")
        session.quit()
        try:
            run = await run_client(route.host, route.port, session, [],
                                   timeouts=dict.fromkeys(TIMEOUTS, VERIFY_TIMEOUT),
                                   unix_path=route.unix)
        except ConnectError as exc:
            log.warning("cannot ask %s about <%s>: %s", route.nexthop, address, exc)
            return None
        replies = [r.outcome.reply for res in run.results for r in res.results]
        if not replies or replies[0].is_transient:
            log.warning("%s cannot say now whether it has <%s>: %s", route.nexthop, address,
                        replies[0] if replies else "no reply")
            return None
        known = replies[0].is_success
        if len(self._known) >= VERIFY_CACHE:
            self._known = {k: v for k, v in self._known.items() if v[0] > now}
            if len(self._known) >= VERIFY_CACHE:
                self._known.clear()
        self._known[key] = (now + self.ttl, known)
        return known

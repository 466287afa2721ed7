"""The outbound engine: due recipients in other domains go out by SMTP.

It is the SMTP target of the delivery worker loop (`delivery/worker.py`: claim, pause on
storage errors, hold poison, release on shutdown); what is here is SMTP's own. Workers
claim due work from the queue, group it by destination (domain, or the
[routes] entry / relayhost that overrides it), resolve where it goes, and hand whole
batches of messages to one connection (RSET between them is the client session's
business). Each recipient's outcome is recorded as an attempt: 2xx delivered, 4xx or
connection trouble deferred on the retry schedule, 5xx failed — and failed recipients
owe their sender a bounce (RFC 3464), unless the message was itself a bounce. A message
still undelivered after `delivery.delay_warning` gets one delay notice for its deferred
recipients (`delivery/notices.py`).

Null MX (RFC 7505): a recipient whose domain publishes `MX 0 .` is never connected to;
it fails at once with 556 5.1.10, decided here, and the sender is told.

No message can stop delivery (the worker's rule; here is where the engine pins errors).
An unexpected error while handling one message (say a stored ENVID the client session
refuses, or a bug in building its bounce) is logged with its traceback, counted
(mailgate_delivery_worker_errors_total), and that message's recipients are held with
the error as their reason (`mailgate queue show`, the admin page); the rest keeps
moving. An error that cannot be pinned on one message at once (it broke a whole
destination, or the round) makes the engine deliver those messages one by one, holding
the one that fails alone. Each recipient's outcome is recorded as soon as its reply
arrives, through the queue's group commit, so a crash resends at most the messages in
flight.

TLS follows the destination's level (`Config.tls_level_for`, like Postfix's
smtp_tls_security_level): `none` never sends STARTTLS; `may` uses it when offered,
unverified, and when the handshake itself fails reconnects to the same host in the clear
(a broken TLS stack must not stop mail that was never promised encryption); `encrypt`
requires TLS, unverified; `verify` requires TLS with a certificate that chains to a
trusted CA and names the host connected to (the MX host name, or the [routes] /
relayhost host). A required TLS that fails defers with 4.7.x and the next MX host is
tried. The relayhost's AUTH credentials go only over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from mailgate import metrics
from mailgate.codes.reply import Reply
from mailgate.config import Config, TLSLevel
from mailgate.delivery.connections import ConnectionCache
from mailgate.delivery.notices import (
    notify_success,
    send_notice,
    wants_success,
    warn_delayed,
)
from mailgate.delivery.schedule import ByDestination
from mailgate.delivery.transport import (
    ClientRun,
    ConnectError,
    Kept,
    resume_client,
    run_client,
    tls_failure,
    verifying_context,
)
from mailgate.dns import MXHost, NullMX, PermFail, Resolver, Route, TempFail
from mailgate.queue import (
    Attempt,
    Enqueue,
    NotFound,
    Queue,
    QueueError,
    Recipient,
    WorkItem,
    domain_of,
)
from mailgate.smtp.address import Address, parse_path
from mailgate.smtp.client import (
    ClientConfig,
    ClientSession,
    Credentials,
    Envelope,
    Event,
    MessageResult,
    Outcome,
)
from mailgate.smtp.client import Recipient as ClientRecipient

__all__ = ["DeliveryEngine"]

_RET: dict[str, Literal["FULL", "HDRS"]] = {"FULL": "FULL", "HDRS": "HDRS"}
# A transient failure before any transaction began: RFC 5321 5.1, try the next MX host.
_EARLY_STAGES = frozenset({"connection", "greeting", "ehlo", "helo", "starttls", "tls"})
# What the client session does at each TLS level.
_CLIENT_TLS: dict[TLSLevel, Literal["never", "may", "require"]] = {
    "none": "never", "may": "may", "encrypt": "require", "verify": "require"}

log = logging.getLogger("mailgate.delivery")

NO_ANSWER = Reply.make(451, "4.4.1", "No answer from any mail host")
EXPIRED = Reply.make(554, "5.4.7", "Delivery time expired: gave up retrying")


@dataclass
class _Unit:
    """One message's recipients in one destination."""

    item: WorkItem
    recipients: list[Recipient]
    envelope: Envelope | None = None  # made before the first connection
    decided: bool = False  # every recipient's outcome is recorded
    sent: bool = False  # a recipient was delivered (the schedule's slow start)


@dataclass
class _Destination:
    key: str  # domain, "route:host:port:mx" or "relay:host:port:mx"; then "|tls-level"
    domain: str
    tls: TLSLevel = "may"
    credentials: Credentials | None = None  # AUTH at the relayhost
    implicit_tls: bool = False  # an "smtps:" next hop: TLS from the first byte (RFC 8314)
    units: list[_Unit] = field(default_factory=list)


@dataclass
class EngineStats:
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounces: int = 0
    delay_notices: int = 0
    success_notices: int = 0
    connections: int = 0
    messages_per_connection: list[int] = field(default_factory=list)


class Slots(Protocol):
    """Connection slots per destination (the shape of `Queue.take_slot`/`give_slot`)."""

    def take_slot(self, key: str, limit: int, lease: float) -> str | None: ...

    def give_slot(self, token: str) -> None: ...


class DeliveryEngine(ByDestination["_Destination"]):
    """The outbound target: claimed work for other domains goes out by SMTP."""

    KIND = "outbound"
    LEASE = 900.0
    BATCH = 500
    MESSAGES_PER_CONNECTION = 100

    def __init__(self, config: Config, queue: Queue, resolver: Resolver,
                 enqueue: Enqueue | None = None, *, clock: Callable[[], float] = time.time,
                 tls_context: ssl.SSLContext | None = None, slots: Slots | None = None,
                 ) -> None:
        super().__init__(config, queue, enqueue, log, clock)
        self.resolver = resolver
        # Connection slots per destination shared with whoever else delivers from this
        # queue: the queue itself (a cluster's nodes), or the board the workers of one
        # server share (siblings.py).
        self.slots: Slots = slots if slots is not None else queue
        self.tls_context = tls_context
        d = config.delivery
        self._all = asyncio.Semaphore(d.concurrency)
        self._per_dest: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(d.concurrency_per_destination))
        # Per claimed message (claim token): its units not decided yet in this round, and
        # whether one of its recipients failed, so it gets one failure notice in all.
        self._units_left: dict[str, int] = {}
        self._failures: set[str] = set()
        # Recipients delivered to a next hop without DSN whose NOTIFY asks for SUCCESS:
        # they are owed a "relayed" notice (RFC 3461 5.2.2), per claim token.
        self._relayed: dict[str, set[int]] = {}
        self._verifying: ssl.SSLContext | None = None
        self.stats = EngineStats()
        self.connections = ConnectionCache(d.connection_cache_time,
                                           d.concurrency_per_destination,
                                           self.MESSAGES_PER_CONNECTION, self._release)

    def _group(self, items: Sequence[WorkItem]) -> list[_Destination]:
        """Claimed work by destination. A message's recipients that share a destination
        share one transaction: those of one domain, or of every domain that goes to the
        same relayhost or route."""
        dests: dict[str, _Destination] = {}
        by_domain: dict[str, _Destination] = {}
        for item in items:
            by_key: dict[str, list[Recipient]] = defaultdict(list)
            for r in item.recipients:
                domain = domain_of(r.address)
                dest = by_domain.get(domain)
                if dest is None:
                    dest = by_domain[domain] = self._destination(domain)
                    dest = dests.setdefault(dest.key, dest)
                by_key[dest.key].append(r)
            for key, rcpts in by_key.items():
                dests[key].units.append(_Unit(item, rcpts))
            self._units_left[item.claim_token] = len(by_key)
        return list(dests.values())

    async def _wind_down(self) -> None:
        await self.connections.close()

    def _forget(self, token: str) -> None:
        """The claimed message's every destination is done: drop what was kept for it."""
        self._units_left.pop(token, None)
        self._failures.discard(token)
        self._relayed.pop(token, None)

    async def _deliver_destination_guarded(self, dest: _Destination) -> None:
        """`_deliver_destination`, where an unexpected error is pinned on one message:
        the destination's undecided messages go again one by one, and the one that
        fails alone is held. Storage errors (QueueError) go to `run`, which pauses."""
        try:
            await self._deliver_destination(dest)
        except QueueError:
            raise
        except Exception as exc:
            left = [u for u in dest.units
                    if not u.decided and u.item.claim_token not in self._poisoned]
            if len(left) == 1:
                await self.quarantine(left[0].item, exc, f"delivering to {dest.domain}")
                return
            if not left:  # every message has its outcome: only what came after failed
                log.error("delivery to %s failed after every outcome was recorded",
                          dest.domain, exc_info=exc)
                metrics.worker_error("outbound")
                return
            log.error("delivery to %s failed; trying its %d undecided message(s) one by "
                      "one", dest.domain, len(left), exc_info=exc)
            metrics.worker_error("outbound")
            for unit in left:
                try:
                    await self._deliver_destination(dataclasses.replace(dest, units=[unit]))
                except QueueError:
                    raise
                except Exception as alone:
                    await self.quarantine(unit.item, alone, f"delivering to {dest.domain}")

    def _destination(self, domain: str) -> _Destination:
        """Where mail for `domain` goes, and how: domains that share a next hop and a TLS
        level share connections."""
        tls = self.config.tls_level_for(domain)
        route = self.config.route_for(domain)
        relay = self.config.delivery.relayhost
        credentials = None
        implicit = False
        if route is not None:
            key = f"route:{route.nexthop}"
            implicit = route.implicit_tls
        elif relay is not None:
            key = f"relay:{relay.implicit_tls}:{relay.address}"
            implicit = relay.implicit_tls
            if relay.username is not None and relay.password is not None:
                credentials = Credentials(relay.username, relay.password)
        else:
            key = domain
        return _Destination(f"{key}|{tls}", domain, tls, credentials, implicit)

    # --- one destination --------------------------------------------------------------

    async def _resolve(self, dest: _Destination) -> tuple[Route, int]:
        d = self.config.delivery
        route = self.config.route_for(dest.domain)
        if route is not None:
            host, port, mx = route.host, route.port, route.mx_lookup
        elif d.relayhost is not None:
            host, port, mx = d.relayhost.host, d.relayhost.port, d.relayhost.mx_lookup
        else:
            return await self.resolver.resolve(dest.domain), d.smtp_port
        if mx:
            return await self.resolver.resolve(host), port
        return await self.resolver.host_route(host), port

    def _envelope(self, unit: _Unit) -> Envelope:
        """What the client session sends for `unit`: ValueError and the like when stored
        data cannot go on the wire (the caller holds that message)."""
        msg = unit.item.message
        envid = msg.envid
        if envid is not None and not _relayable_envid(envid):
            # RFC 3461 4.4: ENVID is 1 to 100 printable ASCII characters. One that is not
            # (queued by an older mailgate, say) goes no further; the message does, and
            # mailgate's own notices still quote it (xtext-encoded).
            log.warning("%s: ENVID %r is not 1 to 100 printable ASCII characters; relayed "
                        "without it", msg.id, envid)
            envid = None
        return Envelope(
            sender=_path(msg.sender, allow_null=True),
            recipients=tuple(
                ClientRecipient(_path(r.address), notify=r.notify, orcpt=_orcpt(r.orcpt))
                for r in unit.recipients),
            ret=_RET.get(msg.ret or ""), envid=envid, smtputf8=msg.smtputf8, crlf=msg.crlf,
        )

    async def _deliver_destination(self, dest: _Destination) -> None:
        # Each message's envelope first: one that cannot be sent is held on its own,
        # before it can spoil a connection it would share with others.
        units: list[_Unit] = []
        for unit in dest.units:
            if unit.decided or unit.item.claim_token in self._poisoned:
                continue
            try:
                unit.envelope = self._envelope(unit)
            except Exception as exc:
                await self.quarantine(unit.item, exc, "preparing its envelope")
                continue
            units.append(unit)
        if not units:
            return
        dest = dataclasses.replace(dest, units=units)
        route, port = await self._resolve(dest)
        if isinstance(route, NullMX):
            # RFC 7505 3: the domain accepts no mail; never connect, fail at once.
            await self._decide_all(dest, route.undelivered(), host="")
            return
        if isinstance(route, TempFail | PermFail):
            reply = route.reply()
            assert reply is not None
            await self._decide_all(dest, Reply.make(reply.code, reply.enhanced,
                                                    f"{reply.text} ({route.reason})"), host="")
            return
        hosts: tuple[MXHost, ...] = route.hosts
        sem = self._per_dest[dest.key]
        batches = [dest.units[i : i + self.MESSAGES_PER_CONNECTION]
                   for i in range(0, len(dest.units), self.MESSAGES_PER_CONNECTION)]

        async def one(batch: list[_Unit]) -> None:
            async with sem, self._all:
                await self._deliver_batch(dest, hosts, port, batch)

        await asyncio.gather(*(one(b) for b in batches))

    async def _cluster_slot(self, key: str) -> str:
        """A connection slot for the destination from the queue: with several nodes on
        one queue, `concurrency_per_destination` is the cluster's in all, so a node may
        wait here for another node's connection to end (QueueError: the queue cannot
        say; `run` pauses)."""
        delay = 0.05
        while True:
            token = await asyncio.to_thread(self.slots.take_slot, key,
                                            self.config.delivery.concurrency_per_destination,
                                            self.LEASE)
            if token is not None:
                return token
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _give_slot(self, token: str | None) -> None:
        if token is not None:
            with contextlib.suppress(QueueError):  # else its lease frees it
                await asyncio.to_thread(self.slots.give_slot, token)

    async def _release(self, conn: Kept) -> None:
        """A kept connection was closed: the cluster slot it held goes back."""
        await self._give_slot(conn.slot)

    async def _deliver_batch(self, dest: _Destination, hosts: tuple[MXHost, ...], port: int,
                             units: list[_Unit]) -> None:
        """Try each MX host (each address) in order until one takes the conversation."""
        last: Reply = NO_ANSWER
        last_remote = False  # whether a server really sent `last` (a 421 greeting did)
        last_host = ""
        pending = units
        for mx in hosts:
            for address in mx.addresses:
                if not pending:
                    return
                where = f"{mx.name}[{address}]:{port}"
                done: list[_Unit] = []  # recorded on this host, owed their notices
                try:
                    run = await self._converse(dest, mx.name, address, port, pending,
                                               where, done)
                    failure = _session_failure(run)
                    if (dest.tls == "may" and not dest.implicit_tls and failure is not None
                            and failure.stage == "tls"):
                        # Opportunistic TLS whose handshake failed: the same host again,
                        # in the clear (Postfix does the same for `may`).
                        log.info("TLS handshake with %s failed (%s); retrying without TLS",
                                 where, failure.reply.text)
                        run = await self._converse(
                            dest, mx.name, address, port,
                            [u for u in pending if not u.decided], where, done, tls="none")
                except ConnectError as exc:
                    log.info("connect to %s: %s", where, exc)
                    last = (Reply.make(451, "4.7.5", f"TLS handshake with {where} failed: "
                                       f"{tls_failure(exc.__cause__ or exc)}")
                            if exc.tls else
                            Reply.make(451, "4.4.1", f"No answer from {where}: {exc}"))
                    last_remote = False
                    last_host = where
                    pending = [u for u in pending if not u.decided]
                    await self._notify(done)
                    continue
                pending = [u for u in pending if not u.decided]
                await self._notify(done)
                if pending:
                    # Not a single recipient got past the greeting/EHLO (4xx there, or the
                    # connection died early): RFC 5321 5.1 says try the next host.
                    failure = _session_failure(run)
                    last = failure.reply if failure else NO_ANSWER
                    last_remote = failure.remote if failure else False
                    last_host = where
        if pending:
            await self._decide_units(pending, last, host=last_host, remote=last_remote)

    async def _converse(self, dest: _Destination, name: str, address: str, port: int,
                        units: list[_Unit], where: str, done: list[_Unit],
                        tls: TLSLevel | None = None) -> ClientRun:
        """One conversation carrying `units`. Each message's outcome is recorded as soon
        as its last reply arrives (the queue's group commit takes it within
        milliseconds), not after the connection: a crash then resends at most the
        messages in flight. Units recorded are added to `done`; those that got only an
        early failure (greeting, EHLO, TLS: RFC 5321 5.1) are left for the next host."""
        level = tls or dest.tls
        messages = []
        for unit in units:
            msg = unit.item.message
            assert msg.content is not None
            env = unit.envelope if unit.envelope is not None else self._envelope(unit)
            messages.append((env, msg.content))
        run = ClientRun()
        writes: list[asyncio.Future[None]] = []

        def on_event(ev: Event) -> None:
            # The messages are handed over in order: handles from run.first_handle on.
            i = ev.handle - run.first_handle if isinstance(ev, MessageResult) else -1
            if 0 <= i < len(units):
                assert isinstance(ev, MessageResult)
                if not all(rr.outcome.stage in _EARLY_STAGES and rr.outcome.is_transient
                           for rr in ev.results):
                    writes.append(asyncio.ensure_future(
                        self._record_result(units[i], ev, where, run, done)))

        # The connection is kept, idle, for the next mail to the same host (connections.py),
        # with its cluster slot (`_cluster_slot`): idle, it is still a connection.
        key = (dest.key, name, address, port, level)
        slot: str | None = None

        def keep(conn: Kept) -> bool:
            conn.slot = slot
            return self.connections.keep(key, conn)

        try:
            kept = self.connections.take(key)
            if kept is not None:
                slot = kept.slot
                if await resume_client(kept, messages, on_event=on_event, run=run,
                                       keep=keep) is None:
                    await self._give_slot(slot)  # it had been closed meanwhile
                    kept = slot = None
            if kept is None:
                slot = await self._cluster_slot(dest.key)
                self.stats.connections += 1
                # Over implicit TLS there is no STARTTLS to ask for; `verify` still checks
                # the certificate, any other level takes it unverified.
                session = ClientSession(ClientConfig(
                    helo_name=self.config.hostname, loop_name=self.config.hostname,
                    tls="never" if dest.implicit_tls else _CLIENT_TLS[level],
                    credentials=dest.credentials), tls_active=dest.implicit_tls)
                context = self._verifying_context() if level == "verify" else self.tls_context
                await run_client(address, port, session, messages, tls_context=context,
                                 server_hostname=name, implicit_tls=dest.implicit_tls,
                                 on_event=on_event, run=run, keep=keep)
        finally:
            if not run.kept:
                await self._give_slot(slot)
            if writes:
                outcomes = await asyncio.gather(*writes, return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
        self.stats.messages_per_connection.append(len(run.results))
        if not run.reused:
            metrics.outbound_connection(level, run.tls is not None)
        return run

    def _verifying_context(self) -> ssl.SSLContext:
        """For `verify`: the peer's chain must lead to a trusted CA (`tls_ca_file`, or the
        system's store) and its certificate must name the host; made once, shared."""
        if self._verifying is None:
            self._verifying = verifying_context(self.config.delivery.tls_ca_file)
        return self._verifying

    async def _record_result(self, unit: _Unit, res: MessageResult, where: str,
                             run: ClientRun, done: list[_Unit]) -> None:
        """Record the outcome of one message of a conversation, its replies just in."""
        # A next hop that offers DSN was handed NOTIFY and reports successes itself.
        next_hop_dsn = run.established is not None and run.established.capabilities.dsn
        writes = []
        for rcpt, rr in zip(unit.recipients, res.results, strict=True):
            reply, remote = rr.outcome.reply, rr.outcome.remote
            if rr.outcome.stage == "auth" and reply.is_permanent:
                reply, remote = _auth_soft_bounce(reply), False
            writes.append(self._decide(unit, rcpt, reply, where, remote, run.tls))
            if reply.is_success and not next_hop_dsn and wants_success(rcpt.notify):
                self._relayed.setdefault(unit.item.claim_token, set()).add(rcpt.id)
        if len(writes) == 1:
            await writes[0]  # most mail: no task of its own, as gather would make
        else:
            await asyncio.gather(*writes)
        unit.decided = True
        done.append(unit)

    # --- outcomes ---------------------------------------------------------------------

    async def _decide_all(self, dest: _Destination, reply: Reply, host: str) -> None:
        await self._decide_units(dest.units, reply, host=host, remote=False)

    async def _decide_units(self, units: list[_Unit], reply: Reply, host: str,
                            remote: bool) -> None:
        await asyncio.gather(*(self._decide(u, r, reply, host, remote, None)
                               for u in units for r in u.recipients))
        for unit in units:
            unit.decided = True
        await self._notify(units)

    async def _notify(self, units: list[_Unit]) -> None:
        """What the senders of `units` are owed now that the round decided them: a
        failure notice once every destination of the message has its outcome, a delay
        notice once a message has waited long enough.

        Both wait for the last of a message's destinations, so a message whose
        recipients failed at two of them gets one failure notice naming both; the delay
        check runs whatever these units' outcomes, as that last one may have delivered
        everything it carried."""
        failed: list[WorkItem] = []
        relayed: list[tuple[WorkItem, set[int]]] = []
        for unit in units:
            token = unit.item.claim_token
            left = self._units_left.get(token, 1) - 1
            if left > 0:
                self._units_left[token] = left
                continue
            self._units_left.pop(token, None)
            if token in self._failures:
                self._failures.discard(token)
                failed.append(unit.item)
            if token in self._relayed:
                relayed.append((unit.item, self._relayed.pop(token)))
        for item in failed:
            await self.notice_guarded(item, "writing its failure notice",
                                       self._bounce_item(item))
        for item, ids in relayed:
            if self.enqueue is not None and await self.notice_guarded(
                    item, "writing its success notice", notify_success(
                        self.queue, self.enqueue, self.config, item, "relayed", ids,
                        self.clock())) is not None:
                self.stats.success_notices += 1
        await self._warn_units(units)

    async def _warn_units(self, units: list[_Unit]) -> None:
        """One delay notice per message whose deferred recipients are owed one."""
        if self.enqueue is None or self.config.delivery.delay_warning <= 0:
            return
        items = {u.item.claim_token: u.item for u in units}  # a message once
        for item in items.values():
            qid = await self.notice_guarded(
                item, "writing its delay notice",
                warn_delayed(self.queue, self.enqueue, self.config, item, self.clock()))
            if qid is not None:
                self.stats.delay_notices += 1

    async def _decide(self, unit: _Unit, rcpt: Recipient, reply: Reply, host: str,
                      remote: bool, tls: str | None) -> str:
        """Record one recipient's attempt; return the outcome (delivered/deferred/failed)."""
        now = self.clock()
        msg = unit.item.message
        next_attempt = None
        if reply.is_success:
            outcome = "delivered"
            unit.sent = True
            self.stats.delivered += 1
        elif reply.is_permanent:
            outcome = "failed"
            self.stats.failed += 1
            self._failures.add(unit.item.claim_token)
        elif now - msg.received_at >= self.config.delivery.max_queue_lifetime:
            outcome = "failed"  # RFC 5321 4.5.4.1: give up after the queue lifetime
            self._failures.add(unit.item.claim_token)
            reply = Reply.make(EXPIRED.code, EXPIRED.enhanced,
                               f"{EXPIRED.text}; last: {reply}")
            self.stats.failed += 1
        else:
            outcome = "deferred"
            next_attempt = now + self.config.delivery.retry_delay(rcpt.attempts + 1)
            self.stats.deferred += 1
        log.info("%s: to=<%s>, relay=%s, delay=%.1f, status=%s (%s)", msg.id, rcpt.address,
                 host or "none", now - msg.received_at,
                 {"delivered": "sent"}.get(outcome, outcome), reply)
        metrics.delivery(outcome, reply.code, now - msg.received_at)
        attempt = Attempt(at=now, host=host, code=reply.code, enhanced=reply.enhanced,
                          text=reply.text.replace("\n", " "), outcome=outcome, remote=remote,
                          tls=tls)
        try:
            await self.queue.record_async(rcpt.id, attempt, next_attempt,
                                          unit.item.claim_token)
        except NotFound:
            log.info("%s: deleted from the queue meanwhile", msg.id)
        self.decided(rcpt.id)
        return outcome

    async def _bounce_item(self, item: WorkItem) -> str | None:
        """One DSN for the message's recipients that failed in this round (the claimed
        ones now failed: a claim holds only recipients still to be tried)."""
        if self.enqueue is None:
            return None
        from mailgate.delivery.bounce import recipient_from_attempt

        msg = item.message
        if not msg.sender:
            log.info("%s: a bounce (from <>) failed: dropped, never bounced", msg.id)
            return None
        try:
            # The content from the claim: once every recipient is final the queue has
            # already deleted its own copy (retention).
            shown = replace(await asyncio.to_thread(self.queue.show, msg.id),
                            content=msg.content)
        except NotFound:
            return None  # deleted meanwhile
        failed_ids = {r.id for r in item.recipients}
        failed = [r for r in shown.recipients
                  if r.id in failed_ids and str(r.state) == "failed"]
        if not failed:
            return None
        attempts = dict(shown.attempts)
        dsn_rcpts = [recipient_from_attempt(r, attempts.get(r.id)) for r in failed]
        qid = await send_notice(self.enqueue, shown, dsn_rcpts, kind="failure",
                                reporting_mta=self.config.hostname, now=self.clock())
        if qid is None:
            return None
        self.stats.bounces += 1
        log.info("%s: sender non-delivery notification: %s", msg.id, qid)
        return qid


def _relayable_envid(envid: str) -> bool:
    """RFC 3461 4.4: an ENVID is 1 to 100 printable US-ASCII characters."""
    return 0 < len(envid) <= 100 and all(" " <= c <= "~" for c in envid)


def _auth_soft_bounce(reply: Reply) -> Reply:
    """A relayhost refusing mailgate's credentials (535 5.7.8) says nothing about the
    message: defer, so the mail waits while someone fixes the password, as Postfix's
    smtp_sasl_auth_soft_bounce does. The server's reply stays in the text."""
    enhanced = "4" + reply.enhanced[1:] if reply.enhanced else "4.7.0"
    return Reply.make(451, enhanced, f"Authentication at the relayhost failed, so the "
                      f"message stays queued; the relayhost said: {reply}")


def _session_failure(run: ClientRun) -> Outcome | None:
    if run.closed is not None and run.closed.reason is not None:
        return run.closed.reason
    return None


def _path(addr: str, allow_null: bool = False) -> Address:
    return parse_path(f"<{addr}>", utf8=True, allow_null=allow_null, allow_postmaster=True)


def _orcpt(value: str | None) -> tuple[str, str] | None:
    """The queue keeps ORCPT as `type;address`; the client wants the pair."""
    if not value or ";" not in value:
        return None
    kind, _, addr = value.partition(";")
    return kind, addr

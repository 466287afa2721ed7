"""The policy: every reply the protocol leaves to the server is decided here, and only here.

The session (mailgate.smtp.server) decides syntax, sequence and limits; this module
decides who may send what to whom: local domains, relaying, AUTH, null MX (RFC 7505 /
RFC 7504). Each method returns a Reply to refuse, or None to take the protocol's default
acceptance. Decisions that need DNS are coroutines; the rest are plain functions so the
hot path never creates a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailgate import hashing
from mailgate.codes.reply import Reply
from mailgate.config import Config, Route
from mailgate.config.aliases import AliasError, expand
from mailgate.config.dkimkey import DKIMKey, keys_for
from mailgate.dns import Resolver, null_mx_reply
from mailgate.dovecot_auth import DovecotAuth
from mailgate.idn import DomainError, canonical_domain
from mailgate.smtp.address import Address
from mailgate.smtp.server import AuthAttempt, MailFrom, RcptTo
from mailgate.users import UserDB

if TYPE_CHECKING:
    from mailgate.queue.spool import SpoolFile
    from mailgate.server.authcheck.spfcheck import SPFResult
    from mailgate.server.authcheck.verify import Verdict, Verifier

__all__ = ["AuthReservation", "ConnectionInfo", "Policy"]


def _canonical(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except DomainError:
        return domain.lower()

R = Reply.make

RELAY_DENIED = R(554, "5.7.1", "Relay access denied")
AUTH_REQUIRED = R(530, "5.7.0", "Authentication required")
SENDER_NULL_MX = R(550, "5.7.27", "Sender address has null MX: its domain accepts no mail, "
                                  "so no reply or bounce could reach it (RFC 7505)")
SENDER_DNS_TEMPFAIL = R(451, "4.4.3", "Cannot check the sender domain in DNS now; try again later")
RECIPIENT_NULL_MX = null_mx_reply("its domain accepts no mail (RFC 7505)")
UNKNOWN_USER = R(550, "5.1.1", "No such user here")
STORE_UNSURE = R(451, "4.3.0", "Cannot check this recipient with the mail store now; "
                               "try again later")

# Asks the mail store a local domain is delivered to by LMTP whether it has a recipient:
# True yes, False no, None cannot say now (delivery.lmtp.StoreRecipients.has; wired in
# by serve, since the server does not import delivery).
StoreCheck = Callable[[Route, Address], Awaitable[bool | None]]
SENDER_NOT_OWNED = R(553, "5.7.1", "Sender address is not yours: you are logged in as a user "
                                   "who may not send as this address")
AUTH_TOO_MANY = R(421, "4.7.0", "Too many failed authentication attempts, closing connection")


class SharedCounts(Protocol):
    """Other processes' AUTH failures by ("ip", address) / ("user", name): a dict from
    `Queue.share_counts` (a cluster), a `siblings.SharedCounts` (the workers of one
    server)."""

    def get(self, key: tuple[str, str], default: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class AuthReservation:
    """A failure slot taken for one AUTH attempt (`Policy.auth_reserve`)."""

    ip: str
    user: str
    at: float


@dataclass(slots=True)
class ConnectionInfo:
    """What policy knows about one client connection."""

    role: str  # mx | submission | smtps
    ip: str
    port: int
    tls: bool = False
    helo: str = ""
    esmtp: bool = False
    authenticated: str | None = None
    auth_failures: int = 0
    tls_version: str = ""
    tls_cipher: str = ""
    spf: SPFResult | None = None  # this transaction's, when checked at MAIL FROM

    @property
    def protocol(self) -> str:
        """The `with` keyword of the Received header (RFC 3848): SMTP, ESMTP[S][A]."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.authenticated else "")


class Policy:
    """Decisions for one server (shared by every connection)."""

    # failed AUTH attempts: per connection before 421, per IP within the window
    AUTH_FAILS_PER_CONNECTION = 3
    AUTH_FAILS_PER_IP = 10
    # per user name, from anywhere: slows a password spray spread over many addresses
    # (and so lets a stranger delay one user's logins for the window: documented)
    AUTH_FAILS_PER_USER = 30
    AUTH_FAIL_WINDOW = 600.0
    AUTH_TABLE_SWEEP = 10_000  # keys in a failure table before expired ones are swept

    def __init__(self, config: Config, resolver: Resolver | None, users: UserDB) -> None:
        self.config = config
        self.resolver = resolver
        self.users = users
        # [auth] backend = "dovecot": Dovecot's auth service checks passwords instead
        # of users.json (dovecot_auth.py).
        auth = config.auth
        self.dovecot = (DovecotAuth(auth.dovecot_socket, auth.timeout)
                        if auth.backend == "dovecot" else None)
        self._auth_fails: dict[str, deque[float]] = defaultdict(deque)
        self._user_fails: dict[str, deque[float]] = defaultdict(deque)
        self._swept_at = float("-inf")
        # [auth_checks]: SPF, DKIM, DMARC, ARC for strangers' mail (server/authcheck)
        self.verifier: Verifier | None = None
        if config.auth_checks.any and resolver is not None:
            from mailgate.server.authcheck.verify import Verifier

            self.verifier = Verifier(config.auth_checks, config.hostname, resolver)
        self.store_check: StoreCheck | None = None
        # A cluster's other nodes' failures (("ip", address) / ("user", name) -> count in
        # the window), refreshed every second by serve (`share_counts`), and this node's
        # own not yet shared.
        self.others: SharedCounts = {}
        self._unshared: dict[tuple[str, str], int] = defaultdict(int)

    def close(self) -> None:
        """Release what the policy holds: the checks' worker threads (`Verifier.close`).
        `serve` calls it once, at shutdown, when no session is left to ask them."""
        if self.verifier is not None:
            self.verifier.close()

    # --- helpers ------------------------------------------------------------------

    def is_local(self, domain: str) -> bool:
        return self.config.domains.is_local(domain)

    def may_relay(self, conn: ConnectionInfo) -> bool:
        return conn.authenticated is not None or self.config.relay.allows(conn.ip)

    def trusted(self, conn: ConnectionInfo) -> bool:
        """A client we answer for: authenticated, or in [relay] networks. Only such
        clients' NOTIFY=SUCCESS is honoured (a stranger's would make us mail a copy of
        the headers to any address they name: backscatter)."""
        return self.may_relay(conn)

    def final_recipient(self, rcpt: Address) -> Address:
        """The one recipient an address becomes when it is no alias: `<postmaster>` and
        postmaster@<a local domain> become the configured postmaster mailbox (RFC 5321
        4.5.1), so they are always delivered here and never relayed; anything else is
        kept as it is. See `final_recipients` for aliases and plus-addresses."""
        if rcpt.is_postmaster or (rcpt.local.lower() == "postmaster" and not rcpt.is_literal
                                  and self.is_local(rcpt.domain)):
            local, _, domain = self.config.domains.postmaster_mailbox.rpartition("@")
            return Address(local, domain)
        return rcpt

    def final_recipients(self, rcpt: Address) -> list[Address] | None:
        """What an accepted recipient is queued as (aliases are expanded once, here, when
        the message is accepted): remote addresses as they are; for a local address, its
        aliases' targets (recursively) or its own mailbox (`bob+tag` becomes `bob` when
        only bob is known). None when a local address is nobody's: no alias, no mailbox
        and no catch-all (550 5.1.1 at RCPT)."""
        if rcpt.is_postmaster:
            rcpt = self.final_recipient(rcpt)
        if rcpt.is_literal or not self.is_local(rcpt.domain):
            return [rcpt]
        domains = self.config.domains
        try:
            expanded = expand(self.config.aliases, rcpt.local, rcpt.domain,
                              is_local=self.is_local, delimiter=domains.recipient_delimiter)
        except AliasError:  # the configuration was checked; a plus-address can still
            return None     # reach a loop the check did not walk
        if expanded is None:
            mailbox = self._mailbox(rcpt.local, rcpt.domain)
            return None if mailbox is None else [self.final_recipient(mailbox)]
        out: list[Address] = []
        for local, domain in expanded:
            if not self.is_local(domain):
                out.append(Address(local, domain))
            else:  # an administrator named it: its own mailbox even if none exists yet
                out.append(self.final_recipient(self._mailbox(local, domain)
                                                or Address(local, domain)))
        return list(dict.fromkeys(out))

    def _mailbox(self, local: str, domain: str) -> Address | None:
        """The local mailbox local@domain is delivered to: itself when known (listed in
        [domains] mailboxes, a user in the users file, postmaster, or any name at a
        catch-all domain), else its base when it is a plus-address and the base is known
        (at a catch-all domain, always its base); None for nobody."""
        domains = self.config.domains
        delimiter = domains.recipient_delimiter
        names = [local]
        if delimiter and delimiter in local[1:]:
            base = local[: local.index(delimiter, 1)]
            names = [base] if domains.catches_all(domain) else [local, base]
        for name in names:
            if (domains.catches_all(domain) or domains.has_mailbox(name, domain)
                    or name in self.users or f"{name}@{domain}" in self.users):
                return Address(name, domain)
        return None

    def owns_sender(self, user: str, sender: Address) -> bool:
        """Whether the authenticated `user` may use `sender` as the envelope sender.

        `alice` owns alice@ at every local domain; `alice@example.org` owns that
        address; [submission] sender_addresses grants more (`@domain` = all of it)."""
        if sender.is_null:
            return True  # <> sends nothing back; auto-replies and notices need it
        user = user.lower()
        address = f"{sender.local.lower()}@{sender.domain}"
        if "@" in user:
            local, _, domain = user.rpartition("@")
            if address == f"{local}@{_canonical(domain)}":
                return True
        elif sender.local.lower() == user and self.is_local(sender.domain):
            return True
        for grant in self.config.submission.sender_addresses.get(user, ()):
            if grant == address or (grant.startswith("@") and grant[1:] == sender.domain):
                return True
        return False

    def checks_inbound(self, conn: ConnectionInfo) -> bool:
        """Whether [auth_checks] apply: to a client neither authenticated nor in [relay]
        networks (loopback too, when the networks leave it out)."""
        return self.verifier is not None and not self.may_relay(conn)

    def _checks_null_mx(self, conn: ConnectionInfo, sender: Address) -> bool:
        return (conn.role == "mx" and self.config.policy.sender_null_mx_check
                and self.resolver is not None and not sender.is_null
                and not sender.is_literal and not self.is_local(sender.domain))

    def _checks_spf(self, conn: ConnectionInfo, sender: Address) -> bool:
        return (self.config.auth_checks.spf and not sender.is_literal
                and self.checks_inbound(conn))

    def auth_offered(self, role: str) -> bool:
        """AUTH is for submission; an MX does not take credentials."""
        return role in ("submission", "smtps")

    # --- decisions ----------------------------------------------------------------

    def mail_from_sync(self, conn: ConnectionInfo, ev: MailFrom) -> Reply | bool | None:
        """A reply or None when decided at once; True when `mail_from` (DNS) must decide."""
        conn.spf = None
        if conn.role in ("submission", "smtps") and not self.may_relay(conn):
            return AUTH_REQUIRED
        sender = ev.sender
        if (conn.authenticated is not None and self.config.submission.sender_login_check
                and not self.owns_sender(conn.authenticated, sender)):
            return SENDER_NOT_OWNED
        if self._checks_null_mx(conn, sender) or self._checks_spf(conn, sender):
            return True
        return None

    async def mail_from(self, conn: ConnectionInfo, ev: MailFrom) -> Reply | None:
        """The sender null-MX check (RFC 7505 4.2): 550 5.7.27, or 451 4.4.3 on DNS
        trouble; and SPF (RFC 7208), which refuses only with [auth_checks] spf_reject."""
        sender = ev.sender
        spf = None
        if self._checks_spf(conn, sender):
            assert self.verifier is not None
            who = "" if sender.is_null else f"{sender.local}@{sender.ascii_domain}"
            spf = asyncio.ensure_future(self.verifier.spf(conn.ip, who, conn.helo))
        try:
            if self._checks_null_mx(conn, sender):
                assert self.resolver is not None
                null = await self.resolver.is_null_mx(sender.ascii_domain)
                if null is None:
                    return SENDER_DNS_TEMPFAIL
                if null:
                    return SENDER_NULL_MX
            if spf is None:
                return None
            conn.spf = await spf
        finally:
            if spf is not None and not spf.done():
                spf.cancel()
        assert self.verifier is not None
        return self.verifier.spf_reply(conn.spf, conn.ip)

    async def verify_message(self, conn: ConnectionInfo, spool: SpoolFile,
                             rcpts: Sequence[RcptTo]) -> Verdict | None:
        """DKIM, ARC and DMARC at the end of DATA (None when they do not apply), and the
        ARC seal when the message is forwarded."""
        if not self.checks_inbound(conn):
            return None
        assert self.verifier is not None
        return await self.verifier.message(spool, conn.spf, self.arc_sealer(rcpts))

    def arc_sealer(self, rcpts: Sequence[RcptTo]) -> DKIMKey | None:
        """The key to ARC-seal a stranger's message with when it goes on to another
        server (RFC 8617: an alias with a remote target): the first RSA [dkim] key of
        the local domain it was addressed to (ORCPT), else of the host name's domain.
        None when nothing goes out, ARC is not checked (the seal records the chain's
        status), or there is no such key."""
        if not self.config.auth_checks.arc or all(
                not r.recipient.is_literal and self.is_local(r.recipient.domain)
                for r in rcpts):
            return None
        domains = [r.params.orcpt[1].rpartition("@")[2] for r in rcpts if r.params.orcpt]
        for domain in [*(d for d in domains if self.is_local(d)), self.config.hostname]:
            for key in keys_for(self.config.dkim, domain):
                if key.algorithm == "rsa-sha256":  # the only algorithm ARC defines
                    return key
        return None

    def rcpt_to_sync(self, conn: ConnectionInfo, ev: RcptTo) -> Reply | bool | None:
        rcpt = ev.recipient
        if rcpt.is_postmaster:
            return None  # RFC 5321 4.5.1: postmaster is always accepted
        if not rcpt.is_literal and self.is_local(rcpt.domain):
            if self.final_recipients(rcpt):
                return None
            if self.store_check is not None and self.config.lmtp_route(rcpt.domain):
                return True  # the mail store knows its users: rcpt_to asks it
            return UNKNOWN_USER
        if not self.may_relay(conn):
            return RELAY_DENIED
        if (self.config.policy.recipient_null_mx_check and self.resolver is not None
                and not rcpt.is_literal):
            return True
        return None

    async def rcpt_to(self, conn: ConnectionInfo, ev: RcptTo) -> Reply | None:
        """RFC 7504 / 7505: a relay refuses a null-MX recipient at once with 556 5.1.10.
        A DNS failure is no refusal: the recipient is accepted and delivery decides.

        A name mailgate does not know at a local domain delivered by LMTP is asked of the
        mail store: accepted if it has it, 550 5.1.1 if not, 451 4.3.0 when it cannot say.
        """
        rcpt = ev.recipient
        if not rcpt.is_literal and self.is_local(rcpt.domain):
            route = self.config.lmtp_route(rcpt.domain)
            assert route is not None and self.store_check is not None
            known = await self.store_check(route, rcpt)
            return STORE_UNSURE if known is None else None if known else UNKNOWN_USER
        assert self.resolver is not None
        null = await self.resolver.is_null_mx(ev.recipient.ascii_domain)
        return RECIPIENT_NULL_MX if null else None

    def auth_blocked(self, conn: ConnectionInfo, now: float | None = None) -> bool:
        """Too many recent failures from this IP: refuse before checking the password."""
        now = time.monotonic() if now is None else now
        return (self._count(self._auth_fails, conn.ip, now) + self.others.get(("ip", conn.ip), 0)
                >= self.AUTH_FAILS_PER_IP)

    def take_unshared(self) -> dict[tuple[str, str], int]:
        """This node's failure counts since the last call (releases subtract), for
        `Queue.share_counts`; a failure that could not be shared is given back with
        `unshare`."""
        out, self._unshared = dict(self._unshared), defaultdict(int)
        return {k: n for k, n in out.items() if n}

    def unshare(self, counts: dict[tuple[str, str], int]) -> None:
        for key, n in counts.items():
            self._unshared[key] += n

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        fails = table.get(key)
        if fails is None:
            return 0
        while fails and fails[0] < now - self.AUTH_FAIL_WINDOW:
            fails.popleft()
        if not fails:
            del table[key]
            return 0
        return len(fails)

    def auth_reserve(self, conn: ConnectionInfo, username: str,
                     now: float | None = None) -> AuthReservation | None:
        """Take a failure slot for this attempt before the password is checked, or None
        when the client's address or the user name is over its limit.

        The slot counts as a failure at once; `auth_release` gives it back on success.
        Checking and counting in one step, with nothing awaited between them, is what
        keeps 40 parallel attempts from all being checked under a limit of 10."""
        now = time.monotonic() if now is None else now
        user = username.lower()
        others = self.others
        if (self._count(self._auth_fails, conn.ip, now) + others.get(("ip", conn.ip), 0)
                >= self.AUTH_FAILS_PER_IP
                or self._count(self._user_fails, user, now) + others.get(("user", user), 0)
                >= self.AUTH_FAILS_PER_USER):
            return None
        big = max(len(self._auth_fails), len(self._user_fails)) >= self.AUTH_TABLE_SWEEP
        if big and now >= self._swept_at + self.AUTH_FAIL_WINDOW / 10:
            self._swept_at = now  # at most one sweep (a walk of the tables) per minute
            for table in (self._auth_fails, self._user_fails):
                self._sweep(table, now)
        self._auth_fails[conn.ip].append(now)
        self._user_fails[user].append(now)
        self._unshared["ip", conn.ip] += 1
        self._unshared["user", user] += 1
        return AuthReservation(conn.ip, user, now)

    def _sweep(self, table: dict[str, deque[float]], now: float) -> None:
        """Drop every key whose failures have all expired. A stranger names any user it
        likes, so without this each name tried would stay in memory for good; with it the
        tables hold at most what the attempt rate allows within one window."""
        for key in [k for k, fails in table.items() if not fails or
                    fails[-1] < now - self.AUTH_FAIL_WINDOW]:
            del table[key]

    def auth_release(self, reservation: AuthReservation) -> None:
        """The password was right (or was never checked): the slot was no failure."""
        self._unshared["ip", reservation.ip] -= 1
        self._unshared["user", reservation.user] -= 1
        for table, key in ((self._auth_fails, reservation.ip),
                           (self._user_fails, reservation.user)):
            fails = table.get(key)
            if fails is not None:
                with contextlib.suppress(ValueError):
                    fails.remove(reservation.at)
                if not fails:
                    del table[key]

    def auth_failed(self, conn: ConnectionInfo, now: float | None = None) -> Reply | None:
        """The reserved slot stays a failure; a reply that closes the connection when
        the connection or the address is over its limit."""
        conn.auth_failures += 1
        if conn.auth_failures >= self.AUTH_FAILS_PER_CONNECTION or self.auth_blocked(conn, now):
            return AUTH_TOO_MANY
        return None

    async def authenticate(self, conn: ConnectionInfo, ev: AuthAttempt) -> bool | None:
        """Whether the credentials are right; None when the backend cannot say now
        (Dovecot unreachable): a temporary failure, not the client's."""
        if self.dovecot is None:
            # The password pool, never the default executor that delivery uses: a burst
            # of AUTH attempts must not stall anything else (hashing.py).
            return await hashing.check(self.check_password, ev)
        if ev.authzid and ev.authzid.lower() != ev.username.lower():
            return False  # no proxy authorization
        return await self.dovecot.verify(ev.username, ev.password, remote_ip=conn.ip,
                                         secured=conn.tls)

    def check_password(self, ev: AuthAttempt) -> bool:
        """Blocking (scrypt): run it in a thread."""
        if ev.authzid and ev.authzid.lower() != ev.username.lower():
            return False  # no proxy authorization
        return self.users.verify(ev.username, ev.password)

"""The inbound checks of one server: SPF at MAIL FROM, the rest at the end of DATA.

`Verifier` runs the checks (pyspf, dkimpy, `dkimverify.py`) in a small pool of worker
threads, so neither their DNS waits nor their public-key work blocks the event loop;
their DNS goes through the message's `DNSBridge` to mailgate's resolver. Only when every
answer is already cached, and the message is small (`INLINE_BYTES`), do they run on the
event loop itself: no wait, about a millisecond of CPU at most, and no thread hand-off
(which costs more).

It decides from the results:

- SPF `fail` at MAIL FROM with `[auth_checks] spf_reject`: `550 5.7.23` (RFC 7372); an
  SPF `temperror` then: `451 4.7.24`. Without spf_reject SPF refuses nothing.
- DMARC `fail` whose policy (after pct) is `reject`, with `dmarc_reject`: `550 5.7.1`
  at the end of DATA, saying what the From domain's owner must publish. When the
  failure may be DNS's fault (an SPF or DKIM `temperror`), or the DMARC record itself
  could not be looked up, `451 4.7.0` instead: a temporary error never bounces mail.
- `quarantine`: accepted, marked in Authentication-Results (`dis=quarantine`) and by an
  `X-Mailgate-Quarantine:` field a mailbox filter can sort on.

What it found is the `Authentication-Results:` field it returns (`results.py`). When
the message is forwarded (an alias with a remote target), an ARC set (RFC 8617) goes
above it, sealed with a `[dkim]` RSA key of ours: the next hop can then trust what was
verified here even after forwarding broke SPF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mailgate import metrics
from mailgate.codes.reply import Reply
from mailgate.config import AuthChecks
from mailgate.config.dkimkey import DKIMKey
from mailgate.dns import Resolver
from mailgate.queue.spool import SpoolFile
from mailgate.server.authcheck.dkimcheck import (
    MAX_SIGNATURES,
    DKIMResult,
    arc_seal,
    check_arc,
    check_dkim_parts,
    has_arc,
)
from mailgate.server.authcheck.dkimverify import HeaderTooLong, split_message
from mailgate.server.authcheck.dmarc import (
    MAX_FROM_DOMAINS,
    DMARCResult,
    check_dmarc,
    from_domains,
)
from mailgate.server.authcheck.lookup import CacheMiss, DNSBridge
from mailgate.server.authcheck.results import comment, results_header, value
from mailgate.server.authcheck.spfcheck import SPF_TIME, SPFResult, check_spf

__all__ = ["Verdict", "Verifier"]

log = logging.getLogger("mailgate.smtpd")

R = Reply.make
SPF_TEMPFAIL = R(451, "4.7.24", "Cannot check the sender's SPF record now (temporary DNS "
                                "error); try again later")
DMARC_TEMPFAIL = R(451, "4.7.0", "Cannot check the sender's DMARC policy now (temporary "
                                 "DNS error); try again later")

WORKERS = 4  # threads for the checks: most of their time is spent waiting for DNS
MAX_LOOKUPS = 40  # DNS lookups for one message's DKIM, ARC and DMARC checks
MESSAGE_TIME = 30.0  # seconds for all of them
SPF_LOOKUPS = 30  # pyspf stops at 10 mechanisms and 2 void lookups; MX/PTR add names
# A message this small is first checked on the event loop from cached DNS answers alone;
# a cache miss sends it to a worker thread, where DNS may be waited for. Its CPU (about
# a millisecond, docs/authentication.md "Cost") is well under the GIL's switch interval
# (5 ms), so a worker thread would hold the loop up as long, and the hand-off to it
# costs more than the check.
INLINE_BYTES = 128 * 1024
# DKIM streams the body from the spool, but ARC validation and sealing (dkimpy) hold the
# message whole; messages above this size are checked one at a time, so memory stays
# within a few copies of one [limits] message_size however many arrive at once.
BIG_BYTES = 1024 * 1024


def spf_fail_reply(domain: str, ip: str) -> Reply:
    """550 5.7.23: the sender's domain publishes SPF that says this client may not send
    its mail (a fail, "-all")."""
    return R(550, "5.7.23", f"SPF validation failed: {domain} does not allow {ip} to send "
                            f"its mail; its owner must list that sender in its SPF record")


def dmarc_reject_reply(domain: str) -> Reply:
    """550 5.7.1: DMARC p=reject and no aligned pass; what the domain owner must do."""
    return R(550, "5.7.1", f"Rejected by the DMARC policy of {domain} (p=reject): the "
                           f"message passed neither SPF nor DKIM aligned with {domain}. Its "
                           f"owner must publish an SPF record naming the servers that send "
                           f"its mail, or sign the mail with DKIM as d={domain} and publish "
                           f"the key")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the end-of-DATA checks found: the header to add, a refusal or None, and a
    one-line summary for the log."""

    header: bytes
    reply: Reply | None
    summary: str


class Verifier:
    """The checks `[auth_checks]` turns on, for one server (every connection)."""

    def __init__(self, checks: AuthChecks, authserv_id: str, resolver: Resolver) -> None:
        self.checks = checks
        self.authserv_id = authserv_id
        self.resolver = resolver
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="mailgate-authcheck")
        self._big = asyncio.Semaphore(1)

    def close(self) -> None:
        """End the worker threads (checks not started are dropped); after the last
        session, at shutdown (`Policy.close`)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- MAIL FROM --------------------------------------------------------------

    async def spf(self, ip: str, sender: str, helo: str) -> SPFResult:
        loop = asyncio.get_running_loop()
        quick = DNSBridge(self.resolver, loop, max_lookups=SPF_LOOKUPS, timeout=SPF_TIME,
                          cache_only=True)
        result = check_spf(quick, ip, sender, helo)
        if not quick.missed:
            metrics.auth_result("spf", result.result)
            return result  # every answer was cached: no thread, no wait
        bridge = DNSBridge(self.resolver, loop, max_lookups=SPF_LOOKUPS, timeout=SPF_TIME)
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self._pool, check_spf, bridge, ip, sender, helo),
                SPF_TIME + 5)
        except TimeoutError:
            domain = sender.rpartition("@")[2] if sender else helo
            result = SPFResult("temperror", "mailfrom" if sender else "helo", domain,
                               "out of time")
        metrics.auth_result("spf", result.result)
        return result

    def spf_reply(self, result: SPFResult, ip: str) -> Reply | None:
        """The refusal at MAIL FROM, when spf_reject is on."""
        if not self.checks.spf_reject:
            return None
        if result.result == "fail":
            return spf_fail_reply(result.domain, ip)
        if result.result == "temperror":
            return SPF_TEMPFAIL
        return None

    # --- end of DATA ----------------------------------------------------------------

    async def message(self, spool: SpoolFile, spf: SPFResult | None,
                      seal: DKIMKey | None = None) -> Verdict:
        """DKIM, ARC and DMARC of the spooled message (after `spool.finish()`); with
        `seal`, a message mailgate forwards, the ARC set it adds, signed with that key."""
        loop = asyncio.get_running_loop()
        if spool.size <= INLINE_BYTES and seal is None:  # sealing signs: RSA, too slow
            quick = DNSBridge(self.resolver, loop, max_lookups=MAX_LOOKUPS,
                              timeout=MESSAGE_TIME, cache_only=True)
            with contextlib.suppress(CacheMiss):
                verdict = self._check(quick, spool, spf, seal)
                if not quick.missed:
                    return verdict
        big = spool.size > BIG_BYTES
        if big:
            await self._big.acquire()  # released when the thread is done, not before
        bridge = DNSBridge(self.resolver, loop, max_lookups=MAX_LOOKUPS, timeout=MESSAGE_TIME)
        work = loop.run_in_executor(self._pool, self._check, bridge, spool, spf, seal)
        if big:
            work.add_done_callback(lambda _f: self._big.release())
        try:
            return await asyncio.wait_for(asyncio.shield(work), MESSAGE_TIME + 5)
        except TimeoutError:
            return Verdict(results_header(self.authserv_id, ["dkim=temperror (out of time)"]),
                           DMARC_TEMPFAIL if self.checks.dmarc_reject else None,
                           "checks out of time")

    def _check(self, bridge: DNSBridge, spool: SpoolFile, spf: SPFResult | None,
               seal: DKIMKey | None) -> Verdict:
        checks = self.checks
        try:
            head, body = split_message(_content(spool))
        except HeaderTooLong as exc:
            head, body = b"", iter(())
            too_long: str | None = str(exc)
        else:
            too_long = None
        lines: list[str] = []
        if spf is not None:
            prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
            lines.append(f"spf={spf.result}{comment(spf.explanation)} "
                         f"{prop}={value(spf.domain)}")
        dkims: list[DKIMResult] = []
        if checks.dkim or checks.dmarc:
            if too_long is None:
                dkims, count = check_dkim_parts(bridge, head, body)
            else:
                dkims, count = [DKIMResult("permerror", reason=too_long)], 1
            if checks.dkim:
                lines.extend(_dkim_line(d) for d in dkims)
                if not dkims:
                    lines.append("dkim=none")
                elif count > len(dkims):
                    lines[-1] += comment(f"{count - len(dkims)} more signatures not "
                                         f"checked; at most {MAX_SIGNATURES} are")
        # dkimpy's ARC wants the whole message: read only for one with ARC sets (or a
        # header section too long to keep apart, which DMARC must read all the same).
        whole = b"".join(_content(spool)) if too_long or (checks.arc and has_arc(head)) \
            else head + b"\r\n"
        arc = check_arc(bridge, whole) if checks.arc else None
        dmarcs: list[DMARCResult] = []
        if checks.dmarc:
            domains = from_domains(whole)
            dmarcs = [check_dmarc(bridge, d, spf, dkims) for d in domains[:MAX_FROM_DOMAINS]]
            lines.extend(_dmarc_line(d) for d in dmarcs)
            if not domains:
                lines.append("dmarc=permerror (no From address with a domain)")
        if arc is not None:
            lines.append(f"arc={arc.result}{comment(arc.reason)}")
        if not bridge.cache_only or not bridge.missed:  # a verdict that stands
            for d in dkims if checks.dkim else ():
                metrics.auth_result("dkim", d.result)
            for m in dmarcs:
                metrics.auth_result("dmarc", m.result)
            if arc is not None:
                metrics.auth_result("arc", arc.result)
        header = results_header(self.authserv_id, lines)
        summary = ", ".join(line.split(" ", 1)[0] for line in lines)
        reply = self._decide(dmarcs)
        if seal is not None and reply is None and arc is not None:
            arc_set, why = arc_seal(header + b"".join(_content(spool)), self.authserv_id,
                                    seal.domain, seal.selector, seal.private)
            header = arc_set + header
            summary += f", ARC sealed as d={seal.domain} s={seal.selector}" if arc_set \
                else f", not ARC sealed ({why})"
        if any(d.result == "fail" and d.disposition == "quarantine" for d in dmarcs):
            names = ", ".join(d.domain for d in dmarcs if d.disposition == "quarantine")
            header += (f"X-Mailgate-Quarantine: DMARC policy of {value(names)} "
                       f"(p=quarantine)\r\n").encode("ascii")
        return Verdict(header, reply, summary)

    def _decide(self, dmarcs: list[DMARCResult]) -> Reply | None:
        if not self.checks.dmarc_reject:
            return None
        for d in dmarcs:
            if d.result == "temperror" and not d.strict_pass:
                return DMARC_TEMPFAIL
            if d.result == "fail" and d.disposition == "reject":
                return DMARC_TEMPFAIL if d.uncertain else dmarc_reject_reply(d.domain)
        return None


def _content(spool: SpoolFile) -> Iterator[bytes]:
    """The message as it came: mailgate's own Received: field (the spool's head) is no
    part of what was signed."""
    chunks = spool.chunks()
    if spool.head:
        next(chunks)
    return chunks


def _dkim_line(d: DKIMResult) -> str:
    line = f"dkim={d.result}{comment(d.reason)}"
    for prop, text in (("header.d", d.domain), ("header.s", d.selector),
                       ("header.a", d.algorithm), ("header.b", d.b)):
        if text:
            line += f" {prop}={value(text)}"
    return line


def _dmarc_line(d: DMARCResult) -> str:
    note = f"p={d.policy} dis={d.disposition}" if d.policy else d.reason
    if d.result in ("temperror", "permerror"):
        note = d.reason
    return f"dmarc={d.result}{comment(note)} header.from={value(d.domain)}"

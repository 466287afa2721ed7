"""DNS for the verification libraries, answered by mailgate's own resolver.

pyspf and dkimpy ask DNS through blocking callbacks. Verification runs in a worker
thread (`verify.py`), so a callback may block; `DNSBridge.query` takes a cached answer
straight from the resolver's cache (`Resolver.cached_records`) and hands any other
lookup to `Resolver.records` on the event loop (`asyncio.run_coroutine_threadsafe`),
waiting for it there. Every answer thus comes from the `[dns] nameservers` mailgate uses for
everything else, through the same cache, and the event loop itself never blocks.

A cache-only bridge never waits: the checks of a small message are first tried on
the event loop itself with one (`verify.py`), and run again in a worker thread only
when an answer was missing from the cache.

Each message's lookups are bounded twice: in number (`max_lookups`: SPF's own limits
of RFC 7208 4.6.4 apply inside pyspf, this one caps the whole message: DKIM keys of
many signatures, ARC sets, DMARC) and in time (one deadline for all of them). Past
either, a lookup fails as a temporary error, which the caller reports as `temperror`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

from mailgate.dns import Records, Resolver

__all__ = ["CacheMiss", "DNSBridge", "DNSTempError"]


class DNSTempError(Exception):
    """DNS could not answer now (or the message's lookup budget is spent)."""


class CacheMiss(Exception):
    """A cache-only bridge was asked for an answer the cache does not hold."""


class DNSBridge:
    """Blocking lookups for one message's checks, from a worker thread."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop, *,
                 max_lookups: int, timeout: float, cache_only: bool = False) -> None:
        self.resolver = resolver
        # cache_only: answer from the cache or raise CacheMiss (and note it in `missed`,
        # which a library's own `except` cannot hide): for a first, inline attempt.
        self.cache_only = cache_only
        self.missed = False
        self.loop = loop
        self.max_lookups = max_lookups
        self.deadline = time.monotonic() + timeout
        self.lookups = 0

    def query(self, name: str, rdtype: str) -> Records:
        """The answer for `name` `rdtype`; DNSTempError when DNS cannot say now."""
        if self.lookups >= self.max_lookups:
            raise DNSTempError(f"more than {self.max_lookups} DNS lookups for one message")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DNSTempError("out of time for DNS lookups")
        self.lookups += 1
        answer = self.resolver.cached_records(name, rdtype)
        if answer is not None:
            if answer.status == "error":
                raise DNSTempError(answer.reason)
            return answer
        if self.cache_only:
            self.missed = True
            raise CacheMiss(f"{name} {rdtype} is not cached")
        future = asyncio.run_coroutine_threadsafe(
            self.resolver.records(name, rdtype), self.loop)
        try:
            answer = future.result(timeout=left)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DNSTempError(f"no DNS answer for {name} {rdtype} in time") from None
        if answer.status == "error":
            raise DNSTempError(answer.reason)
        return answer

    def txt(self, name: str) -> list[bytes]:
        """The TXT records of `name`, each one's strings joined (RFC 7208 3.3)."""
        return [text.encode("utf-8") for text in self.query(name, "TXT").txt]
